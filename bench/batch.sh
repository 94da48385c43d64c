#!/usr/bin/env bash
# `ckpt run -n` (several items per command) beside `-n 1` and `xargs -n`.
#
# Runs N items of `true`, 4 commands at a time, through:
#   xargs -P4 -n100 true                     (the floor: no bookkeeping)
#   ckpt run -j 4 -n 100 -- true             (100 items a command, every completion durable)
#   ckpt run -j 4 -- true                    (one item a command, every completion durable)
#   ckpt --store memory:// run -j 4 -n 100   (the same run with nothing durable: what the
#                                            runner costs beside any store's writes)
# each REPS times, alternating the tools round by round, and prints the
# median wall time of each and the ratios. Every ckpt run starts from an
# empty SQLite store, so its wall time includes enqueueing the N items.
# With python3 it also times bench/sqlite-floor.py in the same rounds: the
# least SQLite work a durable record of each item costs (insert, claim and
# complete, one row write each, no command run), the floor under ckpt's
# bookkeeping.
# It also prints each tool's CPU time (user + system, children included).
# That bounds what any bookkeeping may cost: with the cores busy, ckpt ends
# within 1.3x xargs only if its own CPU fits in what xargs leaves idle in
# 1.3x its wall time; the last line prints that budget.
#
# Usage: bench/batch.sh [N=100000] [REPS=3] [BATCH=100]
set -euo pipefail
n=${1:-100000}
reps=${2:-3}
batch=${3:-100}
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_ckpt
bench_workdir "$n"

fresh() { rm -f ckpt.db ckpt.db-wal ckpt.db-shm; }
run_xargs() { xargs -P4 -n"$batch" true < items.txt; }
run_batch() { fresh; "$ckpt" --store sqlite://ckpt.db run --job bench --items items.txt -j 4 -n "$batch" -- true; }
run_single() { fresh; "$ckpt" --store sqlite://ckpt.db run --job bench --items items.txt -j 4 -- true; }
run_memory() { "$ckpt" --store memory:// run --job bench --items items.txt -j 4 -n "$batch" -- true; }
run_floor() { python3 "$root/bench/sqlite-floor.py" "$n" "$batch" "$work"; }
check() { # every item completed, durably recorded in the store
    local doc
    doc=$("$ckpt" --store sqlite://ckpt.db status bench --json)
    grep -q "\"completed\": $n," <<< "$doc"
}

tools=(xargs batch single memory)
command -v python3 > /dev/null && tools+=(floor)
declare -A times cpu
for _ in $(seq "$reps"); do
    for tool in "${tools[@]}"; do
        read -r wall used < <(measure "run_$tool")
        # The floor's wall time by its own clock: the interpreter's start is
        # not the floor's (its CPU time includes it).
        [[ $tool == floor ]] && wall=$(cat measured.out)
        times[$tool]+="$wall "
        cpu[$tool]+="$used "
        case $tool in
            xargs | floor | memory) ;;
            *) check || { echo "ckpt ($tool) did not complete all $n items" >&2; exit 1; } ;;
        esac
    done
done
declare -A med medcpu
for tool in "${tools[@]}"; do
    med[$tool]=$(echo "${times[$tool]}" | tr ' ' '\n' | grep . | median)
    medcpu[$tool]=$(echo "${cpu[$tool]}" | tr ' ' '\n' | grep . | median)
done
echo "items=$n reps=$reps batch=$batch machine: $(nproc) cores, $(uname -r)"
row() { printf '%-22s median %7.3f s  cpu %7.3f s  (all: %s)\n' "$1" "${med[$2]}" "${medcpu[$2]}" "${times[$2]}"; }
row "xargs -P4 -n$batch" xargs
row "ckpt run -j4 -n$batch" batch
row "ckpt run -j4 -n1" single
row "ckpt -n$batch memory://" memory
echo "ckpt -n$batch vs xargs -n$batch: $(echo "scale=2; ${med[batch]} / ${med[xargs]}" | bc)x"
echo "ckpt -n1 vs ckpt -n$batch: $(echo "scale=1; ${med[single]} / ${med[batch]}" | bc)x faster with -n$batch"
echo "ckpt -n$batch on memory:// vs xargs -n$batch: $(echo "scale=2; ${med[memory]} / ${med[xargs]}" | bc)x (nothing durable)"
if [[ -n ${med[floor]:-} ]]; then
    row "SQLite floor" floor
    echo "SQLite floor vs xargs -n$batch: $(echo "scale=2; ${med[floor]} / ${med[xargs]}" | bc)x (bookkeeping alone, no command run)"
fi
budget=$(echo "$(nproc) * 1.3 * ${med[xargs]} - ${medcpu[xargs]}" | bc)
own=$(echo "${medcpu[batch]} - ${medcpu[xargs]}" | bc)
printf 'CPU that %d cores leave beside xargs within 1.3x its wall time: %.3f s (ckpt -n%d beyond xargs: %.3f s)\n' \
    "$(nproc)" "$budget" "$batch" "$own"
