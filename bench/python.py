#!/usr/bin/env python3
"""What ckpt costs a Python program, each figure against a baseline measured in the same run.

(a) ``job.checkpoint()`` when no save is due, against an empty Python method call with the same
    arguments, in the same loop (target: at most 3x the method call);
(b) durable checkpoint saves (``always=True``, SQLite) against Python's own ``sqlite3`` doing the
    same single-row UPSERT in a WAL database with ``synchronous=FULL``, one commit per save, in
    the same directory, alternating blocks of 50 saves (target: at least 1.0x its rate);
(c) ``queue.run`` with a no-op handler and 4 workers against the Rust ``Runner`` doing the same
    (``ckpt bench``'s ``runner_items_per_s``: a no-op handler, 4 workers, prefetch 32) on the same
    kind of store in the same directory (target: at least 0.5x the Rust rate).

Rounds alternate the contenders and the median is reported. Run it with a release build of the
package (``pip install ./python`` builds one) and of the CLI:

    python3 -m venv /tmp/v && /tmp/v/bin/pip install ./python
    cargo build --release -p ckpt-cli
    /tmp/v/bin/python bench/python.py --ckpt target/release/ckpt

The stores live in a fresh temporary directory (``--dir`` to choose, e.g. a disk rather than
tmpfs; fsync costs dominate (b)). ``--store URL`` runs (b) and (c) on another store as well
(PostgreSQL, Redis); the sqlite3 baseline of (b) is SQLite only.
"""

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import ckpt


class Plain:
    def noop(self, cursor, items_processed):
        pass


def bench_loop(n, rounds):
    store = ckpt.open("memory://")
    job = store.job("loop", every_items=10**15, every_seconds=10**6)
    obj = Plain()
    times = {"empty loop": [], "method call": [], "checkpoint()": [], "is_due()": []}
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(n):
            pass
        times["empty loop"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n):
            obj.noop(i, i)
        times["method call"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n):
            job.checkpoint(i, i)
        times["checkpoint()"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n):
            job.is_due(i)
        times["is_due()"].append(time.perf_counter() - t)
    assert store.status("loop").saves == 0, "a save happened: the loop measured saves"
    ns = {k: statistics.median(v) / n * 1e9 for k, v in times.items()}
    return {
        "iterations": n,
        "ns_per_iteration": {k: round(v, 1) for k, v in ns.items()},
        "checkpoint_vs_method": round(ns["checkpoint()"] / ns["method call"], 2),
        "checkpoint_vs_method_net_of_loop": round(
            (ns["checkpoint()"] - ns["empty loop"]) / (ns["method call"] - ns["empty loop"]), 2),
        "is_due_vs_method": round(ns["is_due()"] / ns["method call"], 2),
    }


