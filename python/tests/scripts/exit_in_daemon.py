"""Leaves ckpt work running in a daemon thread and lets the main thread end: the interpreter
exits while the thread is inside a ckpt call without the GIL. Before the exit hook, taking the
GIL back then aborted the process ("FATAL: exception not rethrown", exit 134).

usage: exit_in_daemon.py URL JOB MODE HANDLER_SECONDS
  run:    the thread is in queue.run() (4 workers, max_attempts=1), each item taking
          HANDLER_SECONDS and then saving its cursor; the main thread ends once 4 handlers
          have started
  calls:  the thread claims and completes items one by one, in a loop
  fork:   as run, then the process forks and the child exits at once (the parent's calls in
          progress are not the child's to wait for)
"""

import os
import sys
import threading
import time

import ckpt

url, name, mode, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
queue = ckpt.open(url).queue(name, max_attempts=1)
queue.enqueue([f"k{i:03}" for i in range(200)])
started = []


def handler(item):
    started.append(item.key)
    time.sleep(seconds)
    item.save_cursor({"done": True})


def run():
    queue.run(handler, workers=4)


def calls():
    while True:
        for item in queue.claim(1):
            started.append(item.key)
            time.sleep(seconds)
            queue.complete(item)


threading.Thread(target=calls if mode == "calls" else run, daemon=True).start()
deadline = time.monotonic() + 30
while len(started) < 4 and time.monotonic() < deadline:
    time.sleep(0.01)
if mode == "fork":
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # the child: its exit must not wait for the parent's run
    _, status = os.waitpid(pid, 0)
    print("child exit status", os.waitstatus_to_exitcode(status), flush=True)
print("main thread ends", flush=True)
