"""Type stubs for the native module ``ckpt._ckpt`` (PyO3). Import from ``ckpt``."""

from types import TracebackType
from typing import Any, Callable, Iterable, Literal, Mapping, Optional, Sequence, Tuple, Type, Union

JSON = Any
"""Anything JSON can hold: None, bool, int, float (finite), str, list/tuple, dict with str keys."""

__version__: str

# ---------------------------------------------------------------- errors
class Error(Exception):
    """Base of every error ckpt raises. ``str(e)`` is the same line the CLI prints (passwords redacted)."""

class BusyError(Error):
    """A live worker holds the job, or the store is locked; try later."""

class FencedError(Error):
    """This worker's lease was lost (taken over, or could not be renewed in time): stop; nothing was written."""

class NotFoundError(Error):
    """The named job or item does not exist."""

class InvalidInputError(Error):
    """Input that can never succeed: a bad job name or key, a cursor/state/payload that is not JSON,
    a value over its size limit. Nothing was written."""

class StoreError(Error):
    """The store failed or cannot be used: unreachable, corrupt, not a ckpt store, newer schema,
    opened before a ``fork`` (open a new one in the child)."""

# ---------------------------------------------------------------- opening
def open(url: Optional[str] = None) -> Store:
    """Opens (creating if needed) the store at ``url``: ``sqlite://PATH``, ``postgres://...``,
    ``redis://...`` or ``memory://``. ``None`` reads ``CKPT_STORE``, else ``sqlite://ckpt.db``
    (the same default as the ``ckpt`` CLI). Raises StoreError when the store cannot be opened:
    a bad URL, unreachable, wrong password, corrupt, not a ckpt store, a newer schema (the CLI's
    "cannot open store" line)."""

class Store:
    """An open store, shared by threads. Not usable in a child after ``os.fork()``: open another."""
    @property
    def url(self) -> str:
        """The store's URL with any password redacted."""
    def job(
        self,
        name: str,
        *,
        lease: float = 60.0,
        every_items: Optional[int] = None,
        every_seconds: Optional[float] = None,
        always: bool = False,
        target_overhead: float = 0.01,
        max_interval: float = 30.0,
    ) -> Job:
        """Acquires the job's lease (creating the job if new). Policy: ``always=True`` saves every
        call; ``every_items``/``every_seconds`` save when either many items or that much time passed;
        otherwise adaptive (saves cost at most ``target_overhead`` of the run, at least one save per
        ``max_interval`` s). Raises BusyError if a live worker holds it."""
    def queue(
        self,
        name: str,
        *,
        lease: float = 30.0,
        max_attempts: int = 3,
        backoff: float = 5.0,
        backoff_factor: float = 2.0,
        max_backoff: float = 300.0,
        jitter: float = 0.2,
    ) -> Queue:
        """A handle on the job's work items (the claim pattern), acting as this process's worker."""
    def status(self, name: str) -> Optional[JobInfo]:
        """The job's record (status, checkpoint, item counts), or None for an unknown job."""
    def close(self) -> None:
        """Refuses further use of this store and of the jobs and queues made from it (StoreError);
        its connections close once the last of them is gone. Optional: garbage collection closes too."""
    def __enter__(self) -> Store: ...
    def __exit__(self, et: Optional[Type[BaseException]], ev: Optional[BaseException], tb: Optional[TracebackType]) -> Literal[False]: ...

class JobInfo:
    name: str
    status: Literal["running", "completed", "failed"]
    owner: Optional[str]
    cursor: JSON
    items_processed: Optional[int]
    stage: Optional[str]
    state: JSON
    saves: int
    counts: Optional[ItemCounts]
    last_error: Optional[str]

# ---------------------------------------------------------------- cursor pattern
class HistoryEntry:
    """One saved checkpoint in a job's bounded history."""
    seq: int
    """1 for the job's first save."""
    cursor: JSON
    items_processed: int
    saved_at: float
    """Unix time in seconds."""

