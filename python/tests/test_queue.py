"""The claim pattern: enqueue, run, retries, dead letters, several processes, SIGTERM."""

import json
import os
import signal
import threading
import time
from collections import Counter

import pytest

import ckpt
from conftest import cli, script, spawn, wait_for_file


def test_enqueue_is_idempotent_per_key_and_takes_three_forms(any_store_url):
    q = ckpt.open(any_store_url).queue("q")
    r = q.enqueue(["a", "b"])
    assert (r.inserted, r.existing) == (2, 0)
    r = q.enqueue([("b", {"x": 1}), ("c", [1, 2])])
    assert (r.inserted, r.existing) == (1, 1)
    r = q.enqueue({"d": None, "a": "ignored"})
    assert (r.inserted, r.existing) == (1, 1)
    c = q.counts()
    assert (c.pending, c.running, c.completed, c.failed, c.dead) == (4, 0, 0, 0, 0)
    payloads = {rec.key: rec.payload for rec in q.items()}
    assert payloads == {"a": None, "b": None, "c": [1, 2], "d": None}


def test_run_calls_the_handler_once_per_item_and_keeps_its_stats(any_store_url):
    q = ckpt.open(any_store_url).queue("q")
    q.enqueue({f"k{i}": {"n": i} for i in range(30)})
    seen = Counter()
    lock = threading.Lock()

    def handler(item):
        with lock:
            seen[item.key] += 1
        assert item.attempt == 1
        assert item.cursor is None
        return {"double": item.payload["n"] * 2}

    report = q.run(handler, workers=3)
    assert report.completed == 30
    assert (report.failed, report.dead, report.lost, report.stopped) == (0, 0, 0, False)
    assert report.signal is None
    assert seen == Counter({f"k{i}": 1 for i in range(30)})
    recs = {r.key: r for r in q.items(status="completed")}
    assert len(recs) == 30
    assert recs["k7"].stats["double"] == 14
    assert recs["k7"].status == "completed"
    assert recs["k7"].attempts == 1
    assert q.counts().completed == 30
    assert q.run(handler).completed == 0  # nothing left


def test_claim_complete_fail_release_by_hand(any_store_url):
    q = ckpt.open(any_store_url).queue("q", max_attempts=2, backoff=0.01, jitter=0.0)
    q.enqueue(["a", "b", "c"])
    items = q.claim(3)
    assert sorted(i.key for i in items) == ["a", "b", "c"]
    assert q.counts().running == 3
    by = {i.key: i for i in items}
    q.complete(by["a"], {"rows": 3})
    by["b"].save_cursor({"line": 10})
    q.release(by["b"])
    r = q.fail(by["c"], "bad row")
    assert r.dead is False and r.retry_at is not None
    c = q.counts()
    assert (c.completed, c.pending, c.running) == (1, 1, 0)
    (b,) = [i for i in q.claim(3) if i.key == "b"] or [None]
    assert b is not None and b.attempt == 1  # a release counts no attempt
    assert b.cursor == {"line": 10}  # the saved per-item cursor comes back


def test_a_handler_that_raises_is_retried_then_dead_then_retried_by_the_cli(store_url, ckpt_bin):
    store = ckpt.open(store_url)
    q = store.queue("q", max_attempts=2, backoff=0.05, backoff_factor=1.0, jitter=0.0)
    q.enqueue(["good", "bad"])
    attempts = Counter()

    def failing(item):
        attempts[item.key] += 1
        if item.key == "bad":
            raise ValueError(f"boom on attempt {item.attempt}")

    report = q.run(failing, workers=2)
    assert report.completed == 1
    assert report.dead == 1
    assert attempts == Counter({"good": 1, "bad": 2})
    (dead,) = q.items(status="dead")
    assert dead.key == "bad"
    assert dead.attempts == 2
    assert "ValueError" in dead.last_error and "boom on attempt 2" in dead.last_error

    cli(ckpt_bin, store_url, "retry", "q")
    assert q.counts().pending == 1
    report = q.run(lambda item: {"fixed": True})
    assert report.completed == 1 and report.dead == 0
    c = q.counts()
    assert (c.completed, c.dead, c.pending) == (2, 0, 0)


