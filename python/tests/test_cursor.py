"""The cursor pattern: store.job(), checkpoints, resume, the context manager, a crash."""

import contextlib
import os
import signal
import subprocess
import sys

import pytest

import ckpt
from conftest import script, spawn, wait_for_file


def test_the_package_under_test_is_the_installed_one():
    # Not the source tree's python/ckpt (which has no extension module).
    assert "site-packages" in ckpt.__file__, ckpt.__file__
    assert ckpt.__version__


def test_a_new_job_resumes_from_nothing_then_from_its_checkpoint(any_store_url):
    store = ckpt.open(any_store_url)
    job = store.job("j", always=True)
    assert job.name == "j"
    assert job.resume_cursor() is None
    assert job.resume_state() is None
    assert job.resume_stage() is None
    assert job.resume_items_processed() == 0
    assert job.was_completed is False
    cursor = {"file": "a.csv", "offset": [1, 2]}
    assert job.checkpoint(cursor, 12, stage="load", state={"seen": ["x"], "n": 1.5}) is True
    cursor["offset"].append(3)  # captured at the call: this change is not saved
    job.release()

    again = store.job("j", always=True)
    assert again.resume_cursor() == {"file": "a.csv", "offset": [1, 2]}
    assert again.resume_state() == {"seen": ["x"], "n": 1.5}
    assert again.resume_stage() == "load"
    assert again.resume_items_processed() == 12
    again.checkpoint("s", 13)
    again.complete()
    info = store.status("j")
    assert info.name == "j"
    assert info.status == "completed"
    assert info.cursor == "s"
    assert info.items_processed == 13
    assert info.saves == 2
    assert store.status("no-such-job") is None


def test_values_come_back_as_json_keys_sorted_on_every_store(any_store_url):
    # As documented: JSON objects have no order and PostgreSQL's jsonb keeps
    # none, so every store gives a dict's keys back sorted, and tuples as lists.
    store = ckpt.open(any_store_url)
    job = store.job("order", always=True)
    state = {"stages": {"extract": 1, "transform": 2, "load": 3}, "b": 0, "a": (1, 2)}
    job.checkpoint({"z": 1, "y": 2}, 1, state=state)
    job.release()
    again = store.job("order", always=True)
    assert list(again.resume_cursor()) == ["y", "z"]
    resumed = again.resume_state()
    assert list(resumed) == ["a", "b", "stages"]
    assert list(resumed["stages"]) == ["extract", "load", "transform"]
    assert resumed["a"] == [1, 2]
    again.release()


def test_items_processed_defaults_to_the_previous_count_plus_one(any_store_url):
    store = ckpt.open(any_store_url)
    job = store.job("j", always=True)
    job.checkpoint(1, 10)
    job.checkpoint(2)
    job.checkpoint(3)
    job.flush()
    assert store.status("j").items_processed == 12


def test_the_policy_decides_and_flush_persists(any_store_url):
    store = ckpt.open(any_store_url)
    job = store.job("j", every_items=1000, every_seconds=3600)
    assert job.checkpoint(1, 1) is False
    assert job.is_due(2) is False
    assert job.is_due(1001) is True
    assert store.status("j").cursor is None
    job.flush()
    assert store.status("j").cursor == 1
    assert job.checkpoint(1001, 1001) is True
    assert store.status("j").cursor == 1001


def test_history_is_newest_first(any_store_url):
    store = ckpt.open(any_store_url)
    job = store.job("j", always=True)
    for i in range(5):
        job.checkpoint(i, i)
    hist = job.history()
    assert [h.cursor for h in hist] == [4, 3, 2, 1, 0]
    assert [h.seq for h in hist] == [5, 4, 3, 2, 1]
    assert hist[0].items_processed == 4
    assert hist[0].saved_at >= hist[-1].saved_at > 1.7e9
    assert [h.cursor for h in job.history(limit=2)] == [4, 3]


def test_fail_keeps_the_checkpoint_and_records_the_error(any_store_url):
    store = ckpt.open(any_store_url)
    job = store.job("j", always=True)
    job.checkpoint(5, 5)
    job.fail("disk full")
    info = store.status("j")
    assert info.status == "failed"
    assert info.cursor == 5
    assert "disk full" in info.last_error


def test_a_completed_job_says_so_when_acquired_again(any_store_url):
    store = ckpt.open(any_store_url)
    job = store.job("j", always=True)
    job.checkpoint(1, 1)
    job.complete()
    assert store.job("j").was_completed is True


def test_busy_while_a_live_worker_holds_the_job(store_url):
    a, b = ckpt.open(store_url), ckpt.open(store_url)  # two workers
    held = a.job("j", always=True)
    held.checkpoint(1, 1)
    with pytest.raises(ckpt.BusyError):
        b.job("j")
    held.release()
    assert b.job("j").resume_cursor() == 1


def test_an_exception_in_the_with_block_releases_the_lease_and_keeps_the_checkpoint(store_url):
    a, b = ckpt.open(store_url), ckpt.open(store_url)
    with pytest.raises(RuntimeError, match="boom"):
        with a.job("j", always=True, lease=600) as job:
            job.checkpoint(3, 3, state={"k": 1})
            raise RuntimeError("boom")
    # Released: another worker acquires at once (its 600 s lease would otherwise block).
    other = b.job("j")
    assert other.resume_cursor() == 3
    assert other.resume_state() == {"k": 1}
    assert b.status("j").status == "running"


