"""Bad input and lost leases: the right exception, and the store unchanged."""

import os
import sqlite3
import subprocess
import sys
import time

import pytest

import ckpt

LIMIT = 1024 * 1024  # the library's default state limit (validate::DEFAULT_STATE_LIMIT)


def test_the_errors_form_one_hierarchy():
    for e in (ckpt.BusyError, ckpt.FencedError, ckpt.NotFoundError, ckpt.InvalidInputError,
              ckpt.StoreError):
        assert issubclass(e, ckpt.Error)
    assert issubclass(ckpt.Error, Exception)


def _saved(url, name="j"):
    info = ckpt.open(url).status(name)
    return (info.cursor, info.state, info.items_processed, info.saves)


@pytest.mark.parametrize(
    "bad",
    [{1, 2}, object(), float("nan"), float("inf"), {"nested": [1, {"x": b"bytes"}]}],
    ids=["set", "object", "nan", "inf", "bytes"],
)
@pytest.mark.parametrize("where", ["state", "cursor"])
def test_a_value_that_is_not_json_is_refused_and_nothing_is_written(store_url, bad, where):
    job = ckpt.open(store_url).job("j", always=True)
    job.checkpoint({"at": 1}, 1, state={"ok": True})
    before = _saved(store_url)
    with pytest.raises((TypeError, ckpt.InvalidInputError)):
        if where == "state":
            job.checkpoint({"at": 2}, 2, state=bad)
        else:
            job.checkpoint(bad, 2)
    assert _saved(store_url) == before
    job.flush()
    assert _saved(store_url) == before, "the refused checkpoint is not pending either"
    assert job.checkpoint({"at": 3}, 3) is True  # the job goes on


def test_state_over_the_limit_is_refused_and_at_the_limit_is_saved(store_url):
    job = ckpt.open(store_url).job("j", always=True)
    job.checkpoint(1, 1, state="small")
    before = _saved(store_url)
    with pytest.raises(ckpt.InvalidInputError) as e:
        job.checkpoint(2, 2, state="x" * (LIMIT - 1))  # LIMIT + 1 bytes with the quotes
    assert str(LIMIT) in str(e.value)
    assert _saved(store_url) == before
    assert job.checkpoint(3, 3, state="x" * (LIMIT - 2)) is True  # exactly LIMIT bytes
    assert len(ckpt.open(store_url).status("j").state) == LIMIT - 2


@pytest.mark.parametrize(
    "name", ["", " lead", "trail ", "new\nline", "tab\there", "x" * 201],
    ids=["empty", "leading-space", "trailing-space", "newline", "tab", "too-long"],
)
def test_a_bad_job_name_is_refused_and_creates_nothing(any_store_url, name):
    store = ckpt.open(any_store_url)
    with pytest.raises(ckpt.InvalidInputError):
        store.job(name)
    with pytest.raises(ckpt.InvalidInputError):
        store.queue(name).enqueue(["a"])
    assert store.status("x" * 200) is None  # the longest good name is fine, and absent


def test_a_corrupt_store_file_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "garbage.db"
    garbage = b"this is not a database\n" * 512
    path.write_bytes(garbage)
    with pytest.raises(ckpt.StoreError):
        ckpt.open(f"sqlite://{path}")
    assert path.read_bytes() == garbage


def test_a_foreign_sqlite_database_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "foreign.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(ckpt.StoreError):
        ckpt.open(f"sqlite://{path}")
    assert path.read_bytes() == before


@pytest.mark.parametrize("url", ["nope://x", "ckpt.db", "postgres://h/db?bogus=1"])
def test_a_bad_url_is_a_store_error_in_one_line(url):
    with pytest.raises(ckpt.StoreError) as e:
        ckpt.open(url)
    assert "\n" not in str(e.value)
    assert "cannot open store" in str(e.value)


def test_an_unreachable_server_names_no_password():
    with pytest.raises(ckpt.StoreError) as e:
        ckpt.open("postgres://alice:s3cr3t-pw@127.0.0.1:1/test?connect_timeout=2")
    assert "s3cr3t-pw" not in str(e.value)
    assert "127.0.0.1" in str(e.value)
    with pytest.raises(ckpt.StoreError) as e:
        ckpt.open("redis://:s3cr3t-pw@127.0.0.1:1/0")
    assert "s3cr3t-pw" not in str(e.value)


