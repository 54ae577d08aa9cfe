"""TLS for the broker tests: a throw-away CA and server certificate, and Debian's ``stunnel4``
terminating TLS in front of the embedded broker (tansu 0.6.0 cannot serve TLS itself).

The broker advertises the terminator's port under the name ``localhost``, which the server
certificate holds; ``127.0.0.1`` is deliberately not in it, so the same listener serves the
"wrong host name" case.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from topologies.broker import EmbeddedBroker, _pdeathsig_hook
from topologies.ports import free_port

SERVER_NAME = "localhost"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_ca(directory: Path, label: str) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate (``<label>.pem``) and its key (kept in memory)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(label)).issuer_name(_name(label))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / f"{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key


def make_server_cert(directory: Path, ca_path: Path, ca_key: ec.EllipticCurvePrivateKey,
                     dns_name: str = SERVER_NAME) -> tuple[Path, Path]:
    """A server certificate for ``dns_name`` only (no IP address), signed by the CA."""
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(dns_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    key_path.chmod(0o600)
    return cert_path, key_path


def stunnel_binary() -> str:
    found = shutil.which("stunnel4") or shutil.which("stunnel")
    if found is None:
        raise RuntimeError("stunnel4 is not installed (Debian: apt-get install stunnel4; "
                           "scripts/test.sh installs it)")
    return found


@dataclass
class TLSBroker:
    """The embedded broker behind a TLS terminator, as the tests use it."""

    bootstrap: str
    """``localhost:<TLS port>``: the name in the certificate."""
    wrong_host_bootstrap: str
    """``127.0.0.1:<TLS port>``: same listener, a name the certificate does not hold."""
    cafile: str
    """The CA that signed the server certificate."""
    other_cafile: str
    """A CA that did not."""
    broker: EmbeddedBroker
    stunnel: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.stunnel.poll() is None:
            self.stunnel.terminate()
            try:
                self.stunnel.wait(5)
            except subprocess.TimeoutExpired:
                self.stunnel.kill()
                self.stunnel.wait(5)
        self.broker.stop()


def start_tls_broker(timeout_s: float = 20.0) -> TLSBroker:
    """Make the certificates, start tansu advertising the TLS port and stunnel4 forwarding
    it; return once a verified TLS handshake succeeds on that port."""
    directory = Path(tempfile.mkdtemp(prefix="feedback-stream-tls-"))
    ca_path, ca_key = make_ca(directory, "test-ca")
    other_ca, _ = make_ca(directory, "other-ca")
    cert, key = make_server_cert(directory, ca_path, ca_key)
    tls_port = free_port()
    broker = EmbeddedBroker(advertised=f"{SERVER_NAME}:{tls_port}").start()
    config = directory / "stunnel.conf"
    config.write_text(f"foreground = yes\npid =\ndebug = 4\n\n[kafka]\n"
                      f"accept = 127.0.0.1:{tls_port}\nconnect = {broker.bootstrap}\n"
                      f"cert = {cert}\nkey = {key}\n")
    log_path = directory / "stunnel.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([stunnel_binary(), str(config)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_pdeathsig_hook())  # gone with the test run
    tls = TLSBroker(f"{SERVER_NAME}:{tls_port}", f"127.0.0.1:{tls_port}", str(ca_path),
                    str(other_ca), broker, proc, log_path)
    context = ssl.create_default_context(cafile=str(ca_path))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", tls_port), timeout=1.0) as sock, \
                    context.wrap_socket(sock, server_hostname=SERVER_NAME):
                return tls
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                tls.stop()
                raise RuntimeError(f"stunnel4 did not accept TLS on port {tls_port} "
                                   f"({exc!r}); its log:\n{log_path.read_text()}") from exc
            time.sleep(0.05)
