"""A queue run for the SIGTERM test: each handler appends "start KEY" to LEDGER, then waits until
GO exists before it returns (so the parent can signal while handlers are running), then appends
"done KEY". Prints the RunReport as JSON.

usage: queue_sigterm.py URL JOB LEDGER GO WORKERS
"""

import json
import os
import sys
import threading
import time

import ckpt

url, name, ledger, go, workers = sys.argv[1:6]
store = ckpt.open(url)
queue = store.queue(name)
lock = threading.Lock()


def log(line):
    with lock:
        with open(ledger, "a") as f:
            f.write(line + "\n")


def handler(item):
    log("start " + item.key)
    while not os.path.exists(go):
        time.sleep(0.005)
    log("done " + item.key)


report = queue.run(handler, workers=int(workers), prefetch=1)
print(json.dumps({k: getattr(report, k) for k in ("completed", "failed", "dead", "released", "lost", "stopped", "signal")}), flush=True)
