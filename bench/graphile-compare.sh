#!/usr/bin/env bash
# Claim + complete throughput on one PostgreSQL: ckpt beside graphile-worker
# 0.17 in its batched mode (localQueue 500, concurrency 24, batched
# completions, quiet logger), N no-op jobs each, in the same run.
#
# Installs graphile-worker from the npm registry into a temporary folder
# (needs node and npm). Usage: bench/graphile-compare.sh [N=50000] [BASE_URL] [REPS=3]
set -euo pipefail
n=${1:-50000}
base=${2:-postgres://postgres@127.0.0.1:5432/test}
reps=${3:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p ckpt-cli --manifest-path "$root/Cargo.toml"
ckpt="$root/target/release/ckpt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$root/bench/graphile/bench.js" "$work/"
(cd "$work" && npm install --silent --no-audit --no-fund graphile-worker@0.17 pg > /dev/null 2>&1)

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
gw=$(for _ in $(seq "$reps"); do
    (cd "$work" && node bench.js "$n" "$base") | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs_per_s"])'
done | median)
for batch in 500 1000; do
    rate=$(for i in $(seq "$reps"); do
        schema="ckpt_cmp_$$_$i"
        "$ckpt" --store "$base?schema=$schema" bench --items "$n" --workers 4 --batch "$batch" --saves 10 --json \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)["items_per_s"])'
        psql -q "$base" -c "DROP SCHEMA $schema CASCADE" 2> /dev/null
    done | median)
    printf 'ckpt (4 workers, batch %s): %.0f items/s = %.2fx graphile-worker\n' "$batch" "$rate" "$(echo "$rate / $gw" | bc -l)"
done
printf 'graphile-worker 0.17 (localQueue 500, concurrency 24): %.0f jobs/s\n' "$gw"