def test_retry_dead_from_python(any_store_url):
    q = ckpt.open(any_store_url).queue("q", max_attempts=1, backoff=0.01, jitter=0.0)
    q.enqueue(["x", "y"])

    def boom(item):
        raise KeyError("nope")

    assert q.run(boom).dead == 2
    assert "KeyError" in q.items(status="dead")[0].last_error
    assert q.retry_dead(["x"]) == 1
    assert q.counts().pending == 1
    assert q.retry_dead() == 1
    assert q.run(lambda item: None).completed == 2


def test_two_processes_share_a_queue_and_run_each_item_once(store_url, tmp_path):
    keys = [f"item-{i:03d}" for i in range(200)]
    ckpt.open(store_url).queue("shared").enqueue(keys)
    go = tmp_path / "go"
    ledgers = [tmp_path / f"ledger-{n}" for n in range(2)]
    procs = [
        spawn(script("queue_worker.py"), store_url, "shared", ledger, go, 2, other,
              stdout=-1, stderr=-1, text=True)
        for ledger, other in zip(ledgers, reversed(ledgers))
    ]
    for ledger, p in zip(ledgers, procs):  # both have the store open: start them together
        wait_for_file(f"{ledger}.ready", p)
    go.write_text("go")
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, f"{out}\n{err}"
        reports.append(json.loads(out.strip().splitlines()[-1]))
    runs = [ledger.read_text().split() for ledger in ledgers]
    all_runs = runs[0] + runs[1]
    assert sorted(all_runs) == keys, "every item exactly once across the two processes"
    assert sum(r["completed"] for r in reports) == 200, reports
    assert all(runs), "both processes took part"
    c = ckpt.open(store_url).queue("shared").counts()
    assert (c.completed, c.pending, c.running) == (200, 0, 0)