def test_leaving_the_with_block_flushes_what_the_policy_held_back(store_url):
    a, b = ckpt.open(store_url), ckpt.open(store_url)
    with a.job("j", every_items=10_000, every_seconds=3600, lease=600) as job:
        assert job.checkpoint(7, 7) is False
    assert b.status("j").cursor == 7
    b.job("j")  # not busy: released


def test_a_loop_killed_with_sigkill_resumes_at_its_checkpoint(store_url, tmp_path):
    n, pause = 40, 17
    out, ready = tmp_path / "out.txt", tmp_path / "ready"
    first = spawn(script("cursor_loop.py"), store_url, "loop", n, out, ready, pause,
                  stdout=-1, stderr=-1, text=True)
    wait_for_file(ready, first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert "resumed from 0" in first.stdout.read()

    second = spawn(script("cursor_loop.py"), store_url, "loop", n, out, ready, -1,
                   stdout=-1, stderr=-1, text=True)
    stdout, stderr = second.communicate(timeout=120)
    assert second.returncode == 0, stderr
    # The dead holder (this host, process gone) is taken over at once, at the saved cursor.
    assert f"resumed from {pause + 1}" in stdout
    assert "done" in stdout
    done = [int(x) for x in out.read_text().split()]
    assert done == list(range(n)), "each item exactly once, in order"
    info = ckpt.open(store_url).status("loop")
    assert info.status == "completed"
    assert info.cursor == n
    assert info.items_processed == n
    assert info.state == {"sum": sum(range(n))}


def test_a_flush_or_complete_refused_by_a_locked_store_is_saved_by_the_next_call(tmp_path):
    # Another process holding SQLite's write lock makes the flush fail with
    # BusyError; the checkpoint stays recorded, so the retry saves it
    # rather than succeeding with nothing to save. (The lock is taken in
    # another process: two SQLite libraries in one process do not see
    # each other's locks, see docs/PYTHON.md.)
    path = tmp_path / "c.db"
    store = ckpt.open(f"sqlite://{path}?busy_timeout=50")
    job = store.job("j", every_items=1000)
    job.checkpoint(1, 1)
    job.flush()
    job.checkpoint(2, 2)
    with locked(path):
        with pytest.raises(ckpt.BusyError):
            job.flush()
        assert store.status("j").cursor == 1
    job.flush()
    assert store.status("j").cursor == 2
    # complete() flushes while it still holds the job: refused the same
    # way, the handle and its checkpoint are kept, and a second call
    # completes with it.
    job.checkpoint(3, 3)
    with locked(path):
        with pytest.raises(ckpt.BusyError):
            job.complete()
        assert "held" in repr(job)
    job.complete()
    info = store.status("j")
    assert (info.status, info.cursor) == ("completed", 3)


@contextlib.contextmanager
def locked(path):
    """SQLite's write lock on ``path``, held by another process while in the block."""
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCK_UNTIL_STDIN_CLOSES, str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert locker.stdout.readline() == "locked\n"
        yield
    finally:
        locker.stdin.close()
        assert locker.wait(timeout=30) == 0


LOCK_UNTIL_STDIN_CLOSES = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


@pytest.fixture
def losing_redis(tmp_path):
    """A job on a Redis store, saved at cursor 1, and a function that makes Redis lose the
    store's data under it: a save then fails with StoreError, not for now but for good."""
    from conftest import Redis, make_store_url

    urls = make_store_url("redis", tmp_path)
    url = next(urls)
    job = ckpt.open(url).job("j", every_items=1000)
    job.checkpoint(1, 1)
    job.flush()

    def lose():
        prefix = url.rsplit("prefix=", 1)[1]
        r = Redis()
        try:
            r.cmd("DEL", *r.keys(f"{prefix}:*"))
        finally:
            r.close()

    yield job, lose
    next(urls, None)


def test_a_complete_whose_save_failed_for_good_never_succeeds_without_it(losing_redis):
    # The checkpoint is gone with the failed save: a second complete() must say so, not
    # complete the job without it.
    job, lose = losing_redis
    job.checkpoint(2, 2)
    lose()
    with pytest.raises(ckpt.StoreError, match="is gone"):
        job.complete()
    with pytest.raises(ckpt.StoreError, match="last checkpoint recorded was not saved"):
        job.complete()
    assert "held" in repr(job)


@pytest.mark.parametrize("retry", ["flush", "complete", "checkpoint"])
def test_a_flush_whose_save_failed_for_good_is_not_forgotten(losing_redis, retry):
    # As complete() above, for flush(): neither flush() nor complete() may report success
    # without the dropped checkpoint (a second flush() used to find nothing pending and return
    # as if saved); a newer checkpoint is tried afresh.
    job, lose = losing_redis
    job.checkpoint(2, 2)
    lose()
    with pytest.raises(ckpt.StoreError, match="is gone"):
        job.flush()
    if retry == "checkpoint":
        assert job.checkpoint(3, 3) is False  # recorded, not due
        with pytest.raises(ckpt.StoreError, match="is gone"):
            job.flush()  # the newer one, tried afresh
    else:
        with pytest.raises(ckpt.StoreError, match="last checkpoint recorded was not saved"):
            getattr(job, retry)()
    assert "held" in repr(job)


def test_a_complete_that_fails_after_its_save_spends_the_handle_saying_why(losing_redis):
    # Nothing left to save, then marking the job fails: the job was taken out of the handle,
    # so later calls say what happened rather than "already completed".
    job, lose = losing_redis
    lose()
    with pytest.raises(ckpt.StoreError, match="is gone"):
        job.complete()
    with pytest.raises(ckpt.Error, match="the call that was to end it failed .* is gone"):
        job.release()
    assert "spent" in repr(job)