def test_open_without_a_url_reads_ckpt_store(tmp_path, monkeypatch):
    path = tmp_path / "from-env.db"
    monkeypatch.setenv("CKPT_STORE", f"sqlite://{path}")
    store = ckpt.open()
    store.job("j", always=True).checkpoint(1, 1)
    assert path.exists()
    assert ckpt.open(f"sqlite://{path}").status("j").cursor == 1


def test_a_closed_store_raises_store_error(any_store_url):
    store = ckpt.open(any_store_url)
    store.close()
    with pytest.raises(ckpt.StoreError):
        store.status("j")


# ---------------------------------------------------------------- zombies
def _lapse(lease):
    # No clock can be injected from Python: let the real lease run out.
    time.sleep(lease + 0.5)


def _zombie(url, taker_saves):
    """A job holder whose lease lapsed and was taken over by another, which saved
    `taker_saves` (cursor and items) since."""
    zombie = ckpt.open(url).job("j", always=True, lease=1.0)
    zombie.checkpoint(1, 1)
    _lapse(1.0)
    ckpt.open(url).job("j", always=True, lease=60).checkpoint(taker_saves, taker_saves)
    return zombie


def test_a_zombie_job_holder_is_fenced_and_changes_nothing(store_url):
    a, b = ckpt.open(store_url), ckpt.open(store_url)
    zombie = a.job("j", always=True, lease=1.0)
    zombie.checkpoint(1, 1, state="from A")
    _lapse(1.0)
    taker = b.job("j", always=True, lease=60)
    assert taker.taken_over_from is not None
    assert taker.resume_cursor() == 1
    taker.checkpoint(5, 5, state="from B")
    before = _saved(store_url)
    with pytest.raises(ckpt.FencedError):
        zombie.checkpoint(2, 2, state="from A again")
    with pytest.raises(ckpt.FencedError):
        zombie.complete()
    # Once fenced, it reads the store no more (the history is B's now); what it resumed
    # from stays readable.
    with pytest.raises(ckpt.FencedError):
        zombie.history()
    assert zombie.resume_cursor() is None
    assert _saved(store_url) == before == (5, "from B", 5, before[3])
    info = b.status("j")
    assert info.status == "running"
    taker.complete()
    assert b.status("j").status == "completed"


def test_a_zombie_flush_is_fenced(store_url):
    a, b = ckpt.open(store_url), ckpt.open(store_url)
    zombie = a.job("j", every_items=1000, every_seconds=3600, lease=1.0)
    zombie.checkpoint(1, 1, state="from A")
    zombie.flush()
    _lapse(1.0)
    b.job("j", always=True, lease=60).checkpoint(5, 5, state="from B")
    before = _saved(store_url)
    try:
        assert zombie.checkpoint(2, 2, state="held back") is False  # no save due: no store call
    except ckpt.FencedError:
        pass  # or it knows its lease is gone
    with pytest.raises(ckpt.FencedError):
        zombie.flush()
    with pytest.raises(ckpt.FencedError):
        zombie.release()
    assert _saved(store_url) == before


def test_a_zombie_job_holder_cannot_fail_or_release_it_either(store_url):
    zombie = _zombie(store_url, taker_saves=9)
    with pytest.raises(ckpt.FencedError):
        zombie.fail("late")
    info = ckpt.open(store_url).status("j")
    assert (info.status, info.cursor, info.last_error) == ("running", 9, None)


def test_a_zombie_item_holder_is_fenced_and_changes_nothing(store_url):
    a, b = ckpt.open(store_url), ckpt.open(store_url)
    qa = a.queue("q", lease=1.0)
    qb = b.queue("q", lease=60)
    qa.enqueue({"only": {"p": 1}})
    (mine,) = qa.claim(1)
    _lapse(1.0)
    (theirs,) = qb.claim(1)
    assert theirs.key == "only"
    assert theirs.attempt == 2
    with pytest.raises(ckpt.FencedError):
        mine.save_cursor({"line": 99})
    with pytest.raises(ckpt.FencedError):
        qa.complete(mine, {"by": "A"})
    with pytest.raises(ckpt.FencedError):
        qa.fail(mine, "late")
    (rec,) = qb.items()
    assert (rec.status, rec.owner == qb.owner) == ("running", True)
    qb.complete(theirs, {"by": "B"})
    (rec,) = qb.items()
    assert (rec.status, rec.stats) == ("completed", {"by": "B"})


