"""The TLS side of the bench: one self-signed ECDSA P-256 certificate made at start (in the
run's temporary directory, never checked in) that nginx and edge both serve, edge's Secret
and Host for it, and what keeps both from resuming sessions (wrk resumes when it can, so
a new connection per request would not be a full handshake). wrk does not verify
certificates."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificate:
    cert: Path  # PEM files, for nginx
    key: Path
    cert_pem: str
    key_pem: str


def self_signed(work: Path) -> Certificate:
    """ECDSA P-256, self-signed for 127.0.0.1 and localhost, valid for a week."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    (work / "tls.crt").write_text(cert_pem)
    (work / "tls.key").write_text(key_pem)
    (work / "tls.key").chmod(0o600)
    return Certificate(work / "tls.crt", work / "tls.key", cert_pem, key_pem)


def secret_yaml(name: str, cert: Certificate) -> str:
    """A Secret exactly as `kubectl create secret tls NAME --cert --key --dry-run=client -o yaml` writes it."""
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    return (f"apiVersion: v1\ndata:\n  tls.crt: {b64(cert.cert_pem)}\n  tls.key: {b64(cert.key_pem)}\n"
            f"kind: Secret\nmetadata:\n  creationTimestamp: null\n  name: {name}\ntype: kubernetes.io/tls\n")


def host_yaml(secret: str) -> str:
    """A Host for every name, with the Secret's certificate."""
    return f"""apiVersion: getambassador.io/v3alpha1
kind: Host
metadata: {{name: bench}}
spec: {{hostname: "*", tlsSecret: {{name: {secret}}}}}
"""


# OpenSSL's configuration for edge's processes in the TLS scenarios: no TLS 1.3 tickets (and
# no TLS 1.2 ones). Python's server contexts issue tickets by default, with a key of their
# own per worker, and wrk resumes from them when it reconnects: with 1 worker every
# "new" connection would be a resumption, with N about 1 in N. nginx gets
# `ssl_session_tickets off; ssl_session_cache off;` for the same full handshakes.
NO_TICKETS = """openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
NumTickets = 0
Options = -SessionTicket
"""


def no_tickets_env(work: Path) -> dict[str, str]:
    """The environment that gives a process NO_TICKETS (OPENSSL_CONF replaces the system
    file, whose openssl_init section is empty on Debian)."""
    conf = work / "openssl-no-tickets.cnf"
    conf.write_text(NO_TICKETS)
    return {"OPENSSL_CONF": str(conf)}


def resumed(port: int, attempts: int = 4) -> int:
    """How many of `attempts` reconnections to 127.0.0.1:port over TLS 1.3 resumed the
    previous session (the way wrk reconnects: after a whole response, tickets read)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    session, count = None, 0
    for _ in range(attempts + 1):
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), session=session) as s:
            s.sendall(b"GET /bench/ HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
            count += session is not None and s.session_reused
            session = s.session
    return count
