"""Fixtures of the ckpt Python tests.

Stores: ``store_url`` runs a test on every store several processes can share (SQLite file,
PostgreSQL, Redis); ``any_store_url`` adds ``memory://`` for tests within one store handle.
A server that is not reachable skips its cases with the reason, unless
``CKPT_REQUIRE_SERVICES=1`` (as in CI), when they fail. PostgreSQL cases get a schema of their
own and Redis cases a key prefix of their own, both deleted afterwards, as the Rust tests do.
No database driver is needed: the little PostgreSQL and Redis clients below speak just enough
of each protocol to check the server is there and to clean up.
"""

import json
import os
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

REQUIRE = os.environ.get("CKPT_REQUIRE_SERVICES") == "1"
PG_BASE = os.environ.get("CKPT_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_BASE = os.environ.get("CKPT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def unavailable(why):
    """Skips the test, or fails it when the services are required."""
    if REQUIRE:
        pytest.fail(f"CKPT_REQUIRE_SERVICES=1 but {why}")
    pytest.skip(why)


# ---------------------------------------------------------------- a minimal PostgreSQL client
def _pg_recv(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("PostgreSQL closed the connection")
        buf += chunk
    return buf


def _pg_until_ready(sock):
    error = None
    while True:
        kind = _pg_recv(sock, 1)
        (length,) = struct.unpack("!I", _pg_recv(sock, 4))
        body = _pg_recv(sock, length - 4)
        if kind == b"R" and struct.unpack("!I", body[:4])[0] != 0:
            raise ConnectionError("PostgreSQL wants a password (the tests expect trust auth)")
        if kind == b"E":
            error = body.replace(b"\0", b" ").decode(errors="replace")
        if kind == b"Z":
            if error:
                raise RuntimeError(f"PostgreSQL: {error}")
            return


def pg_execute(sql, base=PG_BASE):
    """Runs ``sql`` on the server of ``base`` (trust auth)."""
    u = urlparse(base)
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 5432), timeout=10) as s:
        params = b"user\0" + (u.username or "postgres").encode() + b"\0"
        params += b"database\0" + (u.path.lstrip("/") or "postgres").encode() + b"\0\0"
        s.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
        _pg_until_ready(s)
        q = sql.encode() + b"\0"
        s.sendall(b"Q" + struct.pack("!I", 4 + len(q)) + q)
        _pg_until_ready(s)
        s.sendall(b"X" + struct.pack("!I", 4))


# ---------------------------------------------------------------- a minimal Redis client
def _resp_read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(f"Redis: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError(f"Redis: unexpected reply {line!r}")


class Redis:
    def __init__(self, base=REDIS_BASE):
        u = urlparse(base)
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=10)
        self.f = self.sock.makefile("rb")
        db = (u.path or "/0").lstrip("/") or "0"
        self.cmd("SELECT", db)

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return _resp_read(self.f)

    def keys(self, pattern):
        cursor, found = "0", []
        while True:
            cursor, batch = self.cmd("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            found += batch
            if cursor == "0":
                return found

    def close(self):
        self.f.close()
        self.sock.close()


# ---------------------------------------------------------------- store fixtures
_reachable = {}


def _check(kind):
    if kind not in _reachable:
        try:
            if kind == "postgres":
                pg_execute("SELECT 1")
            else:
                Redis().close()
            _reachable[kind] = None
        except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
            _reachable[kind] = f"{kind} is not reachable ({e})"
    if _reachable[kind]:
        unavailable(_reachable[kind])


def _sep(base):
    return "&" if "?" in base else "?"


def make_store_url(kind, tmp_path):
    """A fresh store of ``kind``; a generator: the code after ``yield`` deletes it."""
    tag = uuid.uuid4().hex[:12]
    if kind == "sqlite":
        yield f"sqlite://{tmp_path / f'ckpt-{tag}.db'}"
    elif kind == "memory":
        yield "memory://"
    elif kind == "postgres":
        _check("postgres")
        schema = f"ckpt_py_{tag}"
        yield f"{PG_BASE}{_sep(PG_BASE)}schema={schema}"
        pg_execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    elif kind == "redis":
        _check("redis")
        prefix = f"ckpt_py_{tag}"
        yield f"{REDIS_BASE}{_sep(REDIS_BASE)}prefix={prefix}"
        r = Redis()
        try:
            keys = r.keys(f"{prefix}*")
            for i in range(0, len(keys), 500):
                r.cmd("DEL", *keys[i : i + 500])
        finally:
            r.close()
    else:
        raise ValueError(kind)


SHARED = ["sqlite", "postgres", "redis"]


@pytest.fixture(params=SHARED)
def store_url(request, tmp_path):
    """A store URL several processes (and the ckpt CLI) can share."""
    yield from make_store_url(request.param, tmp_path)


@pytest.fixture(params=SHARED + ["memory"])
def any_store_url(request, tmp_path):
    """A store URL for tests that use one store handle (memory:// included)."""
    yield from make_store_url(request.param, tmp_path)


# ---------------------------------------------------------------- the CLI and child processes
@pytest.fixture
def ckpt_bin():
    """The ``ckpt`` binary (CKPT_BIN, set by crates/ckpt-cli/tests/python.rs)."""
    path = os.environ.get("CKPT_BIN")
    if not path or not os.access(path, os.X_OK):
        unavailable("CKPT_BIN does not name the ckpt binary (run through cargo test)")
    return path


def cli(ckpt_bin, url, *args, check=True):
    """Runs ``ckpt --store URL ARGS...``; returns the CompletedProcess."""
    p = subprocess.run(
        [ckpt_bin, "--store", url, *args], capture_output=True, text=True, timeout=60
    )
    if check and p.returncode != 0:
        raise AssertionError(f"ckpt {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p


def cli_json(ckpt_bin, url, *args):
    return json.loads(cli(ckpt_bin, url, *args).stdout)


def script(name):
    """The path of a helper script in python/tests/scripts."""
    return str(HERE / "scripts" / name)


def spawn(*args, **kw):
    """Starts ``python ARGS...`` with this interpreter (the venv's, where ckpt is installed)."""
    return subprocess.Popen([sys.executable, *map(str, args)], **kw)


def wait_for_file(path, proc, predicate=lambda text: True, timeout=60):
    """Waits until ``path`` exists and its text satisfies ``predicate`` (the child's signal);
    fails at once if the child ``proc`` exits first."""
    import time

    deadline = time.monotonic() + timeout
    path = Path(path)
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if predicate(text):
                return text
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"child exited {proc.returncode} first\n{out}\n{err}")
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {path}")
