#!/usr/bin/env bash
# Two ckpt builds and xargs, alternated round by round: N items of `true`,
# 4 at a time (`ckpt run -j 4`, every completion durable, a fresh SQLite
# store each run, against `xargs -P4 -n1 true`). Prints each one's median
# wall time and all rounds. For telling a change's cost from the machine's
# mood: both builds meet the same noise.
#
# Usage: bench/ab.sh N ROUNDS BEFORE_BINARY AFTER_BINARY
set -euo pipefail
n=$1
rounds=$2
before=$(realpath "$3")
after=$(realpath "$4")
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/lib.sh"
bench_workdir "$n"

millis() { # runs "$@", prints its wall time in milliseconds
    local start end
    start=$(date +%s%N)
    "$@" > /dev/null 2>&1
    end=$(date +%s%N)
    echo $(((end - start) / 1000000))
}
run_xargs() { xargs -P4 -n1 true < items.txt; }
run_ckpt() { rm -f ckpt.db ckpt.db-wal ckpt.db-shm; "$1" --store sqlite://ckpt.db run --job ab --items items.txt -j 4 -- true; }

declare -A times
for _ in $(seq "$rounds"); do
    times[xargs]+="$(millis run_xargs) "
    times[before]+="$(millis run_ckpt "$before") "
    times[after]+="$(millis run_ckpt "$after") "
done
for tool in xargs before after; do
    echo "$tool median $(echo "${times[$tool]}" | tr ' ' '\n' | grep . | median) ms (all: ${times[$tool]})"
done
