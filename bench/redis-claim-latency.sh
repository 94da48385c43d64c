#!/usr/bin/env bash
# Claim latency on Redis with few vs. many finished items in the job.
#
# Creates a store under a scratch prefix with ckpt itself, then fills one
# job (in the layout of docs/REDIS.md) with 10k or BIG completed items plus
# 50k pending. redis-benchmark then runs ckpt's own claim script (lua/
# common.lua + lua/claim.lua, one item per call), 5,000 times from one
# client, and reports the mean latency of each and the ratio. The prefix's
# keys are deleted afterwards.
#
# Usage: bench/redis-claim-latency.sh [HOST] [PORT] [BIG=1000000]
set -euo pipefail
host=${1:-127.0.0.1}
port=${2:-6379}
big=${3:-1000000}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p ckpt-cli --manifest-path "$root/Cargo.toml"
ckpt="${CARGO_TARGET_DIR:-$root/target}/release/ckpt"
lua="$root/crates/ckpt/src/store/redis/lua"
cli=(redis-cli -h "$host" -p "$port")

# Adds items FROM..TO of job 1, completed, or pending when ARGV[4] says so.
fill='local P, from, to, status = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
for i = from, to do
  redis.call("HSET", P .. ":job:1:items", i, cjson.encode({key = "k" .. i, status = status,
    attempts = "0", claims = "0", enqueued_at = "0"}))
  redis.call("HSET", P .. ":job:1:keys", "k" .. i, i)
  redis.call("ZADD", P .. ":job:1:" .. status, i, i)
end
redis.call("HSET", P .. ":job:1", "items", to)'

sha=$(cat "$lua/common.lua" "$lua/claim.lua" | "${cli[@]}" -x SCRIPT LOAD)

measure() { # finished_items -> mean claim latency in ms
    local done=$1 prefix="ckpt_lat_$1_$$"
    "$ckpt" --store "redis://$host:$port/0?prefix=$prefix&ttl=off" checkpoint set lat 0 > /dev/null
    local from=1
    while [ "$from" -le "$done" ]; do
        local to=$((from + 99999 < done ? from + 99999 : done))
        "${cli[@]}" EVAL "$fill" 0 "$prefix" "$from" "$to" completed > /dev/null
        from=$((to + 1))
    done
    "${cli[@]}" EVAL "$fill" 0 "$prefix" "$((done + 1))" "$((done + 50000))" pending > /dev/null
    # CSV: "test","rps","avg_latency_ms",...
    redis-benchmark -h "$host" -p "$port" -c 1 -n 5000 --csv \
        EVALSHA "$sha" 0 "$prefix" 0 lat bench 1 99999999999999 1 \
        | tr '\r' '\n' | awk -F'"' '$2 ~ /^EVALSHA/ { print $6 }'
    "${cli[@]}" --scan --pattern "$prefix:*" | xargs -r -n 500 "${cli[@]}" UNLINK > /dev/null
}

small=$(measure 10000)
large=$(measure "$big")
echo "claim mean latency: 10k finished items ${small} ms, $big finished items ${large} ms"
echo "ratio: $(echo "scale=2; $large / $small" | bc)"
