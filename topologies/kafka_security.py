"""Kafka client security options in one neutral vocabulary (the ``Settings`` field names).

``security_protocol``, ``sasl_mechanism``, ``sasl_username``, ``sasl_password``, ``ssl_cafile``:
:func:`security_options` collects them, :func:`security_kwargs` maps them to each client
library's own arguments. Re-exported by ``topologies.kafka_io``.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SECURITY_FIELDS = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
                   "ssl_cafile")
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaIOError(RuntimeError):
    """A Kafka operation of ``topologies.kafka_io`` failed; the message says which and why."""


def security_options(settings: Any = None, **overrides: str) -> dict[str, str]:
    """The non-empty neutral security fields of a ``Settings`` object or a mapping."""
    if settings is None:
        source: Mapping[str, Any] = {}
    elif isinstance(settings, Mapping):
        source = settings
    else:
        source = {name: getattr(settings, name, "") for name in SECURITY_FIELDS}
    unknown = set(overrides) - set(SECURITY_FIELDS)
    if unknown:
        raise TypeError(f"unknown security option(s) {sorted(unknown)}; "
                        f"expected some of {list(SECURITY_FIELDS)}")
    merged = {**{k: source.get(k, "") for k in SECURITY_FIELDS}, **overrides}
    return {k: str(v) for k, v in merged.items() if v}


def _checked(security: Mapping[str, str]) -> dict[str, str]:
    """``**security`` of this module's functions: only the neutral names are accepted."""
    return security_options(None, **security)


def security_kwargs(settings: Any = None, client: str = "kafka-python") -> dict[str, Any]:
    """Map neutral security settings to one client's keyword arguments.

    ``client``: ``"kafka-python"`` (KafkaAdminClient/Consumer/Producer), ``"aiokafka"``
    (which needs an ``ssl_context`` instead of a CA file) or ``"confluent"`` (librdkafka
    config keys). Faust takes aiokafka's arguments wrapped in ``faust.SASLCredentials``.

    >>> security_kwargs({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u",
    ...                  "sasl_password": "p"})["sasl_plain_username"]
    'u'
    >>> security_kwargs({})
    {}
    """
    opts = security_options(settings)
    protocol = opts.get("security_protocol", "PLAINTEXT").upper()
    if protocol not in _PROTOCOLS:
        raise ValueError(f"security_protocol={protocol!r}: expected one of {_PROTOCOLS}")
    sasl = protocol.startswith("SASL_")
    tls = protocol.endswith("SSL")
    mechanism = opts.get("sasl_mechanism", "PLAIN").upper()
    user, password, cafile = (opts.get(k) for k in ("sasl_username", "sasl_password",
                                                      "ssl_cafile"))
    if sasl:
        if mechanism not in _MECHANISMS:
            raise ValueError(f"sasl_mechanism={mechanism!r}: supported are {_MECHANISMS}")
        if not (user and password):
            raise ValueError(f"security_protocol={protocol} needs sasl_username and sasl_password")
    if cafile and not Path(cafile).is_file():
        raise ValueError(f"ssl_cafile={cafile!r} does not exist")
    if protocol == "PLAINTEXT":
        return {}
    if client == "confluent":
        out: dict[str, Any] = {"security.protocol": protocol}
        if sasl:
            out.update({"sasl.mechanism": mechanism, "sasl.username": user,
                        "sasl.password": password})
        if cafile:
            out["ssl.ca.location"] = cafile
        return out
    if client not in ("kafka-python", "aiokafka"):
        raise ValueError(f"client={client!r}: expected kafka-python, aiokafka or confluent")
    out = {"security_protocol": protocol}
    if sasl:
        # Both libraries use the "plain" argument names for SCRAM as well.
        out.update({"sasl_mechanism": mechanism, "sasl_plain_username": user,
                    "sasl_plain_password": password})
    if client == "aiokafka" and tls:
        from aiokafka.helpers import create_ssl_context

        # aiokafka takes no CA file, only a context; without a CA file: the system trust store.
        out["ssl_context"] = create_ssl_context(cafile=cafile or None)
    elif cafile:
        out["ssl_cafile"] = cafile
    return out


_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH (also IP address mismatch)
_checked_tls: set[tuple[str, str]] = set()


def check_tls(bootstrap: str, **security: str) -> None:
    """Raise :class:`KafkaIOError` with a one-line reason if a bootstrap server's TLS
    certificate does not verify with these settings (no-op for PLAINTEXT / SASL_PLAINTEXT).

    Why: the client libraries only say "Unable to bootstrap" after their own timeouts, and
    Faust prints a traceback; an untrusted CA or a wrong host name deserves a clear error at
    once. Servers that cannot be reached at all are left to the clients (they retry). Checks
    the way aiokafka, kafka-python and librdkafka do: the CA file (else the system store),
    certificate chain and host name.
    """
    opts = _checked(security)
    if not opts.get("security_protocol", "PLAINTEXT").upper().endswith("SSL"):
        return
    cafile = opts.get("ssl_cafile") or None
    context = ssl.create_default_context(cafile=cafile)
    for server in filter(None, (s.strip() for s in bootstrap.split(","))):
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        if (server, cafile or "") in _checked_tls:
            continue
        try:
            sock = socket.create_connection((host, int(port)), timeout=5.0)
        except (OSError, ValueError):
            continue
        try:
            with context.wrap_socket(sock, server_hostname=host):
                pass
        except ssl.SSLCertVerificationError as exc:
            raise KafkaIOError(f"TLS to {server} refused: {_verify_reason(exc, cafile)}") from None
        except (ssl.SSLError, OSError) as exc:
            raise KafkaIOError(f"TLS handshake with {server} failed ({exc.__class__.__name__}: "
                               f"{getattr(exc, 'reason', None) or exc}); is it a TLS "
                               "listener?") from None
        finally:
            sock.close()
        _checked_tls.add((server, cafile or ""))


def _verify_reason(exc: ssl.SSLCertVerificationError, cafile: str | None) -> str:
    reason = f"certificate verify failed: {exc.verify_message}"
    if exc.verify_code == _HOSTNAME_MISMATCH:
        return (f"{reason} (connect by a name the broker's certificate holds; the broker's "
                "advertised listeners must use such a name too)")
    if cafile:
        return f"{reason} (the CA in FEEDBACK_STREAM_SSL_CAFILE={cafile} did not sign it)"
    return (f"{reason} (set FEEDBACK_STREAM_SSL_CAFILE to the CA that signed the broker's "
            "certificate)")
