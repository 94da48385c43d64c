#!/usr/bin/env bash
# Per-item overhead of `ckpt run` beside the process-spawn floor.
#
# Runs N items of `true` with 4 at a time through:
#   xargs -P4 -n1 true                       (the floor: no bookkeeping)
#   parallel -j4 --joblog FILE true          (GNU parallel, resumable, joblog not fsynced)
#   ckpt run -j 4 -- true                    (every completion durable, synchronous=FULL;
#                                             output read through pipes, whole lines)
#   ckpt run -j 4 --group / --tag / --ungroup -- true   (the other output modes)
# then N items of `echo` (one line of output each) through xargs and each
# ckpt output mode; each REPS times, and prints the median wall time of
# each and the ratios to xargs running the same command.
#
# Usage: bench/cli-overhead.sh [N=2000] [REPS=5]
# CKPT=/path/to/ckpt measures that binary instead of building this tree's
# (to compare two builds in one session).
# Needs GNU parallel (Debian: apt-get install parallel); skips it if absent
# (or if `parallel` is moreutils' program of that name).
set -euo pipefail
n=${1:-2000}
reps=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_ckpt
bench_workdir "$n"

run_xargs() { xargs -P4 -n1 true < items.txt; }
run_parallel() { rm -f joblog; parallel --will-cite -j4 --joblog joblog true < items.txt; }
ckpt_run() { # ckpt_run COMMAND [FLAGS...]
    local command=$1
    shift
    rm -f ckpt.db ckpt.db-wal ckpt.db-shm
    "$ckpt" --store sqlite://ckpt.db run --job bench --items items.txt -j 4 "$@" -- "$command"
}
run_ckpt() { ckpt_run true; }
run_ckpt_group() { ckpt_run true --group; }
run_ckpt_tag() { ckpt_run true --tag; }
run_ckpt_ungroup() { ckpt_run true --ungroup; }
run_xargs_echo() { xargs -P4 -n1 echo < items.txt; }
run_ckpt_echo() { ckpt_run echo; }
run_ckpt_echo_group() { ckpt_run echo --group; }
run_ckpt_echo_tag() { ckpt_run echo --tag; }
run_ckpt_echo_ungroup() { ckpt_run echo --ungroup; }

tools=(xargs ckpt ckpt_group ckpt_tag ckpt_ungroup)
# moreutils installs a different `parallel` under the same name.
parallel --version 2> /dev/null | grep -q 'GNU parallel' && tools+=(parallel)
tools+=(xargs_echo ckpt_echo ckpt_echo_group ckpt_echo_tag ckpt_echo_ungroup)
declare -A med
# Round by round, so that a change in the machine's load falls on every
# tool alike.
declare -A times
for _ in $(seq "$reps"); do
    for tool in "${tools[@]}"; do
        times[$tool]+="$(seconds "run_$tool")"$'\n'
    done
done
for tool in "${tools[@]}"; do
    med[$tool]=$(printf '%s' "${times[$tool]}" | median)
done
echo "items=$n reps=$reps machine: $(nproc) cores, $(uname -r)"
for tool in "${tools[@]}"; do
    floor=xargs
    [[ $tool == *echo* ]] && floor=xargs_echo
    ratio=$(echo "scale=2; ${med[$tool]} / ${med[$floor]}" | bc)
    printf '%-18s median %6.3f s  (%sx %s)\n' "$tool" "${med[$tool]}" "$ratio" "$floor"
done