class Job:
    """A job held by this worker (the cursor pattern). Use from one thread at a time.

    Every write is fenced: once another worker took the job over, the next write raises
    FencedError and writes nothing, and every later call of this handle raises it too.

    As a context manager: leaving the block by an exception flushes the last checkpoint and
    releases the lease (the job stays resumable) and re-raises; leaving it normally without
    ``complete()``/``fail()``/``release()`` flushes and releases too. Dropping a Job without
    finishing leaves its lease to expire, like a crash."""
    @property
    def name(self) -> str: ...
    @property
    def taken_over_from(self) -> Optional[str]:
        """The worker this one took the job over from (its lease had lapsed or its process died)."""
    @property
    def was_completed(self) -> bool:
        """True if the job had been completed before this acquire."""
    def resume_cursor(self) -> JSON:
        """The cursor of the stored checkpoint, None when there is none."""
    def resume_state(self) -> JSON:
        """The state of the stored checkpoint, None when there is none."""
    def resume_stage(self) -> Optional[str]: ...
    def resume_items_processed(self) -> int:
        """Items processed per the stored checkpoint (0 when none)."""
    def checkpoint(
        self,
        cursor: JSON,
        items_processed: Optional[int] = None,
        *,
        stage: Optional[str] = None,
        state: JSON = None,
    ) -> bool:
        """Records progress; persists it when the policy says a save is due; returns whether it saved.
        Cheap when no save is due. Mutable values (dict, list) are captured at the call.
        ``items_processed`` defaults to the previous value + 1. Raises InvalidInputError (not JSON,
        state over the size limit, items_processed out of range) and TypeError (a wrong type) at
        the call, whether or not a save is due, with nothing written; FencedError when the lease
        is lost."""
    def is_due(self, items_processed: int) -> bool:
        """Whether a checkpoint with that count would be saved now (build costly state only then)."""
    def flush(self) -> None:
        """Persists the latest recorded checkpoint now; if the store is unreachable or busy, it stays recorded and a retry saves it."""
    def heartbeat(self) -> None:
        """Renews the lease if a third of it has passed; for items longer than the lease."""
    def history(self, limit: int = 100) -> list[HistoryEntry]:
        """Saved checkpoints, newest first (bounded by the store's history limit)."""
    def complete(self) -> None:
        """Flushes and marks the job completed."""
    def fail(self, error: str) -> None:
        """Flushes and marks the job failed; the checkpoint is kept for a resume."""
    def release(self) -> None:
        """Flushes and gives the lease up; the job stays running for another worker to resume."""
    def __enter__(self) -> Job: ...
    def __exit__(self, et: Optional[Type[BaseException]], ev: Optional[BaseException], tb: Optional[TracebackType]) -> Literal[False]: ...

# ---------------------------------------------------------------- claim pattern
class ItemCounts:
    pending: int
    running: int
    completed: int
    failed: int
    dead: int

class EnqueueReport:
    inserted: int
    existing: int

class Item:
    """A claimed item. Valid while its lease is held."""
    @property
    def key(self) -> str: ...
    @property
    def payload(self) -> JSON: ...
    @property
    def attempt(self) -> int:
        """1 for the first attempt."""
    @property
    def cursor(self) -> JSON:
        """The per-item cursor an earlier attempt saved (resume inside a big item), or None."""
    def save_cursor(self, cursor: JSON) -> None:
        """Saves a per-item cursor, fenced (FencedError if the lease was lost)."""

class ItemRecord:
    key: str
    status: Literal["pending", "running", "completed", "failed", "dead"]
    attempts: int
    payload: JSON
    stats: JSON
    last_error: Optional[str]
    last_output: Optional[str]
    owner: Optional[str]

class RunReport:
    completed: int
    failed: int
    dead: int
    released: int
    lost: int
    stopped: bool
    signal: Optional[int]
    """The signal (SIGTERM=15, SIGINT=2, SIGHUP=1) that stopped the run, if any."""

class Retry:
    """What ``Queue.fail`` decided."""
    dead: bool
    retry_at: Optional[float]

class Queue:
    """One worker's handle on a job's work items. Shared by threads."""
    @property
    def name(self) -> str: ...
    @property
    def owner(self) -> str: ...
    def enqueue(
        self,
        items: Union[Iterable[str], Iterable[Tuple[str, JSON]], Mapping[str, JSON]],
    ) -> EnqueueReport:
        """Adds items in one transaction: keys, ``(key, payload)`` pairs, or a ``{key: payload}``
        dict. Idempotent per key (an existing key is left as it is)."""
    def run(
        self,
        handler: Callable[[Item], Optional[Mapping[str, JSON]]],
        *,
        workers: int = 1,
        prefetch: Optional[int] = None,
    ) -> RunReport:
        """Runs ``handler(item)`` on ``workers`` threads until no item is left. Returning completes
        the item, keeping a returned dict of JSON values as its stats (any other value is dropped,
        with a warning once per run); raising fails it (``Type: message`` becomes its error),
        retried with backoff then dead. An ``async def`` or generator handler (nothing of it would
        run) raises ``TypeError``; a run of this job from inside its own handlers raises
        ``InvalidInputError``. On SIGTERM/SIGINT/SIGHUP (when called from the main thread; SIGHUP
        only if its handler is the default) it stops claiming, lets running handlers finish, gives
        unstarted items back and returns with ``stopped`` set; a second SIGTERM or SIGINT ends the
        process (after a SIGHUP, the first is the stop's reason). Store errors raise. At most
        ``prefetch`` items are claimed ahead of the workers (default: twice the workers, at least 8,
        as ``ckpt run``); slow handlers get one, so other processes get their share."""
    def claim(self, max: int = 1) -> list[Item]:
        """Claims up to ``max`` ready items (started now)."""
    def complete(self, item: Item, stats: Optional[Mapping[str, JSON]] = None) -> None: ...
    def fail(self, item: Item, error: str) -> Retry: ...
    def release(self, item: Item) -> None:
        """Gives the item back unfinished: pending again, no attempt counted."""
    def heartbeat(self, items: Sequence[Item]) -> None:
        """Renews the items' leases (for work longer than the lease)."""
    def counts(self) -> ItemCounts: ...
    def items(self, status: Optional[str] = None, limit: int = 1000) -> list[ItemRecord]: ...
    def retry_dead(self, keys: Optional[Sequence[str]] = None) -> int:
        """Moves dead items (all, or those keys) back to pending; returns how many."""
