"""A multi-stage job, extract -> transform -> load, that resumes at its stage (the cursor
pattern with ``stage=``, as in a Kubernetes Job whose pod is rescheduled).

* extract: writes N source records to WORK/extracted.jsonl;
* transform: reads them, keeps the valid ones, writes WORK/transformed.jsonl;
* load: upserts them into a SQLite table keyed by id (an idempotent sink).

Each stage's cursor is {"line": lines done, "offset": bytes written}; on resume the stage's output
file is cut back to the saved offset, so lines written after the last checkpoint are written
again exactly once. The load stage needs no cut: an upsert keyed by id can be repeated.

    python examples/python/etl_stages.py --work /tmp/etl --records 50000
    kill -9 it, run it again: it says which stage and line it resumed at.
"""

import argparse
import json
import os
import random
import sqlite3
import time

import ckpt

STAGES = ["extract", "transform", "load"]
RECORDS = [0]  # records handled over all stages: the checkpoints' items_processed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=os.environ.get("CKPT_STORE", "sqlite://ckpt.db"))
    p.add_argument("--work", default="etl-work", help="directory for the stage files")
    p.add_argument("--records", type=int, default=50_000)
    p.add_argument("--job", default="etl")
    p.add_argument("--delay", type=float, default=0.0, help="seconds per record (to watch it)")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)

    store = ckpt.open(args.store)
    with store.job(args.job, every_items=1_000, every_seconds=1.0) as job:
        if job.was_completed:
            print(f"{args.job} was already completed")
            return
        RECORDS[0] = job.resume_items_processed()
        stage = job.resume_stage() or STAGES[0]
        cursor = job.resume_cursor() or {"line": 0, "offset": 0}
        if job.resume_cursor() is None:
            print("starting at stage extract")
        else:
            print(f"resumed at stage {stage}, line {cursor['line']}")
        for name in STAGES[STAGES.index(stage):]:
            run_stage(job, name, cursor, args)
            cursor = {"line": 0, "offset": 0}
        job.complete()
    db = sqlite3.connect(os.path.join(args.work, "warehouse.db"))
    rows, total = db.execute("SELECT COUNT(*), COALESCE(SUM(value), 0) FROM facts").fetchone()
    print(f"done: {rows} rows loaded, value sum {total}")


def run_stage(job, stage, cursor, args):
    line, offset = cursor["line"], cursor["offset"]
    print(f"stage {stage} from line {line}")
    if stage == "extract":
        out = open_output(os.path.join(args.work, "extracted.jsonl"), offset)
        rng = random.Random(7)
        for i in range(args.records):
            value = rng.randint(-100, 1000)  # drawn for every i, so a resume draws the same
            if i < line:
                continue
            out.write(json.dumps({"id": i, "value": value}) + "\n")
            step(job, stage, i + 1, out, args)
        out.close()
    elif stage == "transform":
        out = open_output(os.path.join(args.work, "transformed.jsonl"), offset)
        with open(os.path.join(args.work, "extracted.jsonl")) as src:
            for i, text in enumerate(src):
                if i < line:
                    continue
                rec = json.loads(text)
                if rec["value"] >= 0:  # the transformation: drop negative readings
                    out.write(json.dumps({"id": rec["id"], "value": rec["value"] * 2}) + "\n")
                step(job, stage, i + 1, out, args)
        out.close()
    else:
        db = sqlite3.connect(os.path.join(args.work, "warehouse.db"))
        db.execute("CREATE TABLE IF NOT EXISTS facts (id INTEGER PRIMARY KEY, value INTEGER)")
        with open(os.path.join(args.work, "transformed.jsonl")) as src:
            for i, text in enumerate(src):
                if i < line:
                    continue
                rec = json.loads(text)
                # Idempotent: loading a record twice leaves one row with the same value.
                db.execute(
                    "INSERT INTO facts (id, value) VALUES (?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET value = excluded.value",
                    (rec["id"], rec["value"]),
                )
                if job.is_due(i + 1):
                    db.commit()  # the rows before the checkpoint that covers them
                step(job, stage, i + 1, None, args)
        db.commit()
        db.close()
    # The stage is done: the next one starts at line 0 (saved now, so a crash resumes there).
    nxt = STAGES.index(stage) + 1
    if nxt < len(STAGES):
        job.checkpoint({"line": 0, "offset": 0}, RECORDS[0], stage=STAGES[nxt])
        job.flush()


def open_output(path, offset):
    """The stage's output, cut back to what the checkpoint covers."""
    f = open(path, "r+b" if os.path.exists(path) else "w+b")
    f.truncate(offset)
    f.seek(offset)
    return Writer(f)


class Writer:
    """A binary file written with text, that knows its offset."""

    def __init__(self, f):
        self.f = f

    def write(self, text):
        self.f.write(text.encode())

    def offset(self):
        self.f.flush()  # what the checkpoint covers must be in the file first
        return self.f.tell()

    def close(self):
        self.f.close()


def step(job, stage, line, out, args):
    """One more record of `stage` done, `line` in all: saves a checkpoint when one is due."""
    if args.delay:
        time.sleep(args.delay)
    RECORDS[0] += 1
    n = RECORDS[0]
    if job.is_due(n):  # build the cursor (and flush the file) only when a save is due
        offset = out.offset() if out else 0
        job.checkpoint({"line": line, "offset": offset}, n, stage=stage)


if __name__ == "__main__":
    main()
