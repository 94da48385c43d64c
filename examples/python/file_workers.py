"""Files claimed by several worker processes, with per-file stats (the claim pattern).

The coordinator enqueues every file of a directory (making sample files if it is empty), starts
PROCS worker processes, each running the queue on THREADS threads, and prints each file's stats
when all are done. A worker reads a file of JSON lines, filters out the records with
"valid": false, and persists the others to OUT/<file> (write to a temporary file, then rename:
an idempotent sink keyed by the file's name, so a file processed again after a crash is
written once). The stats of each file (records total / filtered / persisted, milliseconds) are
stored with its completion and shown by `ckpt items files`.

Kill -9 the whole group mid-way and run it again: completed files are skipped, the files
the dead workers held are taken over at once (their processes are gone), nothing is done twice.

    python examples/python/file_workers.py --dir /tmp/inbox --out /tmp/outbox --procs 3
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

import ckpt


def make_sample(directory, files, records):
    rng = random.Random(1)
    for n in range(files):
        with open(os.path.join(directory, f"batch-{n:03d}.jsonl"), "w") as f:
            for i in range(rng.randint(records // 2, records)):
                f.write(json.dumps({"id": f"{n}-{i}", "valid": rng.random() > 0.2}) + "\n")
    print(f"wrote {files} sample files to {directory}")


def process_file(item, out_dir, delay):
    started = time.monotonic()
    total = filtered = 0
    kept = []
    with open(item.payload["path"]) as f:
        for text in f:
            total += 1
            rec = json.loads(text)
            if not rec["valid"]:
                filtered += 1
                continue
            kept.append(text)
    if delay:
        time.sleep(delay)
    target = os.path.join(out_dir, item.key)
    tmp = f"{target}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)  # idempotent: a second run replaces with the same content
    return {
        "records_total": total,
        "records_filtered": filtered,
        "records_persisted": len(kept),
        "processing_ms": round((time.monotonic() - started) * 1000, 1),
        "worker_pid": os.getpid(),
    }


def worker(args):
    store = ckpt.open(args.store)  # opened in this process: a store does not survive fork
    queue = store.queue(args.job, max_attempts=3, backoff=1.0)
    report = queue.run(lambda item: process_file(item, args.out, args.delay), workers=args.threads)
    print(f"worker {os.getpid()}: {report.completed} files, {report.dead} dead"
          + (" (stopped by a signal)" if report.stopped else ""), flush=True)


def coordinator(args):
    os.makedirs(args.dir, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    names = sorted(n for n in os.listdir(args.dir) if n.endswith(".jsonl"))
    if not names:
        make_sample(args.dir, args.files, args.records)
        names = sorted(n for n in os.listdir(args.dir) if n.endswith(".jsonl"))
    store = ckpt.open(args.store)
    queue = store.queue(args.job)
    added = queue.enqueue({n: {"path": os.path.abspath(os.path.join(args.dir, n))} for n in names})
    c = queue.counts()
    if added.existing:
        print(f"resumed: {c.completed} of {len(names)} files already done, "
              f"{c.pending + c.running + c.failed} to do")
    else:
        print(f"starting: {len(names)} files")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--store", args.store,
           "--job", args.job, "--out", args.out, "--threads", str(args.threads),
           "--delay", str(args.delay)]
    procs = [subprocess.Popen(cmd) for _ in range(args.procs)]
    codes = [p.wait() for p in procs]
    print(f"{'file':<18}{'total':>8}{'filtered':>10}{'persisted':>11}")
    sums = [0, 0, 0]
    for rec in sorted(queue.items(status="completed", limit=100_000), key=lambda r: r.key):
        s = rec.stats
        row = [s["records_total"], s["records_filtered"], s["records_persisted"]]
        sums = [a + b for a, b in zip(sums, row)]
        print(f"{rec.key:<18}{row[0]:>8}{row[1]:>10}{row[2]:>11}")
    print(f"{'all':<18}{sums[0]:>8}{sums[1]:>10}{sums[2]:>11}")
    c = queue.counts()
    print(f"files: {c.completed} completed, {c.dead} dead, {c.pending + c.failed} left")
    return 0 if all(code == 0 for code in codes) and c.completed == len(names) else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=os.environ.get("CKPT_STORE", "sqlite://ckpt.db"))
    p.add_argument("--job", default="files")
    p.add_argument("--dir", default="inbox", help="the files to process (samples made if empty)")
    p.add_argument("--out", default="outbox", help="where the filtered files go")
    p.add_argument("--procs", type=int, default=3, help="worker processes")
    p.add_argument("--threads", type=int, default=2, help="threads per worker process")
    p.add_argument("--files", type=int, default=40, help="sample files to make")
    p.add_argument("--records", type=int, default=2000, help="most records per sample file")
    p.add_argument("--delay", type=float, default=0.0, help="seconds per file (to watch it)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
    else:
        sys.exit(coordinator(args))


if __name__ == "__main__":
    main()
