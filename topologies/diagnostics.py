"""Where a running worker waits: ``kill -USR1 <pid>`` writes every asyncio task's stack and
every thread's stack to stderr (the worker's log).

A worker that stops making progress without an error (its ``progress:`` log line stops
changing while input waits) shows here which await holds it: a produce that is never
acknowledged, a commit, a lock, Faust's flow control.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import signal
import sys


def dump_tasks(out: io.TextIOBase | None = None) -> None:
    """Write the stack of every task of the running loop, then of every thread."""
    stream = out or sys.stderr
    tasks = asyncio.all_tasks()
    stream.write(f"--- {len(tasks)} asyncio tasks ---\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        buffer = io.StringIO()
        task.print_stack(limit=12, file=buffer)
        stream.write(buffer.getvalue())
    stream.write("--- threads ---\n")
    stream.flush()
    if stream is sys.stderr:
        faulthandler.dump_traceback(all_threads=True)
    stream.flush()


def install_task_dump(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Dump on SIGUSR1 (idempotent; a no-op where the loop cannot take signal handlers)."""
    loop = loop or asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
