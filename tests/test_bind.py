"""The worker's HTTP views and /metrics listen on 127.0.0.1 unless FEEDBACK_STREAM_WEB_BIND
says otherwise: checked on the sockets of running worker processes (Linux /proc)."""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import time
import uuid
from pathlib import Path

import pytest

from topologies.ports import free_port
from topologies.runner import WorkerProcess, demo_settings, prepare_topics

pytestmark = pytest.mark.kafka


def listening_addresses(pid: int, port: int) -> set[str]:
    """IPv4/IPv6 addresses that process ``pid`` listens on at TCP ``port``."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            address, port_hex = local.split(":")
            if state != "0A" or inode not in inodes or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # /proc prints the address as host-order 32-bit words
            raw = b"".join(struct.pack("<I", w) for w in struct.unpack(f">{len(raw) // 4}I", raw))
            found.add(socket.inet_ntop(family, raw))
    return found


def test_worker_http_binds_loopback_unless_configured(broker, tmp_path: Path) -> None:
    uid = f"bind-{uuid.uuid4().hex[:6]}"
    base = demo_settings(broker.bootstrap, app_id=f"fs-{uid}", input_topic=f"in-{uid}",
                         topic_prefix=f"{uid}.")
    prepare_topics(base)
    configured = dataclasses.replace(base, web_port=free_port(), web_bind="0.0.0.0",
                                     app_id=f"fs-{uid}-any", state_dir=str(tmp_path))
    assert base.web_bind == "127.0.0.1"  # the default, not set by the test
    with WorkerProcess(base) as default, WorkerProcess(configured) as anywhere:
        seen: dict[str, set[str]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(seen) < 2:
            for name, worker, settings in (("default", default, base),
                                           ("configured", anywhere, configured)):
                assert worker.alive(), worker.log_tail()
                addresses = listening_addresses(worker.proc.pid, settings.web_port)
                if addresses:
                    seen[name] = addresses
            time.sleep(0.2)
    assert seen.get("default") == {"127.0.0.1"}, seen
    assert seen.get("configured") == {"0.0.0.0"}, seen
