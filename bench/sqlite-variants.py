#!/usr/bin/env python3
"""What ckpt's SQLite item schema costs `ckpt run -n`, and what index changes would save: the
statements a claim and a completion run (as crates/ckpt/src/store/sqlite writes them: ids and
leases as JSON, each completion fenced by its lease), on a copy of the items table, for N items
claimed and completed BATCH at a time, the completions committed durably. No command is run.

Variants (any number, each timed in turn):
  schema     the schema as it is (4): items_ready (partial, on ready_at), items_dead (partial)
  v3         schema 3: items_ready and items_status, on every item's status
  rarestatus schema 3 with items_status only over the statuses other than pending and completed
  combined   one index on (job_id, status, ready_at) for both (claims: a UNION per status)
  merged     the schema as it is, a round's completions and next claim in one transaction
  joined     the schema as it is, completions by the statement used before: each lease joined
             from JSON, the changed rows returned

Usage: bench/sqlite-variants.py DIR [N=100000] [BATCH=100] VARIANT...
"""
import json
import os
import sys
import time

import sqlitedb

TABLE = """CREATE TABLE items (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, key TEXT NOT NULL,
  payload TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  claims INTEGER NOT NULL DEFAULT 0, owner TEXT, ready_at INTEGER, last_error TEXT, stats TEXT,
  cursor TEXT, enqueued_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER,
  command_id INTEGER, last_output TEXT, UNIQUE (job_id, key))"""
INDEXES = {
    "ready": "CREATE INDEX items_ready ON items (job_id, ready_at, id) WHERE ready_at IS NOT NULL",
    "status": "CREATE INDEX items_status ON items (job_id, status)",
    "dead": "CREATE INDEX items_dead ON items (job_id, id) WHERE status = 'dead'",
    "rare": "CREATE INDEX items_status ON items (job_id, status)"
    " WHERE status NOT IN ('pending', 'completed')",
    "combined": "CREATE INDEX items_open ON items (job_id, status, ready_at)",
}
COLUMNS = "id, key, payload, cursor, status, owner, attempts, claims, enqueued_at, ready_at"
CLAIM = f"""SELECT {COLUMNS} FROM items WHERE job_id = 1 AND ready_at IS NOT NULL
  AND ready_at <= 10 AND NOT (status = 'running' AND owner = 'me') ORDER BY ready_at, id LIMIT ?1"""
CLAIM_BY_STATUS = " UNION ALL ".join(
    f"SELECT * FROM (SELECT {COLUMNS} FROM items WHERE job_id = 1 AND status = '{s}'"
    f" AND ready_at <= 10 {extra} ORDER BY ready_at LIMIT ?1)"
    for s, extra in [("pending", ""), ("failed", ""), ("running", "AND owner <> 'me'")]
) + " ORDER BY 10, 1 LIMIT ?1"
MARK = """UPDATE items SET status = 'running', owner = 'me', attempts = attempts + 1,
  claims = claims + 1, ready_at = 1000, started_at = NULL
  WHERE id IN (SELECT value FROM json_each(?))"""
# A batch's completions: one UPDATE over the ids, fenced on the claim token they share, that
# counts the rows it changed (all of them: every completion stands).
COMPLETE = """UPDATE items SET status = 'completed', ready_at = NULL, finished_at = 20,
  started_at = coalesce(15, started_at), command_id = coalesce(1, command_id)
  WHERE id IN (SELECT value FROM json_each(?)) AND status = 'running' AND owner = 'me'
    AND claims = ?"""
# Before: each lease joined from JSON, the changed rows returned.
COMPLETE_JOINED = """UPDATE items SET status = 'completed', ready_at = NULL, finished_at = 20,
  started_at = coalesce(15, started_at), command_id = coalesce(1, command_id)
  FROM (SELECT value ->> 0 AS lease_id, value ->> 1 AS lease_token FROM json_each(?)) AS l
  WHERE items.id = l.lease_id AND items.status = 'running' AND items.owner = 'me'
    AND items.claims = l.lease_token RETURNING items.id"""


def run(workdir, n, batch, variant):
    db = sqlitedb.fresh(os.path.join(workdir, "variants.db"))
    db.execute(TABLE)
    indexes = {
        "schema": ["ready", "dead"],
        "merged": ["ready", "dead"],
        "joined": ["ready", "dead"],
        "v3": ["ready", "status"],
        "rarestatus": ["ready", "rare"],
        "combined": ["combined"],
    }[variant]
    for name in indexes:
        db.execute(INDEXES[name])
    claim = CLAIM_BY_STATUS if variant == "combined" else CLAIM
    start = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    for low in range(0, n, 4096):
        rows = json.dumps([[str(k), None] for k in range(low + 1, min(low + 4096, n) + 1)])
        db.execute(
            "INSERT INTO items (job_id, key, payload, status, ready_at, enqueued_at)"
            " SELECT 1, value ->> 0, value ->> 1, 'pending', 5, 5 FROM json_each(?)"
            " WHERE true ORDER BY json_each.key ON CONFLICT (job_id, key) DO NOTHING",
            (rows,),
        )
    db.execute("COMMIT")
    enqueued = time.perf_counter()
    for _ in range(n // batch):
        if variant != "merged":
            db.execute("PRAGMA synchronous=NORMAL")  # claims need no fsync of their own
        db.execute("BEGIN IMMEDIATE")
        got = db.execute(claim, (batch,)).fetchall()
        db.execute(MARK, (json.dumps([g[0] for g in got]),))
        if variant != "merged":
            db.execute("COMMIT")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
        if variant == "joined":
            done = len(db.execute(COMPLETE_JOINED, (json.dumps([[g[0], g[7] + 1] for g in got]),)).fetchall())
        else:
            tokens = {g[7] + 1 for g in got}
            assert len(tokens) == 1, tokens
            done = db.execute(COMPLETE, (json.dumps([g[0] for g in got]), tokens.pop())).rowcount
        assert done == len(got) == batch, (done, len(got))
        db.execute("COMMIT")
        if variant == "merged":
            db.execute("PRAGMA synchronous=FULL")
    end = time.perf_counter()
    print(
        f"{variant:10}  enqueue {enqueued - start:.3f} s  claim + complete {end - enqueued:.3f} s"
        f"  total {end - start:.3f} s"
    )


workdir, rest = sys.argv[1], sys.argv[2:]
numbers = [int(a) for a in rest if a.isdigit()]
n = numbers[0] if numbers else 100000
batch = numbers[1] if len(numbers) > 1 else 100
for variant in [a for a in rest if not a.isdigit()]:
    run(workdir, n, batch, variant)
