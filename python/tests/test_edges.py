"""Edges a review found: values nested deeper than the stores read back, strings that are not
valid Unicode, a process ending right after queue.run, a signal handler of the program's own
raising during a run, and the text of the dropped-stats warning."""

import itertools
import os
import signal
import subprocess
import sys
import time

import pytest

import ckpt
from conftest import script


def nested(depth, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("field", ["cursor", "state"])
def test_nesting_that_reads_back_is_saved_and_deeper_is_refused(any_store_url, field):
    # The stores read JSON back with serde_json, which stops at 128 levels: 127 nested lists
    # are the most that can be saved and read again.
    store = ckpt.open(any_store_url)
    job = store.job("j", always=True)
    job.checkpoint(**{"cursor": 0, field: nested(127)})
    with pytest.raises(ckpt.InvalidInputError, match="nested more than 127"):
        job.checkpoint(**{"cursor": 1, field: nested(128)})
    job.release()
    again = store.job("j")  # reads the saved checkpoint back
    got = again.resume_cursor() if field == "cursor" else again.resume_state()
    assert got == nested(127)


def test_a_payload_nested_too_deep_is_refused_and_nothing_enqueued(any_store_url):
    q = ckpt.open(any_store_url).queue("q")
    with pytest.raises(ckpt.InvalidInputError, match="nested"):
        q.enqueue([("a", {"x": nested(127)})])  # the dict adds a level: 128
    assert q.items() == []
    q.enqueue([("b", nested(126))])
    assert q.items()[0].payload == nested(126)


@pytest.mark.parametrize(
    "call",
    [
        lambda job: job.checkpoint("\ud800", 1),
        lambda job: job.checkpoint({"\udcff": 1}, 1),
        lambda job: job.checkpoint(1, 1, state=["ok", "\udc80"]),
        lambda job: job.checkpoint(1, 1, stage="\ud800"),
    ],
)
def test_a_str_that_is_not_valid_unicode_is_invalid_input(any_store_url, call):
    store = ckpt.open(any_store_url)
    job = store.job("j", always=True)
    job.checkpoint("good", 1)
    with pytest.raises(ckpt.InvalidInputError, match="not valid Unicode"):
        call(job)
    assert store.status("j").cursor == "good"


@pytest.mark.parametrize(
    "call",
    [
        lambda job: job.checkpoint("row\x002", 2),
        lambda job: job.checkpoint({"k\x00": 1}, 2),
        lambda job: job.checkpoint(2, 2, state={"s": ["\x00"]}),
        lambda job: job.checkpoint(2, 2, stage="st\x00age"),
    ],
)
def test_a_nul_in_a_checkpoint_is_invalid_input_at_the_call(any_store_url, call):
    # PostgreSQL cannot store a NUL: refused on every store alike, at the call (not at a later
    # save, which left the job held), and the job goes on.
    store = ckpt.open(any_store_url)
    with store.job("j") as job:
        job.checkpoint("good", 1)  # not due: recorded, saved on leaving
        with pytest.raises(ckpt.InvalidInputError, match="NUL"):
            call(job)
    status = store.status("j")
    assert (status.status, status.cursor, status.owner) == ("running", "good", None)  # released


def test_a_nul_in_a_payload_or_item_cursor_is_invalid_input(any_store_url):
    store = ckpt.open(any_store_url)
    q = store.queue("q")
    with pytest.raises(ckpt.InvalidInputError, match="NUL"):
        q.enqueue(["a", ("b", {"p": "x\x00y"})])
    assert q.items() == []
    q.enqueue(["a"])
    (item,) = q.claim(1)
    with pytest.raises(ckpt.InvalidInputError, match="NUL"):
        item.save_cursor({"last_field": "x\x00y"})
    item.save_cursor({"last_field": "xy"})
    q.complete(item)
    assert q.counts().completed == 1


def test_a_handler_exception_with_a_lone_surrogate_is_recorded_readably(any_store_url):
    q = ckpt.open(any_store_url).queue("q", max_attempts=1)
    q.enqueue(["a"])

    def handler(item):
        raise ValueError("bad \udcff byte")

    assert q.run(handler).dead == 1
    (dead,) = q.items("dead")
    assert dead.last_error == "ValueError: bad \ufffd byte"


def test_closing_the_store_during_a_run_stops_it_and_charges_no_item(store_url):
    import threading
    import time

    store = ckpt.open(store_url)
    q = store.queue("q", max_attempts=3)
    q.enqueue([f"i{n}" for n in range(40)])

    def handler(item):
        item.save_cursor({"step": 1})
        time.sleep(0.02)

    closer = threading.Timer(0.3, store.close)
    closer.start()
    with pytest.raises(ckpt.StoreError, match="was closed during the run"):
        q.run(handler, workers=2)
    closer.join()
    again = ckpt.open(store_url).queue("q", max_attempts=3)
    counts = again.counts()
    assert (counts.dead, counts.failed) == (0, 0), counts
    assert counts.completed >= 1 and counts.pending >= 1, counts
    assert all(i.attempts == 0 for i in again.items("pending")), "a pending item was charged"
    # The rest runs as usual.
    report = again.run(lambda item: None)
    assert again.counts().completed == 40, report


def test_an_item_key_that_is_not_valid_unicode_is_invalid_input(any_store_url):
    q = ckpt.open(any_store_url).queue("q")
    with pytest.raises(ckpt.InvalidInputError, match="not valid Unicode"):
        q.enqueue(["fine", os.fsdecode(b"bad-\xff")])
    assert q.items() == []


@pytest.mark.parametrize(
    "call",
    [
        lambda store: store.job(os.fsdecode(b"job-\xff")),
        lambda store: store.queue("q-\ud800"),
        lambda store: store.status("\udcff"),
        lambda store: store.queue("q").retry_dead(["fine", "bad-\ud800"]),
    ],
)
def test_a_job_name_or_key_that_is_not_valid_unicode_is_invalid_input(any_store_url, call):
    store = ckpt.open(any_store_url)
    with pytest.raises(ckpt.InvalidInputError, match="not valid Unicode"):
        call(store)
    assert store.status("q-\ufffd") is None


def test_a_store_url_that_is_not_valid_unicode_is_invalid_input(tmp_path):
    url = "sqlite://" + os.fsdecode(bytes(tmp_path / "bad-") + b"\xff.db")
    with pytest.raises(ckpt.InvalidInputError, match="store URL holds a str that is not valid"):
        ckpt.open(url)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_message_that_is_not_valid_unicode_is_recorded_readably(any_store_url):
    store = ckpt.open(any_store_url)
    q = store.queue("q", max_attempts=1)
    q.enqueue(["a"])
    (item,) = q.claim(1)
    assert q.fail(item, "bad byte: " + os.fsdecode(b"\xff")).dead
    (dead,) = q.items("dead")
    assert dead.last_error == "bad byte: \ufffd"
    job = store.job("j")
    # Two code points, two replacements (not the one character they would pair up to).
    job.fail("oops \ud83d\ude00")
    assert store.status("j").last_error == "oops \ufffd\ufffd"


def test_a_process_that_ends_right_after_run_exits_cleanly(store_url):
    # Before the fix, 5 runs in 30 aborted (exit 134): the worker threads' thread states were
    # given back after run() returned, into a finalizing interpreter.
    for i in range(20):
        out = subprocess.run(
            [sys.executable, script("run_then_exit.py"), store_url, f"q{i}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (out.returncode, out.stdout.strip()) == (0, "64"), out.stderr


def exit_in_daemon(url, job, mode, handler_seconds):
    """Runs scripts/exit_in_daemon.py; asserts that the process exited with 0."""
    out = subprocess.run(
        [sys.executable, script("exit_in_daemon.py"), url, job, mode, str(handler_seconds)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("mode", ["run", "calls"])
def test_the_interpreter_exits_cleanly_with_ckpt_work_in_a_daemon_thread(store_url, mode):
    # Before the exit hook, 14 exits in 15 aborted (exit 134) in "run" mode, leaving items
    # running under a dead process's lease: the runner's worker threads took the GIL back from
    # a finalizing interpreter. ("calls" mode did not abort; it checks that the refusal of
    # late calls ends the thread's loop cleanly.)
    for i in range(8):
        job = f"{mode}{i}"
        out = exit_in_daemon(store_url, job, mode, 0.02)
        assert "FATAL" not in out.stderr, out.stderr
        counts = ckpt.open(store_url).queue(job).counts()
        # The main thread ends once the 4th item started (in "calls", it is still held).
        assert counts.completed >= (4 if mode == "run" else 3), (i, counts)
        # Nothing died of the stop: a running handler may still call ckpt (it saves its
        # cursor) while the exit waits for it.
        assert counts.dead == 0, (i, counts)
        if mode == "run":
            # Stopped as a first SIGTERM stops a run: what ran is recorded, nothing is left
            # running.
            assert counts.running == 0, (i, counts)
        else:
            # The item the thread held by hand when the process ended (its lease lapses, or
            # the next run on this host takes it over).
            assert counts.running <= 1, (i, counts)
        assert counts.completed + counts.running + counts.pending == 200, (i, counts)


def test_a_forked_child_exits_without_waiting_for_the_parents_calls(store_url):
    out = exit_in_daemon(store_url, "forked", "fork", 0.3)
    assert "child exit status 0" in out.stdout, out.stdout + out.stderr
    assert "waiting for ckpt calls" not in out.stderr, out.stderr


def test_exit_waits_for_running_handlers_and_says_so(store_url):
    out = exit_in_daemon(store_url, "slow", "run", 1.5)
    assert "waiting for ckpt calls in other threads" in out.stderr, out.stderr
    counts = ckpt.open(store_url).queue("slow").counts()
    assert (counts.completed, counts.running, counts.pending) == (4, 0, 196), counts


def test_ckpt_calls_are_refused_once_the_interpreter_is_exiting(tmp_path):
    code = (
        "import atexit\n"
        "def late():\n"
        "    try:\n"
        "        q.counts()\n"
        "    except ckpt.StoreError as e:\n"
        "        print('refused:', e)\n"
        # atexit runs its hooks last in, first out: registered before ckpt's, this one runs
        # after it.
        "atexit.register(late)\n"
        "import ckpt\n"
        f"q = ckpt.open('sqlite://{tmp_path}/s.db').queue('q')\n"
        "print(q.counts().pending)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("0\nrefused: store error: the Python interpreter is exiting"), (
        out.stdout + out.stderr
    )


def test_a_raising_signal_handler_of_the_program_stops_the_run_then_raises(store_url):
    q = ckpt.open(store_url).queue("q")
    q.enqueue([f"k{i}" for i in range(50)])

    class Interrupted(Exception):
        pass

    def on_usr1(signum, frame):
        raise Interrupted("usr1")

    previous = signal.signal(signal.SIGUSR1, on_usr1)
    try:
        def handler(item):
            if item.key == "k3":
                os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)  # 50 items take over a second: the stop comes long before

        with pytest.raises(Interrupted):
            q.run(handler, workers=2)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    counts = q.counts()
    # Stopped as a stop would: nothing left running, the unstarted items given back.
    assert counts.running == 0
    assert counts.pending > 0
    assert counts.completed + counts.pending == 50
    # SIGTERM and SIGINT have their previous handlers back.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_dropped_stats_warning_reads_as_one_sentence(any_store_url, caplog):
    q = ckpt.open(any_store_url).queue("q")
    q.enqueue(["a"])
    with caplog.at_level("WARNING", logger="ckpt"):
        q.run(lambda item: "done")
    (message,) = [r.getMessage() for r in caplog.records if "stats" in r.getMessage()]
    assert "  " not in message, message


def test_oversize_stats_are_refused_by_complete_and_left_out_of_a_run(any_store_url, caplog):
    q = ckpt.open(any_store_url).queue("q")
    q.enqueue(["by-hand", "by-run"])
    (item,) = q.claim(1)
    big = {"blob": "x" * (64 * 1024)}
    with pytest.raises(ckpt.InvalidInputError, match="item stats is .* over the limit"):
        q.complete(item, big)
    assert q.counts().running == 1  # still held, nothing written
    q.complete(item, {"n": 1})
    with caplog.at_level("WARNING", logger="ckpt"):
        report = q.run(lambda item: big)
    assert report.completed == 1
    (warning,) = [r.getMessage() for r in caplog.records if "not kept" in r.getMessage()]
    assert "over the limit" in warning, warning
    stats = {i.key: i.stats for i in q.items()}
    assert stats["by-hand"] == {"n": 1}
    assert "blob" not in (stats["by-run"] or {})


# Each call takes a job of its own: a job handle holds its job.
JOB_NAMES = (f"j{n}" for n in itertools.count())

NUMBER_ARGS = [
    ("max", -1, lambda s, v: s.queue("q").claim(v)),
    ("max", 2**64, lambda s, v: s.queue("q").claim(max=v)),
    ("max", 2**63, lambda s, v: s.queue("q").claim(max=v)),
    ("limit", -1, lambda s, v: s.queue("q").items(limit=v)),
    ("workers", 2**64, lambda s, v: s.queue("q").run(lambda item: None, workers=v)),
    ("workers", 1025, lambda s, v: s.queue("q").run(lambda item: None, workers=v)),
    ("prefetch", -5, lambda s, v: s.queue("q").run(lambda item: None, prefetch=v)),
    ("max_attempts", 2**32, lambda s, v: s.queue("q", max_attempts=v)),
    ("lease", 2**1100, lambda s, v: s.queue("q", lease=v)),
    ("jitter", -(2**1100), lambda s, v: s.queue("q", jitter=v)),
    ("backoff", 2**1100, lambda s, v: s.queue("q", backoff=v)),
    ("backoff_factor", 2**1100, lambda s, v: s.queue("q", backoff_factor=v)),
    ("max_backoff", 2**1100, lambda s, v: s.queue("q", max_backoff=v)),
    ("lease", 2**1100, lambda s, v: s.job(next(JOB_NAMES), lease=v)),
    ("target_overhead", 2**1100, lambda s, v: s.job(next(JOB_NAMES), target_overhead=v)),
    ("every_items", -1, lambda s, v: s.job(next(JOB_NAMES), every_items=v)),
    ("every_seconds", 2**1100, lambda s, v: s.job(next(JOB_NAMES), every_seconds=v)),
    ("max_interval", 10**400, lambda s, v: s.job(next(JOB_NAMES), max_interval=v)),
    ("items_processed", -1, lambda s, v: s.job(next(JOB_NAMES)).is_due(v)),
    ("limit", 2**70, lambda s, v: s.job(next(JOB_NAMES)).history(v)),
]


@pytest.mark.parametrize(
    "name,value,call", NUMBER_ARGS, ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(NUMBER_ARGS)]
)
def test_a_number_out_of_range_is_invalid_input_naming_the_argument(tmp_path, name, value, call):
    store = ckpt.open(f"sqlite://{tmp_path}/ckpt.db")
    message = rf"^{name} (must be a whole number from 0 to \d+|is out of a float's range)"
    with pytest.raises(ckpt.InvalidInputError, match=message):
        call(store, value)
    # A value of the wrong type is still a TypeError naming the argument.
    if name in ("max", "limit", "workers", "max_attempts", "every_items", "items_processed"):
        with pytest.raises(TypeError, match=name):
            call(store, "3")


def test_numbers_in_range_are_taken_as_before(tmp_path):
    # A bool is an int, an object with __index__ (numpy's ints) is one too, and an int is a
    # float: none of them is refused by the range checks.
    class Index:
        def __index__(self):
            return 2

    store = ckpt.open(f"sqlite://{tmp_path}/ckpt.db")
    q = store.queue("q", lease=5, max_attempts=True, backoff=1)
    q.enqueue(["a", "b", "c"])
    assert [i.key for i in q.claim(Index())] == ["a", "b"]
    assert len(q.items(limit=True)) == 1
    job = store.job("j", every_items=Index(), lease=30)
    assert job.history(limit=0) == []


def test_a_connection_the_server_ended_while_idle_is_replaced_not_an_error():
    # A role with idle_session_timeout, as managed databases set: the
    # server ends each pooled connection between saves. The next save
    # takes a live connection, not the dead one.
    import uuid

    from conftest import PG_BASE, _check, pg_execute

    _check("postgres")
    tag = uuid.uuid4().hex[:12]
    role = schema = f"ckpt_idle_{tag}"
    pg_execute(
        f"CREATE ROLE {role} LOGIN; ALTER ROLE {role} SET idle_session_timeout = '1s';"
        f" CREATE SCHEMA {schema} AUTHORIZATION {role}"
    )
    try:
        user = PG_BASE.split("://", 1)[1].split("@", 1)[0]
        url = PG_BASE.replace(f"://{user}@", f"://{role}@", 1)
        url += ("&" if "?" in url else "?") + f"schema={schema}"
        store = ckpt.open(url)
        job = store.job("j", always=True)
        for i in range(3):
            job.checkpoint(i, i)
            time.sleep(1.5)
        assert store.status("j").cursor == 2
        store.close()
    finally:
        pg_execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; DROP ROLE IF EXISTS {role}")
