"""A resumable loop over a CSV file (the cursor pattern).

Sums the amount of each country over every row of a CSV. The cursor is the number of rows done
and the running totals are the checkpoint's state, saved together, so after a crash (kill -9 it
mid-way) the next run resumes at the last checkpoint with the totals as they were there: every
row is counted exactly once.

    python examples/python/csv_loop.py                      # makes sample.csv (100 000 rows)
    python examples/python/csv_loop.py --csv data.csv --store sqlite://ckpt.db
    ckpt status csv-totals                                  # the same job, from the CLI
"""

import argparse
import csv
import os
import random
import time

import ckpt


def make_sample(path, rows):
    rng = random.Random(42)
    countries = ["FR", "DE", "JP", "BR", "NG", "US", "IN"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "country", "amount_cents"])
        for i in range(rows):
            w.writerow([i, rng.choice(countries), rng.randint(1, 100_000)])
    print(f"wrote a sample of {rows} rows to {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=os.environ.get("CKPT_STORE", "sqlite://ckpt.db"))
    p.add_argument("--csv", help="the CSV to read (default: sample.csv, made if missing)")
    p.add_argument("--rows", type=int, default=100_000, help="rows of the sample")
    p.add_argument("--job", default="csv-totals")
    p.add_argument("--delay", type=float, default=0.0, help="seconds per row (to watch it)")
    args = p.parse_args()

    path = args.csv or "sample.csv"
    if not args.csv and not os.path.exists(path):
        make_sample(path, args.rows)

    store = ckpt.open(args.store)
    # Saves at most every 2 s or 10 000 rows; the with block releases the job on an exception.
    with store.job(args.job, every_items=10_000, every_seconds=2.0) as job:
        if job.was_completed:
            print(f"{args.job} was already completed: {job.resume_state()}")
            return
        start = job.resume_cursor() or 0
        totals = job.resume_state() or {}
        if start:
            print(f"resumed from row {start} ({sum(totals.values())} cents counted so far)")
        else:
            print("starting from row 0")
        done = start
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            for row_no, row in enumerate(reader):
                if row_no < start:
                    continue  # skip what the checkpoint covers
                c = row["country"]
                totals[c] = totals.get(c, 0) + int(row["amount_cents"])
                if args.delay:
                    time.sleep(args.delay)
                # `totals` is copied at the call: the saved state matches the cursor.
                job.checkpoint(row_no + 1, items_processed=row_no + 1, state=totals)
                done = row_no + 1
        job.complete()
    print(f"done: {done} rows")
    for c in sorted(totals):
        print(f"{c} {totals[c]}")


if __name__ == "__main__":
    main()
