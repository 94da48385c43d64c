#!/usr/bin/env python3
"""The least SQLite work a durable record of each item can cost: the floor
under `ckpt run -n BATCH`'s bookkeeping, for bench/batch.sh.

N items are inserted (one table, the key's unique index, nothing else), then
claimed and completed BATCH at a time: one row write each, by id range (no
lookup of what is claimable, no lease, no status index, no JSON), the
completions committed durably (WAL, synchronous=FULL) and the claims not
(synchronous=NORMAL), as ckpt's are. No command is run. Prints the wall time
in seconds.

Usage: bench/sqlite-floor.py N BATCH DIR
"""
import os
import sys
import time

import sqlitedb

n, batch, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
db = sqlitedb.fresh(os.path.join(workdir, "floor.db"))
db.execute(
    "CREATE TABLE items (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,"
    " status INTEGER NOT NULL, owner TEXT, claims INTEGER NOT NULL DEFAULT 0)"
)
start = time.perf_counter()
db.execute("BEGIN")
db.executemany("INSERT INTO items (key, status) VALUES (?, 0)", ((str(i),) for i in range(1, n + 1)))
db.execute("COMMIT")
for low in range(1, n + 1, batch):
    high = low + batch - 1
    # A claim needs no fsync of its own (as in ckpt: losing it to power loss shortens a lease
    # of a worker that died with the machine); a completion does.
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE items SET status = 1, owner = 'w', claims = claims + 1 WHERE id BETWEEN ? AND ?", (low, high))
    db.execute("COMMIT")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("BEGIN IMMEDIATE")
    db.execute("UPDATE items SET status = 2 WHERE id BETWEEN ? AND ? AND status = 1 AND owner = 'w'", (low, high))
    db.execute("COMMIT")
done = db.execute("SELECT count(*) FROM items WHERE status = 2").fetchone()[0]
assert done == n, f"{done} of {n} items completed"
print(f"{time.perf_counter() - start:.3f}")
