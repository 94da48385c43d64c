#!/usr/bin/env bash
# Claim latency on PostgreSQL with few vs. many finished items in the job.
#
# Fills two schemas through ckpt's own migrations: one job with 10k
# completed items, one with 10M, each plus 50k pending. Then pgbench runs
# ckpt's claim statement (one item, SKIP LOCKED) followed by its completion,
# single client, and reports the mean latency of each, and the ratio.
#
# Usage: bench/pg-claim-latency.sh [BASE_URL] [BIG=10000000]
# BASE_URL defaults to postgres://postgres@127.0.0.1:5432/test.
set -euo pipefail
base=${1:-postgres://postgres@127.0.0.1:5432/test}
big=${2:-10000000}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p ckpt-cli --manifest-path "$root/Cargo.toml"
ckpt="$root/target/release/ckpt"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/claim.sql" <<'SQL'
WITH ready AS (
    SELECT id FROM items
    WHERE job_id = (SELECT id FROM jobs WHERE name = 'lat')
      AND ready_at IS NOT NULL AND ready_at <= 1
      AND NOT (status = 'running' AND owner = 'bench')
    ORDER BY ready_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
UPDATE items i SET status = 'completed', owner = 'bench', ready_at = NULL,
    claims = i.claims + 1, attempts = i.attempts + 1
FROM ready WHERE i.id = ready.id;
SQL

measure() { # schema finished_items -> mean latency in ms
    local schema=$1 done=$2
    psql -q "$base" -c "DROP SCHEMA IF EXISTS $schema CASCADE" 2>/dev/null
    "$ckpt" --store "$base?schema=$schema" checkpoint set setup 0 > /dev/null
    psql -q "$base" <<SQL
SET search_path = $schema;
INSERT INTO jobs (name, status, created_at, updated_at) VALUES ('lat', 'running', 0, 0);
INSERT INTO items (job_id, key, status, ready_at, enqueued_at, finished_at)
    SELECT (SELECT id FROM jobs WHERE name = 'lat'), 'done-' || g, 'completed', NULL, 0, 0
    FROM generate_series(1, $done) g;
INSERT INTO items (job_id, key, status, ready_at, enqueued_at)
    SELECT (SELECT id FROM jobs WHERE name = 'lat'), 'todo-' || g, 'pending', 0, 0
    FROM generate_series(1, 50000) g;
VACUUM ANALYZE items;
SQL
    PGOPTIONS="-c search_path=$schema" pgbench -n -c 1 -t 5000 -f "$work/claim.sql" "$base" 2>/dev/null \
        | awk '/latency average/ { print $4 }'
    psql -q "$base" -c "DROP SCHEMA $schema CASCADE" 2>/dev/null
}

small=$(measure ckpt_lat_small 10000)
large=$(measure ckpt_lat_large "$big")
echo "claim+complete mean latency: 10k finished items ${small} ms, $big finished items ${large} ms"
echo "ratio: $(echo "scale=2; $large / $small" | bc)"
