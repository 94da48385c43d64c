"""The examples in examples/python: each is killed with SIGKILL mid-way, run again, and must
finish with the right result (on a SQLite store; the other stores are covered above)."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import ckpt
from conftest import REPO

EXAMPLES = REPO / "examples" / "python"


def start(name, cwd, *args):
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *map(str, args)],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: kill it with its workers
    )


def run(name, cwd, *args):
    p = start(name, cwd, *args)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"{name} exited {p.returncode}\n{out}\n{err}"
    return out


def kill_when(proc, condition, timeout=120):
    """SIGKILLs proc's process group as soon as condition() holds (polled: it reads the store)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"finished before the kill\n{proc.stdout.read()}\n{proc.stderr.read()}")
        assert time.monotonic() < deadline, "the condition for the kill never held"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # The group's other processes (an example's worker processes) die a moment later: one may
    # still be writing a commit. Wait for the group to be gone before the store is read (up to
    # 10 s: a container whose PID 1 reaps no zombies keeps them listed).
    gone_by = time.monotonic() + 10
    while time.monotonic() < gone_by:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)


def status(url, job):
    return ckpt.open(url).status(job)


def test_csv_loop_resumes_and_counts_each_row_once(tmp_path):
    url = f"sqlite://{tmp_path / 'ckpt.db'}"
    first = start("csv_loop.py", tmp_path, "--store", url, "--rows", 3000, "--delay", 0.002)
    kill_when(first, lambda: (s := status(url, "csv-totals")) is not None and s.cursor)
    saved = status(url, "csv-totals").cursor
    assert 0 < saved < 3000
    out = run("csv_loop.py", tmp_path, "--store", url)
    assert f"resumed from row {saved}" in out
    expected = {}
    with open(tmp_path / "sample.csv", newline="") as f:
        for row in csv.DictReader(f):
            expected[row["country"]] = expected.get(row["country"], 0) + int(row["amount_cents"])
    got = dict(line.split() for line in out.splitlines() if len(line.split()) == 2
               and line.split()[0].isupper())
    assert {k: int(v) for k, v in got.items()} == expected
    info = status(url, "csv-totals")
    assert (info.status, info.cursor, info.state) == ("completed", 3000, expected)


def test_etl_stages_resume_at_their_stage(tmp_path):
    url = f"sqlite://{tmp_path / 'ckpt.db'}"
    work = tmp_path / "work"
    args = ("--store", url, "--work", work, "--records", 3000)
    first = start("etl_stages.py", tmp_path, *args, "--delay", 0.001)

    def in_transform():
        s = status(url, "etl")
        return s is not None and s.stage == "transform" and s.cursor and s.cursor["line"] > 0

    kill_when(first, in_transform)
    line = status(url, "etl").cursor["line"]
    out = run("etl_stages.py", tmp_path, *args)
    assert f"resumed at stage transform, line {line}" in out
    rng = random.Random(7)
    values = [rng.randint(-100, 1000) for _ in range(3000)]
    kept = [(i, v * 2) for i, v in enumerate(values) if v >= 0]
    assert f"done: {len(kept)} rows loaded, value sum {sum(v for _, v in kept)}" in out
    extracted = [json.loads(x)["id"] for x in (work / "extracted.jsonl").read_text().splitlines()]
    assert extracted == list(range(3000))
    transformed = [json.loads(x)["id"] for x in (work / "transformed.jsonl").read_text().splitlines()]
    assert transformed == [i for i, _ in kept], "each record transformed once, in order"
    assert status(url, "etl").status == "completed"


def test_file_workers_resume_and_report_per_file_stats(tmp_path):
    url = f"sqlite://{tmp_path / 'ckpt.db'}"
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    args = ("--store", url, "--dir", inbox, "--out", outbox, "--files", 12, "--records", 200,
            "--procs", 2, "--threads", 2)
    first = start("file_workers.py", tmp_path, *args, "--delay", 0.3)

    def some_done():
        s = status(url, "files")
        return s is not None and s.counts is not None and s.counts.completed >= 3

    kill_when(first, some_done)
    done_before = status(url, "files").counts.completed
    assert done_before < 12
    out = run("file_workers.py", tmp_path, *args)
    assert f"resumed: {done_before} of 12 files already done" in out
    q = ckpt.open(url).queue("files")
    recs = {r.key: r for r in q.items(status="completed")}
    assert len(recs) == 12
    totals = [0, 0, 0]
    for name in sorted(os.listdir(inbox)):
        lines = (inbox / name).read_text().splitlines()
        valid = [x for x in lines if json.loads(x)["valid"]]
        assert (outbox / name).read_text().splitlines() == valid
        s = recs[name].stats
        assert (s["records_total"], s["records_filtered"], s["records_persisted"]) == (
            len(lines), len(lines) - len(valid), len(valid))
        totals = [totals[0] + len(lines), totals[1] + len(lines) - len(valid),
                  totals[2] + len(valid)]
    assert f"{'all':<18}{totals[0]:>8}{totals[1]:>10}{totals[2]:>11}" in out
    assert "files: 12 completed, 0 dead, 0 left" in out
