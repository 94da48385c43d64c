"""A queue worker for the multi-process tests: writes LEDGER.ready once its store is open, waits
for GO to exist, then runs the queue with
WORKERS threads; the handler appends each key to LEDGER. Prints the RunReport as JSON.

With OTHER (the other process's ledger), each handler waits until the other process has started
an item too, so that both processes certainly take part.

usage: queue_worker.py URL JOB LEDGER GO WORKERS [OTHER]
"""

import json
import os
import sys
import threading
import time

import ckpt

url, name, ledger, go, workers = sys.argv[1:6]
other = sys.argv[6] if len(sys.argv) > 6 else None
store = ckpt.open(url)
queue = store.queue(name)
open(ledger + ".ready", "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
lock = threading.Lock()
f = open(ledger, "a")


def handler(item):
    with lock:
        f.write(item.key + "\n")
        f.flush()
    deadline = time.monotonic() + 60
    while other and not (os.path.exists(other) and os.path.getsize(other) > 0):
        if time.monotonic() > deadline:
            raise RuntimeError("the other process never started an item")
        time.sleep(0.005)
    time.sleep(0.001)  # some work, so that the two processes interleave
    return {"by": os.getpid()}


report = queue.run(handler, workers=int(workers))
f.close()
print(json.dumps({k: getattr(report, k) for k in ("completed", "failed", "dead", "released", "lost", "stopped", "signal")}))
