"""A cursor loop for the SIGKILL test: processes items 0..N-1, appending each to OUT, and saves
a checkpoint after every item (always=True). With PAUSE_AT >= 0 it writes READY after saving
the checkpoint past item PAUSE_AT, then blocks until killed.

usage: cursor_loop.py URL JOB N OUT READY PAUSE_AT
"""

import os
import sys
import time

import ckpt

url, name, n, out, ready, pause_at = sys.argv[1:7]
n, pause_at = int(n), int(pause_at)

store = ckpt.open(url)
job = store.job(name, always=True)
start = job.resume_cursor() or 0
state = job.resume_state() or {"sum": 0}
print(f"resumed from {start}", flush=True)
with open(out, "a") as f:
    for i in range(start, n):
        f.write(f"{i}\n")
        f.flush()
        os.fsync(f.fileno())
        state["sum"] += i
        assert job.checkpoint(i + 1, items_processed=i + 1, state=state)
        if i == pause_at:
            with open(ready, "w") as r:
                r.write("ready")
            while True:  # wait for SIGKILL
                time.sleep(60)
job.complete()
print("done", flush=True)
