"""Leaves ckpt work running in a daemon thread and lets the main thread end: the interpreter
exits while the thread is inside a ckpt call without the GIL. Before the exit hook, taking the
GIL back then aborted the process ("FATAL: exception not rethrown", exit 134).

usage: exit_in_daemon.py URL JOB run|calls HANDLER_SECONDS
  run:   the thread is in queue.run(), 4 workers, each item taking HANDLER_SECONDS
  calls: the thread claims and completes items one by one, in a loop
"""

import sys
import threading
import time

import ckpt

url, name, mode, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
queue = ckpt.open(url).queue(name)
queue.enqueue([f"k{i:03}" for i in range(200)])


def run():
    queue.run(lambda item: time.sleep(seconds), workers=4)


def calls():
    while True:
        for item in queue.claim(1):
            time.sleep(seconds)
            queue.complete(item)


threading.Thread(target=run if mode == "run" else calls, daemon=True).start()
time.sleep(0.2)
print("main thread ends", flush=True)
