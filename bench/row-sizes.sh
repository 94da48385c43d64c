#!/usr/bin/env bash
# Per-row sizes for capacity planning (docs/OPERATIONS.md): N completed items
# and 150 checkpoint saves (100 kept in history), on SQLite and, when
# reachable, PostgreSQL.
#
#   bench/row-sizes.sh [N] [POSTGRES_URL]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
PG=${2:-postgres://postgres@127.0.0.1:5432/test}
cargo build --release -q -p ckpt-cli
CKPT=$PWD/target/release/ckpt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seq -f "s3://bucket/data/part-%06g.parquet" 1 "$N" > "$work/items.txt"

fill() { # URL
    "$CKPT" --store "$1" run --job sizes --items "$work/items.txt" -j 4 -- true 2> /dev/null
    for i in $(seq 1 150); do
        "$CKPT" --store "$1" checkpoint set hist "{\"offset\":$((i * 1000)),\"file\":\"part-$i\"}" \
            --items-processed $((i * 1000)) > /dev/null
    done
}

echo "== SQLite ($N items)"
fill "sqlite://$work/sizes.db"
sqlite3 "$work/sizes.db" "PRAGMA wal_checkpoint(TRUNCATE);" > /dev/null
sqlite3 "$work/sizes.db" "SELECT name, sum(pgsize), printf('%.0f B/row', sum(pgsize) * 1.0 /
    CASE WHEN name LIKE '%items%' THEN $N ELSE 100 END) FROM dbstat
    WHERE name LIKE '%items%' OR name LIKE 'history%' GROUP BY name ORDER BY 2 DESC;"

if psql "$PG" -qAtc "SELECT 1" > /dev/null 2>&1; then
    schema="ckpt_sizes_$$"
    echo "== PostgreSQL ($N items, after VACUUM FULL)"
    fill "$PG?schema=$schema"
    psql "$PG" -qc "VACUUM FULL $schema.items" -qc "VACUUM FULL $schema.history"
    psql "$PG" -Atc "SELECT c.relname, pg_relation_size(c.oid),
        round(pg_relation_size(c.oid)::numeric / CASE WHEN c.relname LIKE 'items%' THEN $N ELSE 100 END) || ' B/row'
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = '$schema' AND c.relkind IN ('r', 'i')
          AND (c.relname LIKE 'items%' OR c.relname LIKE 'history%') ORDER BY 2 DESC"
    psql "$PG" -qc "DROP SCHEMA $schema CASCADE"
else
    echo "== PostgreSQL not reachable at $PG: skipped"
fi
