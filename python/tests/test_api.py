"""The public surface: docstrings, help(), and the same jobs seen by the ckpt CLI."""

import inspect
import json
import pydoc

import pytest

import ckpt
from conftest import cli, cli_json


def _public_members(cls):
    for name, member in vars(cls).items():
        if not name.startswith("_") and callable(getattr(cls, name, None)):
            yield name, member


def test_every_public_name_has_a_docstring():
    missing = []
    for name in ckpt.__all__:
        obj = getattr(ckpt, name)
        if name == "__version__":
            assert isinstance(obj, str) and obj
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for member_name, member in _public_members(obj):
                if not (getattr(member, "__doc__", None) or "").strip():
                    missing.append(f"{name}.{member_name}")
    assert missing == [], f"no docstring: {missing}"


def test_the_stubs_and_the_module_name_the_same_things():
    import pathlib

    stub = pathlib.Path(ckpt.__file__).with_name("_ckpt.pyi")
    assert stub.exists(), "the .pyi stubs are installed with the package"
    assert (stub.parent / "py.typed").exists()
    text = stub.read_text()
    for name in ckpt.__all__:
        if name != "__version__":
            assert f"class {name}" in text or f"def {name}(" in text, name


def test_help_on_open_shows_its_signature_and_the_url_forms():
    assert list(inspect.signature(ckpt.open).parameters) == ["url"]
    text = pydoc.render_doc(ckpt.open, renderer=pydoc.plaintext)
    for needle in ("sqlite://", "postgres://", "redis://", "CKPT_STORE"):
        assert needle in text, needle


def test_keyword_options_have_signatures():
    params = inspect.signature(ckpt.Store.job).parameters
    for p in ("name", "lease", "every_items", "every_seconds", "always"):
        assert p in params, p
    params = inspect.signature(ckpt.Queue.run).parameters
    for p in ("handler", "workers", "prefetch"):
        assert p in params, p


def test_the_store_url_is_redacted(tmp_path):
    url = f"sqlite://{tmp_path / 'x.db'}"
    assert ckpt.open(url).url == url


def test_the_store_url_opens_the_same_store(any_store_url):
    # On every store (a PostgreSQL schema, a Redis prefix too): the URL as given, not a
    # description, so it opens the same store again.
    store = ckpt.open(any_store_url)
    assert store.url == any_store_url
    if not any_store_url.startswith("memory:"):
        store.job("j", always=True).checkpoint("here", 1)
        assert ckpt.open(store.url).status("j").cursor == "here"


def test_a_job_made_in_python_is_seen_by_ckpt_status(store_url, ckpt_bin):
    store = ckpt.open(store_url)
    job = store.job("from-python", always=True)
    job.checkpoint({"row": 41}, 41, stage="transform", state={"seen": 3})
    q = store.queue("from-python")
    q.enqueue(["a", "b", "c"])
    (item,) = q.claim(1)
    q.complete(item, {"rows": 1})
    job.release()

    st = cli_json(ckpt_bin, store_url, "status", "from-python", "--json")
    assert st["job"] == "from-python"
    assert st["status"] == "running"
    assert st["cursor"] == {"row": 41}
    assert st["items_processed"] == 41
    assert st["stage"] == "transform"
    assert st["state"] == {"seen": 3}
    assert (st["items"]["completed"], st["items"]["pending"]) == (1, 2)
    jobs = cli_json(ckpt_bin, store_url, "jobs", "--json")
    assert [j["job"] for j in jobs] == ["from-python"]


def test_a_checkpoint_set_by_the_cli_resumes_in_python_and_back(store_url, ckpt_bin):
    cli(ckpt_bin, store_url, "checkpoint", "set", "shared", '{"page": 7}', "--items-processed", "70")
    store = ckpt.open(store_url)
    job = store.job("shared", always=True)
    assert job.resume_cursor() == {"page": 7}
    assert job.resume_items_processed() == 70
    job.checkpoint({"page": 8}, 80)
    job.release()
    got = cli(ckpt_bin, store_url, "checkpoint", "get", "shared").stdout
    assert json.loads(got) == {"page": 8}


def test_status_of_a_job_python_completed(store_url, ckpt_bin):
    store = ckpt.open(store_url)
    job = store.job("done", always=True)
    job.checkpoint(3, 3)
    job.complete()
    assert cli_json(ckpt_bin, store_url, "status", "done", "--json")["status"] == "completed"
    missing = cli(ckpt_bin, store_url, "status", "never-made", "--json", check=False)
    assert missing.returncode != 0


@pytest.mark.parametrize("cls", [ckpt.Store, ckpt.Job, ckpt.Queue])
def test_handles_cannot_be_made_directly(cls):
    with pytest.raises(TypeError):
        cls()


def test_a_closed_store_refuses_its_jobs_and_queues_too(any_store_url):
    with ckpt.open(any_store_url) as store:
        job = store.job("j", always=True)
        q = store.queue("q")
        job.checkpoint(1, 1)
        q.enqueue(["a"])
    # Leaving the with block closed the store.
    for call in (lambda: store.status("j"), lambda: job.checkpoint(2, 2), lambda: q.counts(),
                 lambda: q.enqueue(["b"]), lambda: store.job("k")):
        with pytest.raises(ckpt.StoreError):
            call()


def test_status_carries_the_item_counts_and_heartbeats_keep_leases(store_url):
    store = ckpt.open(store_url)
    q = store.queue("q", lease=30)
    q.enqueue(["a", "b", "c"])
    items = q.claim(2)
    q.heartbeat(items)
    q.complete(items[0])
    q.fail(items[1], "ValueError: no")
    job = store.job("q", lease=30)
    job.heartbeat()
    info = store.status("q")
    c = info.counts
    assert (c.pending, c.running, c.completed, c.failed, c.dead) == (1, 0, 1, 1, 0)
    failed = q.items(status="failed")
    assert [r.key for r in failed] == [items[1].key]
    assert failed[0].last_error == "ValueError: no"
    assert failed[0].last_output is None


def test_ckpt_serve_shows_a_python_job_as_it_runs(store_url, ckpt_bin):
    import re
    import subprocess
    import urllib.request

    store = ckpt.open(store_url)
    job = store.job("served", always=True)
    job.checkpoint({"page": 1}, 10)
    serve = subprocess.Popen([ckpt_bin, "--store", store_url, "serve", "--listen", "127.0.0.1:0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = None
        for line in serve.stderr:  # its log says where it listens
            m = re.search(r"listening on (http://\S+?)/? ", line)
            if m:
                base = m.group(1)
                break
        assert base, "ckpt serve did not say where it listens"

        def get(path):
            with urllib.request.urlopen(base + path, timeout=10) as r:
                return json.loads(r.read())

        assert get("/api/jobs/served")["cursor"] == {"page": 1}
        job.checkpoint({"page": 2}, 20)  # the running job's next save shows at once
        got = get("/api/jobs/served")
        assert (got["cursor"], got["items_processed"], got["status"]) == ({"page": 2}, 20, "running")
    finally:
        serve.terminate()
        serve.wait(timeout=30)
