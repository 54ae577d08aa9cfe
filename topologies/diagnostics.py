"""Where a running worker waits: ``kill -USR1 <pid>`` writes, for every asyncio task of every
event loop in the process (the worker's and the Kafka consumer thread's), the chain of awaits
it is suspended in, then every thread's stack, to stderr (the worker's log).

A worker that stops making progress without an error (its ``progress:`` log line stops
changing while input waits) shows here which await holds it: a produce that is never
acknowledged, a commit, a lock, Faust's flow control.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, TextIO


def await_chain(coro: Any, limit: int = 40) -> list[str]:
    """``file:line function`` of each coroutine (or generator) ``coro`` awaits, outermost
    first, and what the innermost one waits for (a future, a task)."""
    lines: list[str] = []
    while coro is not None and len(lines) < limit:
        frame = (getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
                 or getattr(coro, "ag_frame", None))
        if frame is None:
            lines.append(f"waits for {coro!r}"[:300])
            break
        lines.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = (getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                or getattr(coro, "ag_await", None))
    return lines


def event_loops() -> list[asyncio.AbstractEventLoop]:
    """The running loop and the loops of service threads (``mode`` runs Faust's consumer in
    a thread with a loop of its own, ``thread.service.thread_loop``)."""
    loops: list[asyncio.AbstractEventLoop] = []
    with contextlib.suppress(RuntimeError):
        loops.append(asyncio.get_running_loop())
    for thread in threading.enumerate():
        loop = getattr(getattr(thread, "service", None), "thread_loop", None)
        if isinstance(loop, asyncio.AbstractEventLoop) and loop not in loops:
            loops.append(loop)
    return [loop for loop in loops if not loop.is_closed()]


_reporters: list[Callable[[], str]] = []
"""Extra state written first (e.g. the Faust consumer's partition sets)."""


def dump_tasks(out: TextIO | None = None) -> None:
    """Write the registered reports, the await chain of every task of every loop, then every
    thread's stack."""
    stream = out or sys.__stderr__ or sys.stderr
    for report in _reporters:
        try:
            stream.write(f"--- {report.__doc__ or report.__name__} ---\n{report()}\n")
        except Exception as exc:  # a diagnostic must not fail the dump
            stream.write(f"--- {report.__name__} failed: {exc!r} ---\n")
    for loop in event_loops():
        try:
            tasks = list(asyncio.all_tasks(loop))
        except RuntimeError:  # another thread changed the set meanwhile: try once more
            tasks = list(asyncio.all_tasks(loop))
        stream.write(f"--- event loop {id(loop):#x}: {len(tasks)} tasks ---\n")
        for task in sorted(tasks, key=lambda t: t.get_name()):
            stream.write(f"task {task.get_name()}:\n")
            for line in await_chain(task.get_coro()):
                stream.write(f"    {line}\n")
    names = {t.ident: t.name for t in threading.enumerate()}
    stream.write("--- threads ---\n")
    for ident, frame in sys._current_frames().items():
        stream.write(f"thread {names.get(ident, ident)}:\n")
        stream.write("".join(traceback.format_stack(frame, limit=15)))
    stream.flush()


def install_task_dump(loop: asyncio.AbstractEventLoop | None = None,
                      *reporters: Callable[[], str]) -> None:
    """Dump on SIGUSR1 (a no-op where the loop cannot take signal handlers), starting with
    what ``reporters`` return."""
    _reporters[:] = reporters
    loop = loop or asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
