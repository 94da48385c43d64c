#!/usr/bin/env bash
# `ckpt run -n` (several items per command) beside `-n 1` and `xargs -n`.
#
# Runs N items of `true`, 4 commands at a time, through:
#   xargs -P4 -n100 true                     (the floor: no bookkeeping)
#   ckpt run -j 4 -n 100 -- true             (100 items a command, every completion durable)
#   ckpt run -j 4 -- true                    (one item a command, every completion durable)
# each REPS times, alternating the tools round by round, and prints the
# median wall time of each and the ratios. Every ckpt run starts from an
# empty SQLite store, so its wall time includes enqueueing the N items.
# With python3 it also times bench/sqlite-floor.py in the same rounds: the
# least SQLite work a durable record of each item costs (insert, claim and
# complete, one row write each, no command run), the floor under ckpt's
# bookkeeping.
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
run_floor() { python3 "$root/bench/sqlite-floor.py" "$n" "$batch" "$work"; }
check() { # every item completed, durably recorded in the store
    local doc
    doc=$("$ckpt" --store sqlite://ckpt.db status bench --json)
    grep -q "\"completed\": $n," <<< "$doc"
}

tools=(xargs batch single)
command -v python3 > /dev/null && tools+=(floor)
declare -A times
for _ in $(seq "$reps"); do
    for tool in "${tools[@]}"; do
        case $tool in
            # Its own clock: the interpreter's start is not the floor's.
            floor) times[$tool]+="$(run_floor) " ;;
            *) times[$tool]+="$(seconds "run_$tool") " ;;
        esac
        case $tool in
            xargs | floor) ;;
            *) check || { echo "ckpt ($tool) did not complete all $n items" >&2; exit 1; } ;;
        esac
    done
done
declare -A med
for tool in "${tools[@]}"; do
    med[$tool]=$(echo "${times[$tool]}" | tr ' ' '\n' | grep . | median)
done
echo "items=$n reps=$reps batch=$batch machine: $(nproc) cores, $(uname -r)"
printf '%-22s median %7.3f s  (all: %s)\n' "xargs -P4 -n$batch" "${med[xargs]}" "${times[xargs]}"
printf '%-22s median %7.3f s  (all: %s)\n' "ckpt run -j4 -n$batch" "${med[batch]}" "${times[batch]}"
printf '%-22s median %7.3f s  (all: %s)\n' "ckpt run -j4 -n1" "${med[single]}" "${times[single]}"
echo "ckpt -n$batch vs xargs -n$batch: $(echo "scale=2; ${med[batch]} / ${med[xargs]}" | bc)x"
echo "ckpt -n1 vs ckpt -n$batch: $(echo "scale=1; ${med[single]} / ${med[batch]}" | bc)x faster with -n$batch"
if [[ -n ${med[floor]:-} ]]; then
    printf '%-22s median %7.3f s  (all: %s)\n' "SQLite floor" "${med[floor]}" "${times[floor]}"
    echo "SQLite floor vs xargs -n$batch: $(echo "scale=2; ${med[floor]} / ${med[xargs]}" | bc)x (bookkeeping alone, no command run)"
fi
