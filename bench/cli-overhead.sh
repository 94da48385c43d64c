#!/usr/bin/env bash
# Per-item overhead of `ckpt run` beside the process-spawn floor.
#
# Runs N items of `true` with 4 at a time through:
#   xargs -P4 -n1 true                       (the floor: no bookkeeping)
#   parallel -j4 --joblog FILE true          (GNU parallel, resumable, joblog not fsynced)
#   ckpt run -j 4 -- true                    (every completion durable, synchronous=FULL)
# each REPS times, and prints the median wall time of each and the ratios.
#
# Usage: bench/cli-overhead.sh [N=2000] [REPS=5]
# Needs GNU parallel (Debian: apt-get install parallel); skips it if absent.
set -euo pipefail
n=${1:-2000}
reps=${2:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p ckpt-cli --manifest-path "$root/Cargo.toml"
ckpt="$root/target/release/ckpt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
seq 1 "$n" > items.txt

seconds() { # runs "$@", prints its wall time in seconds
    local start end
    start=$(date +%s%N)
    "$@" > /dev/null 2>&1
    end=$(date +%s%N)
    echo "scale=3; ($end - $start) / 1000000000" | bc
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

run_xargs() { xargs -P4 -n1 true < items.txt; }
run_parallel() { rm -f joblog; parallel --will-cite -j4 --joblog joblog true < items.txt; }
run_ckpt() { rm -f ckpt.db ckpt.db-wal ckpt.db-shm; "$ckpt" --store sqlite://ckpt.db run --job bench --items items.txt -j 4 -- true; }

tools=(xargs ckpt)
command -v parallel > /dev/null && tools+=(parallel)
declare -A med
for tool in "${tools[@]}"; do
    times=$(for _ in $(seq "$reps"); do seconds "run_$tool"; done)
    med[$tool]=$(echo "$times" | median)
done
echo "items=$n reps=$reps machine: $(nproc) cores, $(uname -r)"
for tool in "${tools[@]}"; do
    ratio=$(echo "scale=2; ${med[$tool]} / ${med[xargs]}" | bc)
    printf '%-9s median %6.3f s  (%sx xargs)\n' "$tool" "${med[$tool]}" "$ratio"
done