def sighup_default():
    """For a child: SIGHUP at its default action, whatever the test runner inherited."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["TERM", "INT", "HUP"])
def test_sigterm_stops_the_run_and_gives_unstarted_items_back(store_url, tmp_path, signum):
    n = 30
    keys = [f"k{i:02d}" for i in range(n)]
    ckpt.open(store_url).queue("slow").enqueue(keys)
    ledger, go = tmp_path / "ledger", tmp_path / "go"
    errors = tmp_path / "stderr"
    with open(errors, "w") as err_file:
        p = spawn(script("queue_sigterm.py"), store_url, "slow", ledger, go, 2,
                  stdout=-1, stderr=err_file, text=True, preexec_fn=sighup_default)
    # Both workers are inside a handler (they wait for `go`).
    wait_for_file(ledger, p, lambda t: t.count("start ") >= 2)
    os.kill(p.pid, signum)
    # Python runs signal handlers on the main thread between calls: wait until the run says it
    # is stopping (its log line) before letting the handlers return.
    wait_for_file(errors, p, lambda t: "stopping" in t)
    if signum == signal.SIGHUP:
        # One hangup often arrives twice (the kernel, then the shell): not a second signal.
        os.kill(p.pid, signum)
        time.sleep(0.3)
    go.write_text("go")
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, errors.read_text()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["stopped"] is True
    assert report["signal"] == signum
    lines = ledger.read_text().splitlines()
    started = [line.split()[1] for line in lines if line.startswith("start ")]
    finished = [line.split()[1] for line in lines if line.startswith("done ")]
    assert sorted(started) == sorted(finished), "running handlers were let finish"
    assert len(started) < n
    assert report["completed"] == len(started)
    q = ckpt.open(store_url).queue("slow")
    c = q.counts()
    assert c.running == 0, "no item is left running"
    assert c.completed == len(started)
    assert c.pending == n - len(started)
    assert {r.key for r in q.items(status="completed")} == set(started)

    # A rerun finishes the rest, each once.
    p = spawn(script("queue_sigterm.py"), store_url, "slow", ledger, go, 2,
              stdout=-1, stderr=-1, text=True)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["stopped"] is False
    lines = ledger.read_text().splitlines()
    done = sorted(line.split()[1] for line in lines if line.startswith("done "))
    assert done == keys
    assert q.counts().completed == n


@pytest.mark.parametrize("bad", ["", "a\0b"])
def test_a_bad_item_key_is_refused_and_nothing_is_enqueued(any_store_url, bad):
    q = ckpt.open(any_store_url).queue("q")
    q.enqueue(["fine"])
    with pytest.raises(ckpt.InvalidInputError):
        q.enqueue(["ok-too", bad])
    assert [r.key for r in q.items()] == ["fine"]


def test_a_payload_that_is_not_json_is_refused(any_store_url):
    q = ckpt.open(any_store_url).queue("q")
    with pytest.raises((TypeError, ckpt.InvalidInputError)):
        q.enqueue([("a", {1, 2})])
    assert q.items() == []


@pytest.mark.parametrize("returned", [{"s": object()}, "done", 7, ["a"]])
def test_a_return_value_that_is_not_stats_completes_the_item_without_it(any_store_url, returned, caplog):
    q = ckpt.open(any_store_url).queue("q", max_attempts=1)
    q.enqueue(["a", "b"])
    # The handler returned, so its work is done: failing the item would run it again.
    # What cannot be kept as stats (not a dict, or not JSON) is dropped, said once per run.
    with caplog.at_level("WARNING", logger="ckpt"):
        report = q.run(lambda item: returned)
    assert (report.completed, report.dead, report.failed) == (2, 0, 0)
    for rec in q.items():
        assert rec.status == "completed"
        assert "s" not in (rec.stats or {})
    warnings = [r for r in caplog.records if "not kept as its stats" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_a_retried_item_resumes_at_the_cursor_it_saved(any_store_url):
    q = ckpt.open(any_store_url).queue("q", max_attempts=3, backoff=0.01, jitter=0.0)
    q.enqueue({"big": {"lines": 10}})
    seen = []

    def handler(item):
        start = item.cursor or 0
        seen.append((item.attempt, start))
        for line in range(start, item.payload["lines"]):
            if line == 6 and item.attempt == 1:
                raise IOError("connection reset")
            item.save_cursor(line + 1)
        return {"from": start}

    report = q.run(handler)
    assert report.completed == 1
    assert seen == [(1, 0), (2, 6)]
    (rec,) = q.items()
    assert rec.stats["from"] == 6
    assert rec.attempts == 2


def test_sigterm_and_sighup_together_stop_the_run_once(store_url, tmp_path):
    # systemd's SendSIGHUP: SIGTERM then SIGHUP at once. Python runs the handlers of pending
    # signals lowest number first (SIGHUP, SIGTERM): neither is a second signal, and SIGTERM is
    # the reason.
    ckpt.open(store_url).queue("slow").enqueue([f"k{i}" for i in range(6)])
    ledger, go, errors = tmp_path / "ledger", tmp_path / "go", tmp_path / "stderr"
    with open(errors, "w") as err_file:
        p = spawn(script("queue_sigterm.py"), store_url, "slow", ledger, go, 2,
                  stdout=-1, stderr=err_file, text=True, preexec_fn=sighup_default)
    wait_for_file(ledger, p, lambda t: t.count("start ") >= 2)
    os.kill(p.pid, signal.SIGTERM)
    os.kill(p.pid, signal.SIGHUP)
    wait_for_file(errors, p, lambda t: "stopping" in t)
    time.sleep(0.3)
    go.write_text("go")
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, errors.read_text()
    report = json.loads(out.strip().splitlines()[-1])
    assert (report["stopped"], report["signal"], report["completed"]) == (True, 15, 2)


def test_a_sighup_ignored_at_start_stays_ignored(store_url, tmp_path):
    # `nohup python job.py`: the run must outlive the terminal, not stop with it.
    ckpt.open(store_url).queue("slow").enqueue(["a", "b", "c"])
    ledger, go = tmp_path / "ledger", tmp_path / "go"
    p = spawn(script("queue_sigterm.py"), store_url, "slow", ledger, go, 2, stdout=-1,
              stderr=-1, text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    wait_for_file(ledger, p, lambda t: t.count("start ") >= 2)
    os.kill(p.pid, signal.SIGHUP)
    time.sleep(0.3)
    go.write_text("go")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "stopping" not in err
    report = json.loads(out.strip().splitlines()[-1])
    assert (report["stopped"], report["completed"]) == (False, 3)


def test_a_second_sigterm_ends_the_process_and_a_rerun_takes_its_items_over(store_url, tmp_path):
    n = 10
    keys = [f"k{i}" for i in range(n)]
    ckpt.open(store_url).queue("slow").enqueue(keys)
    ledger, go, errors = tmp_path / "ledger", tmp_path / "go", tmp_path / "stderr"
    with open(errors, "w") as err_file:
        p = spawn(script("queue_sigterm.py"), store_url, "slow", ledger, go, 2,
                  stdout=-1, stderr=err_file, text=True)
    wait_for_file(ledger, p, lambda t: t.count("start ") >= 2)
    os.kill(p.pid, signal.SIGTERM)
    wait_for_file(errors, p, lambda t: "stopping" in t)
    os.kill(p.pid, signal.SIGTERM)  # the handlers are still waiting for `go`
    p.communicate(timeout=30)
    assert p.returncode == -signal.SIGTERM
    q = ckpt.open(store_url).queue("slow")
    assert q.counts().completed == 0
    go.write_text("go")
    # The dead process's items are taken over at once (its pid is gone on this host).
    p = spawn(script("queue_sigterm.py"), store_url, "slow", ledger, go, 2,
              stdout=-1, stderr=-1, text=True)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["completed"] == n
    c = q.counts()
    assert (c.completed, c.running, c.pending) == (n, 0, 0)


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_a_handler_that_raises_a_base_exception_stops_the_run_and_it_goes_on_up(
    any_store_url, raised
):
    # Not the item's failure but a request to stop: the item is given back
    # uncharged, nothing more starts, and run() raises the same exception.
    q = ckpt.open(any_store_url).queue("q")
    q.enqueue([f"k{i}" for i in range(20)])
    ran = []

    def handler(item):
        ran.append(item.key)
        if item.key == "k3":
            raise raised

    with pytest.raises(type(raised)) as caught:
        q.run(handler, workers=1)
    assert caught.value is raised
    c = q.counts()
    assert (c.failed, c.dead, c.running) == (0, 0, 0)
    assert c.completed == len(ran) - 1 < 20
    k3 = next(rec for rec in q.items() if rec.key == "k3")
    assert (k3.status, k3.attempts) == ("pending", 0)


def test_any_mapping_enqueues_its_payloads_and_is_taken_as_stats(any_store_url):
    # Not only dict: a mapping's payloads must not be dropped (enqueue keeps
    # an existing key as it is, so a second call could not add them).
    from collections import ChainMap, UserDict
    from types import MappingProxyType

    q = ckpt.open(any_store_url).queue("q")
    q.enqueue(MappingProxyType({"a": {"n": 1}}))
    q.enqueue(UserDict({"b": [2]}))
    q.enqueue(ChainMap({"c": 3}))
    payloads = {rec.key: rec.payload for rec in q.items()}
    assert payloads == {"a": {"n": 1}, "b": [2], "c": 3}

    item = q.claim(1)[0]
    q.complete(item, MappingProxyType({"rows": 7}))
    q.run(lambda item: ChainMap({"rows": 1}))
    stats = {rec.key: rec.stats for rec in q.items()}
    assert stats[item.key]["rows"] == 7
    assert all(s["rows"] in (1, 7) for s in stats.values()), stats


def test_an_async_handler_is_refused_and_runs_nothing(any_store_url):
    # Calling it only makes a coroutine: completing items on that would
    # record work that never ran.
    queue = ckpt.open(any_store_url).queue("q")
    queue.enqueue(["a", "b"])
    ran = []

    async def handler(item):
        ran.append(item.key)

    with pytest.raises(TypeError, match="async def"):
        queue.run(handler)
    assert queue.counts().pending == 2
    assert ran == []


def test_a_generator_handler_is_refused_and_runs_nothing(any_store_url):
    # Its call only makes a generator: none of its work runs.
    queue = ckpt.open(any_store_url).queue("q")
    queue.enqueue(["a", "b"])
    ran = []

    def handler(item):
        ran.append(item.key)
        yield item.key

    async def async_gen_handler(item):
        ran.append(item.key)
        yield item.key

    for h in (handler, async_gen_handler):
        with pytest.raises(TypeError, match="generator function"):
            queue.run(h)
    assert queue.counts().pending == 2
    assert ran == []

    class Handler:  # not a generator function, but its call makes a generator
        def __call__(self, item):
            ran.append(item.key)
            yield item.key

    with pytest.raises(TypeError, match="generator function"):
        queue.run(Handler())
    assert ran == []
    assert [(i.status, i.attempts) for i in queue.items()] == [("pending", 0)] * 2

    # A generator the work made is a return value like any other: the
    # work ran, and the item completes.
    def returns_a_generator_expression(item):
        ran.append(item.key)
        return (c for c in item.key)

    assert queue.run(returns_a_generator_expression).completed == 2
    assert sorted(ran) == ["a", "b"]


def test_a_run_of_the_same_job_from_its_handler_is_refused(any_store_url):
    # It would wait for ever for the item the outer handler holds.
    store = ckpt.open(any_store_url)
    queue = store.queue("fanout")
    queue.enqueue(["parent"])
    raised = []

    def handler(item):
        if item.key == "parent":
            queue.enqueue(["child-1", "child-2"])
            try:
                queue.run(lambda it: None)
            except ckpt.InvalidInputError as e:
                raised.append(str(e))
            # Another job may run from a handler.
            other = store.queue("other")
            other.enqueue(["x"])
            assert other.run(lambda it: None).completed == 1

    report = queue.run(handler)
    assert len(raised) == 1 and "called from one of its own handlers" in raised[0], raised
    assert report.completed == 3  # the parent, then the children it enqueued
    assert queue.counts().completed == 3


def test_a_run_of_a_job_from_a_run_its_handler_started_is_refused(any_store_url):
    # A's handler runs B, whose handler runs A: the same wait for ever.
    store = ckpt.open(any_store_url)
    a, b = store.queue("a"), store.queue("b")
    a.enqueue(["a1"])
    b.enqueue(["b1"])
    raised = []

    def b_handler(item):
        try:
            a.run(lambda it: None)
        except ckpt.InvalidInputError as e:
            raised.append(str(e))

    assert a.run(lambda item: b.run(b_handler) and None).completed == 1
    assert len(raised) == 1 and "job 'a'" in raised[0], raised
    assert b.counts().completed == 1


def test_a_handler_that_returns_an_awaitable_stops_the_run_uncharged(any_store_url):
    queue = ckpt.open(any_store_url).queue("q")
    queue.enqueue(["a", "b", "c"])
    ran = []

    class Handler:  # not a coroutine function, but its call makes a coroutine
        async def __call__(self, item):
            ran.append(item.key)

    with pytest.raises(TypeError, match="async def"):
        queue.run(Handler())
    assert ran == []
    items = queue.items()
    assert [(i.status, i.attempts) for i in items] == [("pending", 0)] * 3
