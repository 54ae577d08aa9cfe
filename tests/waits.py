"""Waiting in tests: every wait is a condition with a generous limit, never a fixed sleep.

Limits only bound a hang; a passing run waits as long as the condition takes. They are
generous because the suite also runs on a loaded 2-core machine (several workers, brokers
and CPU-heavy neighbours at once), where a step that takes 2 s idle can take 20.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

import pytest

from topologies.runner import WorkerProcess

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], limit_s: float, what: str,
               worker: WorkerProcess | None = None, every_s: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail with
    ``what`` (and the worker's log tail) after ``limit_s`` or when ``worker`` died."""
    deadline = time.monotonic() + limit_s
    while True:
        value = predicate()
        if value:
            return value
        if worker is not None and not worker.alive():
            pytest.fail(f"worker exited ({worker.proc.returncode}) while waiting for {what}:\n"
                        f"{worker.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {limit_s:.0f} s waiting for {what}" +
                        (f"\n{worker.log_tail()}" if worker is not None else ""))
        time.sleep(every_s)


def last_assignment(worker: WorkerProcess) -> list[int] | None:
    """The input partitions of the worker's latest assignment (None before its first)."""
    found = re.findall(r"assigned input partitions: \[([\d, ]*)\]",
                       worker.log_path.read_text(errors="replace"))
    if not found:
        return None
    return [int(p) for p in found[-1].split(",") if p.strip()]


def scrape(port: int) -> str:
    """The worker's /metrics text ("" while it does not answer yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def metrics_matching(port: int, pattern: re.Pattern[str]) -> str:
    """The worker's /metrics text if ``pattern`` occurs in it, else ""."""
    text = scrape(port)
    return text if pattern.search(text) else ""
