"""Runs a queue with many worker threads, then exits at once: the interpreter shuts down right
after queue.run returns, which is when a worker thread's Python thread state, given back late,
would take the GIL from a finalizing interpreter and abort the process.

usage: run_then_exit.py URL JOB
"""

import sys
import time

import ckpt

url, name = sys.argv[1:3]
queue = ckpt.open(url).queue(name)
queue.enqueue([f"k{i}" for i in range(64)])
report = queue.run(lambda item: time.sleep(0.01), workers=64, prefetch=64)
print(report.completed, flush=True)
