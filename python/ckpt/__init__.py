"""ckpt: durable checkpoint & resume for long-running batch work.

Two kinds of durable progress in one store, shared with the ``ckpt`` CLI:

* the cursor pattern, ``store.job(name)``: a loop saves where it is and resumes there after a crash;
* the claim pattern, ``store.queue(name)``: workers share a list of items, each run by exactly one
  live worker at a time, with leases, retries with backoff and a dead-letter list.

    import ckpt
    store = ckpt.open("sqlite://ckpt.db")
    with store.job("import-users") as job:
        for i in range(job.resume_cursor() or 0, n):
            ...
            job.checkpoint(i + 1, items_processed=i + 1)
        job.complete()

See docs/PYTHON.md in the repository.
"""

from ._ckpt import (  # noqa: F401
    BusyError,
    EnqueueReport,
    Error,
    FencedError,
    HistoryEntry,
    InvalidInputError,
    Item,
    ItemCounts,
    ItemRecord,
    Job,
    JobInfo,
    NotFoundError,
    Queue,
    Retry,
    RunReport,
    Store,
    StoreError,
    __version__,
    open,
)

__all__ = [
    "open",
    "Store",
    "Job",
    "HistoryEntry",
    "JobInfo",
    "Queue",
    "Item",
    "ItemRecord",
    "ItemCounts",
    "EnqueueReport",
    "RunReport",
    "Retry",
    "Error",
    "BusyError",
    "FencedError",
    "NotFoundError",
    "InvalidInputError",
    "StoreError",
    "__version__",
]