class Sqlite3Saves:
    """The hand-rolled table ckpt replaces: one row per job, UPSERTed and committed per save."""

    def __init__(self, path):
        self.con = sqlite3.connect(path, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS checkpoints (job TEXT PRIMARY KEY, cursor TEXT NOT NULL,"
            " items_processed INTEGER NOT NULL, saved_at REAL NOT NULL)")

    def save(self, i):
        self.con.execute("BEGIN")
        self.con.execute(
            "INSERT INTO checkpoints (job, cursor, items_processed, saved_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (job) DO UPDATE SET cursor = excluded.cursor, "
            "items_processed = excluded.items_processed, saved_at = excluded.saved_at",
            ("job", json.dumps({"offset": i}), i + 1, time.time()),
        )
        self.con.execute("COMMIT")


def bench_saves(url, sqlite3_path, saves, block=50):
    """Durable saves/s of ckpt (and of sqlite3 when ``sqlite3_path``), alternating blocks of
    ``block`` saves so both see the same disk (the fsync rate of a shared disk drifts a lot)."""
    store = ckpt.open(url)
    job = store.job(f"saves-{uuid.uuid4().hex[:8]}", always=True)
    raw = Sqlite3Saves(sqlite3_path) if sqlite3_path else None
    t_ckpt = t_raw = 0.0
    for start in range(0, saves, block):
        t = time.perf_counter()
        for i in range(start, start + block):
            job.checkpoint({"offset": i}, i + 1)
        t_ckpt += time.perf_counter() - t
        if raw:
            t = time.perf_counter()
            for i in range(start, start + block):
                raw.save(i)
            t_raw += time.perf_counter() - t
    job.complete()
    store.close()
    n = (saves + block - 1) // block * block
    return n / t_ckpt, (n / t_raw if raw else None)


def bench_run_python(url, items, workers, prefetch):
    store = ckpt.open(url)
    q = store.queue(f"run-{uuid.uuid4().hex[:8]}")
    q.enqueue([f"item-{i}" for i in range(items)])
    t = time.perf_counter()
    report = q.run(lambda item: None, workers=workers, prefetch=prefetch)
    elapsed = time.perf_counter() - t
    assert report.completed == items, report.completed
    store.close()
    return items / elapsed


def bench_run_rust(ckpt_bin, url, items, workers):
    out = subprocess.run(
        [ckpt_bin, "--store", url, "bench", "--items", str(items), "--workers", str(workers),
         "--saves", "50", "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)["runner_items_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default="target/release/ckpt", help="the ckpt CLI (release build)")
    p.add_argument("--dir", help="where the SQLite stores go (default: a fresh temporary dir)")
    p.add_argument("--store", help="also run (b) and (c) on this store URL")
    p.add_argument("--loop", type=int, default=2_000_000, help="iterations of (a)")
    p.add_argument("--saves", type=int, default=2000, help="durable saves per round of (b)")
    p.add_argument("--items", type=int, default=20_000, help="items per round of (c)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    work = args.dir or tempfile.mkdtemp(prefix="ckpt-pybench-")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; "
          f"ckpt {ckpt.__version__} from {os.path.dirname(ckpt.__file__)}; stores in {work}")
    results = {}

    a = bench_loop(args.loop, args.rounds)
    results["a_checkpoint_call"] = a
    print(f"(a) ns per iteration: {a['ns_per_iteration']}")
    print(f"    checkpoint() / method call = {a['checkpoint_vs_method']}x "
          f"(net of the empty loop: {a['checkpoint_vs_method_net_of_loop']}x; target <= 3x)")

    def saves_on(url_for_round, with_sqlite3):
        ck, sq = [], []
        for r in range(args.rounds):
            path = os.path.join(work, f"sqlite3-{r}.db") if with_sqlite3 else None
            c, q = bench_saves(url_for_round(r), path, args.saves)
            ck.append(c)
            if q:
                sq.append(q)
        return statistics.median(ck), (statistics.median(sq) if sq else None)

    ck, sq = saves_on(lambda r: f"sqlite://{os.path.join(work, f'saves-{r}.db')}", True)
    results["b_durable_saves_sqlite"] = {"ckpt_per_s": round(ck), "sqlite3_per_s": round(sq),
                                         "ratio": round(ck / sq, 2)}
    print(f"(b) durable saves/s on SQLite: ckpt {ck:.0f}, sqlite3 UPSERT {sq:.0f}: "
          f"{ck / sq:.2f}x (target >= 1.0x)")

    def run_on(url_for_round):
        """Medians of each contender's rate and of the per-round ratios (a round runs the three
        back to back, so a ratio compares runs that saw the same machine)."""
        py_default, py_prefetch, rust = [], [], []
        for r in range(args.rounds):
            py_default.append(bench_run_python(url_for_round(r, "pyd"), args.items, args.workers,
                                               None))
            py_prefetch.append(bench_run_python(url_for_round(r, "pyp"), args.items, args.workers,
                                                args.workers * 8))
            rust.append(bench_run_rust(args.ckpt, url_for_round(r, "rust"), args.items,
                                       args.workers))
        med = statistics.median
        return (med(py_default), med(py_prefetch), med(rust),
                med(d / x for d, x in zip(py_default, rust)),
                med(p / x for p, x in zip(py_prefetch, rust)))

    def report_run(label, key, figures):
        d, pf, rust, ratio, ratio_pf = figures
        results[key] = {"python_per_s": round(d), "python_prefetch_per_s": round(pf),
                        "rust_runner_per_s": round(rust), "ratio": round(ratio, 2),
                        "ratio_same_prefetch": round(ratio_pf, 2)}
        print(f"(c) {label}, {args.workers} workers, no-op handler, items/s: "
              f"queue.run {d:.0f} (prefetch {args.workers * 8}: {pf:.0f}), Rust Runner {rust:.0f}: "
              f"{ratio:.2f}x ({ratio_pf:.2f}x at the same prefetch; target >= 0.5x)")

    report_run("SQLite", "c_queue_run_sqlite",
               run_on(lambda r, who: f"sqlite://{os.path.join(work, f'run-{who}-{r}.db')}"))

    if args.store:
        ck, _ = saves_on(lambda r: args.store, False)
        results["b_durable_saves_other"] = {"store": args.store, "ckpt_per_s": round(ck)}
        print(f"(b) durable saves/s on {args.store}: ckpt {ck:.0f}")
        report_run(args.store, "c_queue_run_other", run_on(lambda r, who: args.store))

    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
