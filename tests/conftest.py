"""Shared fixtures: one embedded broker per test session, unique topic names per test, and
``feedback-stream`` commands run in-process.

The memory broker keeps every topic until it stops (RSS grows with each run), so tests share
one broker and keep their data apart by topic name instead of restarting it.
"""

from __future__ import annotations

import gc
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# `pytest` (unlike `python -m pytest`) does not put the repo root on sys.path.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from topologies.broker import BrokerError, EmbeddedBroker  # noqa: E402

# Shared checkers assert behaviour too; pytest rewrites the asserts of test modules only unless
# told, and a failing plain assert would not show the values it compared.
pytest.register_assert_rewrite("tests.rewrite_chains")


def pytest_configure(config: pytest.Config) -> None:
    """The collector runs every 10,000 net allocations instead of CPython's 700 (and scans the
    older generations less often): the tests keep large streams, replays and worker copies
    alive in module fixtures, and at the default thresholds rescanning them was ~9% of the
    core suite's CPU (a third of that at these). Garbage cycles are still collected, only
    later."""
    gc.set_threshold(10_000, 50, 100)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported (scipy, river, Faust, Hypothesis...) stays for the whole run:
    out of every full collection from here on (~3% of the core suite's CPU, as the replay
    command does for its own start-up objects). Then Prometheus starts scraping in the
    background if the run has its test (``scraped_metrics``)."""
    gc.collect()
    gc.freeze()
    # An xdist worker may not get the test: there it starts when (and if) the test runs.
    if not hasattr(session.config, "workerinput") and any(
            "scraped_metrics" in getattr(item, "fixturenames", ()) for item in session.items):
        _BACKGROUND.append(ScrapedMetrics())


def pytest_sessionfinish() -> None:
    while _BACKGROUND:  # started but its test never ran (-x, a keyboard interrupt)
        _BACKGROUND.pop().close()


class ScrapedMetrics:
    """A real Prometheus scraping a loopback port, started in a thread, and
    ``tests.prom.exercised_metrics`` served on that port once a test asks (``wait``).

    Prometheus scrapes first ~5 s after it starts (its target discovery sends the first
    targets then): started early, that is wall time the test does not wait. Until the test,
    the port is only bound (no listening socket: each scrape is refused at no cost to this
    process), so the metrics are served, and scraped every 500 ms, only during the test."""

    def __init__(self) -> None:
        self.base, self.error, self.server = "", None, None
        self.ready, self.done = threading.Event(), threading.Event()
        self.port = socket.socket()
        self.port.bind(("127.0.0.1", 0))
        self.tmp = tempfile.mkdtemp(prefix="prometheus-")
        self.thread = threading.Thread(target=self.run, name="prometheus", daemon=True)
        self.thread.start()

    def run(self) -> None:
        from tests.prom import prometheus_scraping

        target = f"127.0.0.1:{self.port.getsockname()[1]}"
        try:
            # Ready once Prometheus has tried two scrapes (refused ones count: up is 0).
            with prometheus_scraping(target, Path(self.tmp)) as base:
                self.base = base
                self.ready.set()
                self.done.wait()
        except BaseException as exc:  # pytest.fail and asserts too: raised again in the test
            self.error = exc
        finally:
            self.ready.set()

    def wait(self) -> str:
        """Prometheus's base URL once it has scraped the served metrics twice (``rate()`` needs
        two samples)."""
        from tests.prom import exercised_metrics, query

        assert self.ready.wait(timeout=180), "Prometheus did not scrape in 180 s"
        if self.error is not None:
            raise self.error
        port = self.port.getsockname()[1]
        self.port.close()  # the server binds the port again at once
        self.server = exercised_metrics().start_http_server(port)
        deadline = time.monotonic() + 120
        while True:
            result = query(self.base, "sum_over_time(up[1m])")["data"]["result"]
            if result and float(result[0]["value"][1]) >= 2:
                return self.base
            assert time.monotonic() < deadline, "Prometheus did not scrape the metrics in 120 s"
            time.sleep(0.1)

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=60)
        self.port.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        shutil.rmtree(self.tmp, ignore_errors=True)


_BACKGROUND: list[ScrapedMetrics] = []


@pytest.fixture
def scraped_metrics() -> Iterator[str]:
    """Base URL of a Prometheus that has scraped ``exercised_metrics`` twice (and goes on
    scraping them every 500 ms until the test ends): Prometheus started after collection if
    the run has a test using it."""
    scrape = _BACKGROUND.pop() if _BACKGROUND else ScrapedMetrics()
    try:
        yield scrape.wait()
    finally:
        scrape.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that takes the broker fixture without the ``kafka`` marker would run in the core
    suite (``-m "not kafka"``) and start a broker there: refuse it at collection."""
    unmarked = [item.nodeid for item in items if "broker" in getattr(item, "fixturenames", ())
                and not item.get_closest_marker("kafka")]
    if unmarked:
        raise pytest.UsageError("tests using the broker need @pytest.mark.kafka: "
                                + ", ".join(unmarked))


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A running tansu broker for the whole session; failing to start fails the tests."""
    embedded = EmbeddedBroker()
    try:
        embedded.start()
    except BrokerError as exc:
        # Deliberately not a skip: without the broker the Kafka side is simply untested.
        pytest.fail(f"the embedded Kafka broker did not start: {exc}", pytrace=False)
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_topic("input")`` -> a topic name no other test (or run) uses."""
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80].strip("-")

    def make(label: str = "t") -> str:
        return f"{label}-{test}-{uuid.uuid4().hex[:8]}"

    return make


RunCli = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> RunCli:
    """``run_cli(*args, env={...})``: ``feedback-stream ARGS`` through ``main`` in this process
    (cwd the repo root, ``env`` added to the environment) as a CompletedProcess: what the
    command does, without a child interpreter's ~2 s of start-up and imports."""
    from topologies.cli import main

    monkeypatch.chdir(_ROOT)

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        # replay freezes its process's start-up objects; here that would be the test run's
        # heap of the moment, never collected again (the run froze its own after collection).
        monkeypatch.setattr(gc, "freeze", lambda: None)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out.encode(), err.encode())

    return run
