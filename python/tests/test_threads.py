"""Threads and processes: the GIL is released, a Store is shared by threads, fork is detected."""

import os
import threading
import time

import pytest

import ckpt


def test_handlers_on_four_threads_run_at_once(any_store_url):
    # Each handler waits at a barrier for all four: if the run held the GIL while a handler
    # ran, or ran handlers one after another, the barrier would time out and break.
    q = ckpt.open(any_store_url).queue("q", max_attempts=1)
    q.enqueue([f"k{i}" for i in range(4)])
    barrier = threading.Barrier(4, timeout=30)
    threads = set()

    def handler(item):
        threads.add(threading.get_ident())
        barrier.wait()

    report = q.run(handler, workers=4, prefetch=1)
    assert report.completed == 4, q.items(status="dead")
    assert len(threads) == 4


def test_the_store_is_usable_while_a_run_waits_on_another_thread(store_url):
    # queue.run on thread T waits (GIL released) while its handler is blocked on an Event;
    # meanwhile this thread opens the store, reads the counts and sets the Event. Were the GIL
    # held by the waiting run, this thread could not run and the test would hang (timeout).
    q = ckpt.open(store_url).queue("q")
    q.enqueue(["a"])
    started, release = threading.Event(), threading.Event()
    result = {}

    def runner():
        def handler(item):
            started.set()
            assert release.wait(30)

        result["report"] = q.run(handler, workers=1)

    t = threading.Thread(target=runner)
    t.start()
    assert started.wait(30)
    # The run is blocked in a handler on another thread; this thread can still use the store.
    store = ckpt.open(store_url)
    assert store.queue("q").counts().running == 1
    release.set()
    t.join(30)
    assert result["report"].completed == 1


def test_a_store_is_shared_by_threads(any_store_url):
    store = ckpt.open(any_store_url)
    errors = []

    def work(n):
        try:
            job = store.job(f"job-{n}", always=True)
            for i in range(25):
                job.checkpoint(i + 1, i + 1, state={"thread": n})
            job.complete()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for n in range(4):
        info = store.status(f"job-{n}")
        assert (info.status, info.cursor, info.state) == ("completed", 25, {"thread": n})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_store_used_after_fork_raises_in_the_child_and_the_parent_goes_on(any_store_url):
    store = ckpt.open(any_store_url)
    store.job("j", always=True).checkpoint(1, 1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what happened through the pipe, never return to pytest
        code = "no error"
        try:
            store.status("j")
        except ckpt.StoreError as e:
            code = "StoreError: " + str(e)
        except BaseException as e:  # noqa: BLE001
            code = f"{type(e).__name__}: {e}"
        finally:
            os.write(w, code.encode()[:4000])
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        said = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert said.startswith("StoreError: "), said
    assert "fork" in said
    assert store.status("j").cursor == 1  # the parent's store still works
    job = store.job("k", always=True)
    assert job.checkpoint(2, 2) is True


def test_a_queue_is_shared_by_threads_driving_their_own_loops(any_store_url):
    q = ckpt.open(any_store_url).queue("q")
    keys = [f"k{i:03d}" for i in range(120)]
    q.enqueue(keys)
    done, errors, lock = [], [], threading.Lock()

    def loop():
        try:
            while True:
                items = q.claim(5)
                if not items:
                    return
                for item in items:
                    q.complete(item, {"t": threading.get_ident()})
                    with lock:
                        done.append(item.key)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(done) == keys
    assert q.counts().completed == 120


LOCK_HOLDER = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")  # SQLite's write lock
print("locked", flush=True)
sys.stdin.readline()
con.execute("ROLLBACK")
"""


def test_a_store_call_waiting_on_a_lock_lets_other_threads_run(tmp_path):
    # Thread T's durable save waits for SQLite's write lock, which another process holds until
    # this thread tells it to let go. This thread must run while T waits: were the GIL held by
    # T's call, it could not, and T's save would fail with BusyError after 5 s.
    # (The lock holder is another process because POSIX locks are per process: Python's own
    # sqlite3 library in this process would not see ckpt's locks, nor ckpt its.)
    import subprocess
    import sys

    path = tmp_path / "locked.db"
    store = ckpt.open(f"sqlite://{path}")
    job = store.job("j", always=True)
    job.checkpoint(1, 1)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    entering, done, outcome = threading.Event(), threading.Event(), {}

    def save():
        entering.set()
        try:
            outcome["saved"] = job.checkpoint(2, 2)
        except Exception as e:  # noqa: BLE001 - asserted below
            outcome["error"] = e
        done.set()

    t = threading.Thread(target=save)
    t.start()
    assert entering.wait(10)
    time.sleep(0.3)  # T is inside checkpoint(), waiting for the lock
    ran_while_t_waited = not done.is_set()
    holder.communicate("go\n", timeout=30)
    t.join(30)
    assert ran_while_t_waited, f"this thread ran only after T's call ended: {outcome}"
    assert outcome == {"saved": True}
    assert store.status("j").cursor == 2
