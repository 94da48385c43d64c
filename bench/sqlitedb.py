"""Shared by bench/sqlite-floor.py and bench/sqlite-variants.py."""
import os
import sqlite3


def fresh(path):
    """An empty WAL database at `path` (anything there before is removed), with
    synchronous=FULL: a commit is durable, as ckpt's default store's are."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    return db
