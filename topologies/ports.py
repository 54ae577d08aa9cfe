"""Local TCP ports and a hand-rolled Kafka readiness probe (no client library involved)."""

from __future__ import annotations

import socket
import struct


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (another process may still grab it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option the broker's listener uses, so TIME_WAIT leftovers don't count as busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def metadata_probe(host: str, port: int, timeout_s: float = 1.0) -> int:
    """Send one Kafka Metadata (v1) request; return the number of brokers in the answer.

    Hand-rolled so that readiness does not depend on a client library's own retry logic.
    Raises OSError or ValueError if the broker does not answer properly.
    """
    client_id = b"feedback-stream-probe"
    correlation_id = 0x5EED
    # header: api_key=3 (Metadata), api_version=1, correlation_id, client_id;
    # body: topics=null (-1) -> "all topics", which every version-1 broker must answer.
    request = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id
    request += struct.pack(">i", -1)
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        payload = _recv_exact(sock, size)
    got_id, n_brokers = struct.unpack(">ii", payload[:8])
    if got_id != correlation_id:
        raise ValueError(f"metadata answer has correlation id {got_id}, sent {correlation_id}")
    if n_brokers < 1:
        raise ValueError("metadata answer lists no brokers")
    return int(n_brokers)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection mid-answer")
        chunks += chunk
    return bytes(chunks)
