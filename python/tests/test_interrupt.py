"""Ctrl-C during a store call that waits on a server that stopped answering."""

import os
import signal
import socket
import threading
import time
from urllib.parse import urlparse

import pytest

import ckpt
from conftest import make_store_url


class StallingProxy:
    """A TCP proxy to ``target`` that can stop passing bytes on (a hung server or network path)."""

    def __init__(self, target):
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.socks += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.flowing.wait()
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        self.closed = True
        self.flowing.set()
        for s in [self.listener, *self.socks]:
            try:
                s.close()
            except OSError:
                pass


def through(url, proxy):
    u = urlparse(url)
    return u._replace(netloc=u.netloc.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{proxy.port}")).geturl()


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_ctrl_c_ends_a_call_waiting_on_a_stalled_server_and_the_checkpoint_stays(kind, tmp_path):
    # Python runs a signal's handler only between bytecodes: without help, Ctrl-C would wait
    # for the blocked call to give up (response_timeout, 60 s by default). The call runs the
    # handlers while it waits, and the KeyboardInterrupt ends it; the checkpoint it carried
    # stays recorded, so a flush once the server answers again saves it.
    urls = make_store_url(kind, tmp_path)
    url = next(urls)
    u = urlparse(url)
    proxy = StallingProxy((u.hostname, u.port))
    try:
        store = ckpt.open(through(url, proxy))
        job = store.job("j", every_items=1000)
        job.checkpoint("first", 1)
        job.flush()
        job.checkpoint("second", 2)
        proxy.flowing.clear()
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
        started = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            job.flush()
        waited = time.monotonic() - started
        timer.join()
        assert waited < 10, f"Ctrl-C took {waited:.1f}s to end the call"
        assert "held" in repr(job), "an interrupted save does not spend the handle"
        proxy.flowing.set()
        job.flush()
        assert ckpt.open(url).status("j").cursor == "second"
        job.complete()
    finally:
        proxy.close()
        next(urls, None)


def flush_through_a_stall_with_sigusr1(tmp_path, on_usr1):
    """Flushes a checkpoint of a Redis store behind a proxy that stalls for 1.5 s, with
    ``on_usr1`` handling the SIGUSR1 sent 0.3 s in; returns when the flush did, after checking
    that the checkpoint was saved. The handler runs while the call waits, not after it."""
    urls = make_store_url("redis", tmp_path)
    url = next(urls)
    u = urlparse(url)
    proxy = StallingProxy((u.hostname, u.port))
    old = signal.signal(signal.SIGUSR1, on_usr1)
    try:
        job = ckpt.open(through(url, proxy)).job("j", every_items=1000)
        job.checkpoint(1, 1)
        proxy.flowing.clear()
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        threading.Timer(1.5, proxy.flowing.set).start()
        job.flush()
        ended = time.monotonic()
        assert ckpt.open(url).status("j").cursor == 1
        job.complete()
        return ended
    finally:
        signal.signal(signal.SIGUSR1, old)
        proxy.close()
        next(urls, None)


def test_a_handler_that_does_not_raise_lets_the_call_go_on(tmp_path):
    # A handler that only records runs while the call waits (not after it), and the call
    # completes normally once the server answers.
    seen = []
    ended = flush_through_a_stall_with_sigusr1(tmp_path, lambda *_: seen.append(time.monotonic()))
    assert len(seen) == 1 and seen[0] < ended - 0.5, (seen, ended)


def test_a_handler_may_call_ckpt_while_the_call_it_interrupts_waits(tmp_path):
    # The handlers run between the waits, outside the store's async runtime: one that
    # itself talks to a server (another store here) works, and the call goes on after it.
    others = make_store_url("redis", tmp_path)
    other = ckpt.open(next(others))
    try:
        other.job("seen", always=True).checkpoint(0, 0)
        seen = []
        flush_through_a_stall_with_sigusr1(
            tmp_path, lambda *_: seen.append(other.status("seen").cursor)
        )
        assert seen == [0]
    finally:
        next(others, None)