@pytest.mark.parametrize(
    "make",
    [
        lambda s: s.job("j", lease=0),
        lambda s: s.job("j", lease=-1.0),
        lambda s: s.job("j", every_items=0),
        lambda s: s.job("j", target_overhead=2.0),
        lambda s: s.queue("q", max_attempts=0),
        lambda s: s.queue("q", backoff=0),
        lambda s: s.queue("q", jitter=1.5),
        lambda s: s.queue("q").run(lambda item: None, workers=0),
        # Bad even where another option leaves it unused.
        lambda s: s.job("j", every_items=5, max_interval=0),
        lambda s: s.job("j", every_seconds=1, target_overhead=5),
        lambda s: s.job("j", always=True, max_interval=-1),
        lambda s: s.job("j", always=True, target_overhead=float("nan")),
    ],
    ids=["lease-0", "lease-negative", "every-items-0", "overhead-2", "attempts-0", "backoff-0",
         "jitter-1.5", "workers-0", "unused-max-interval-0", "unused-overhead-5",
         "always-max-interval-negative", "always-overhead-nan"],
)
def test_a_bad_option_is_invalid_input_and_creates_nothing(any_store_url, make):
    store = ckpt.open(any_store_url)
    with pytest.raises(ckpt.InvalidInputError):
        make(store)
    assert store.status("j") is None


def test_an_item_of_another_jobs_queue_is_refused(any_store_url):
    store = ckpt.open(any_store_url)
    images, videos = store.queue("images"), store.queue("videos")
    images.enqueue(["cat.jpg"])
    (item,) = images.claim(1)
    for call in (
        lambda: videos.complete(item, {"frames": 1}),
        lambda: videos.fail(item, "x"),
        lambda: videos.release(item),
        lambda: videos.heartbeat([item]),
    ):
        with pytest.raises(ckpt.InvalidInputError, match="claimed from job 'images'"):
            call()
    assert images.counts().running == 1
    images.complete(item)
    assert images.counts().completed == 1


def test_a_handler_that_is_not_callable_is_a_type_error(any_store_url):
    q = ckpt.open(any_store_url).queue("q")
    q.enqueue(["a"])
    with pytest.raises(TypeError):
        q.run("not a function")
    assert q.counts().pending == 1


# ---------------------------------------------------------------- held back, then refused
def test_an_oversize_state_is_refused_at_the_call_even_when_no_save_is_due(any_store_url):
    store = ckpt.open(any_store_url)
    job = store.job("j", every_items=1000, every_seconds=3600)
    job.checkpoint(1, 1, state="fine")
    with pytest.raises(ckpt.InvalidInputError):
        job.checkpoint(2, 2, state="x" * LIMIT)
    job.flush()  # saves the last good checkpoint
    assert store.status("j").state == "fine"


def test_every_call_of_a_fenced_job_raises(store_url):
    zombie = _zombie(store_url, taker_saves=5)
    with pytest.raises(ckpt.FencedError):
        zombie.checkpoint(2, 2)
    for call in (zombie.flush, zombie.heartbeat, lambda: zombie.checkpoint(3, 3),
                 zombie.complete):
        with pytest.raises(ckpt.FencedError):
            call()


def test_what_a_zombie_acquired_stays_readable_after_its_complete_is_fenced(store_url):
    first = ckpt.open(store_url).job("z", always=True)
    first.checkpoint({"pos": 7}, 1, stage="load")
    first.release()
    zombie = ckpt.open(store_url).job("z", lease=1.0)
    _lapse(1.0)
    ckpt.open(store_url).job("z", lease=60)
    with pytest.raises(ckpt.FencedError):
        zombie.complete()
    assert zombie.resume_cursor() == {"pos": 7}
    assert (zombie.resume_stage(), zombie.resume_items_processed()) == ("load", 1)
    assert "fenced" in repr(zombie)


def test_input_python_cannot_print_or_encode_gets_the_documented_errors(any_store_url):
    store = ckpt.open(any_store_url)
    # Python refuses to print an int of over 4300 digits: still InvalidInputError.
    with pytest.raises(ckpt.InvalidInputError, match="beyond 64 bits"):
        store.job("j", always=True).checkpoint(10**5000)
    with pytest.raises(ckpt.InvalidInputError, match="not valid Unicode"):
        store.queue("q").items(status="\udc80")


def test_a_ckpt_store_that_is_not_utf8_is_refused_not_replaced_by_the_default(tmp_path):
    env = dict(os.environb)
    env[b"CKPT_STORE"] = b"sqlite://" + bytes(tmp_path) + b"/\xff.db"
    program = "import ckpt\ntry:\n    ckpt.open()\nexcept ckpt.StoreError as e:\n    print(e)\n"
    out = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    assert "CKPT_STORE is not valid UTF-8" in out.stdout, out
    assert list(tmp_path.iterdir()) == [], "no store was created"
