"""Certificates made in the test, for the compile side of TLS: a CA, leaves signed by it,
and Secrets shaped exactly as `kubectl create secret tls NAME --cert=c --key=k
--dry-run=client -o yaml` writes them. EC P-256 keys: fast to make."""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from edge.resources.base import RawObject
from edge.resources.tls import secret_spec


@dataclass(frozen=True)
class Pair:
    cert_pem: str
    key_pem: str


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


_START = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
_END = datetime.datetime(2044, 1, 1, tzinfo=datetime.timezone.utc)


def make_ca(cn: str = "edge test CA") -> tuple[Pair, object]:
    key = _key()
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_START).not_valid_after(_END)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return Pair(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)), (cert, key)


def make_leaf(names: list[str], ca, rsa_bits: int = 0) -> Pair:
    """A leaf for `names` signed by `ca`: an EC P-256 key, or RSA with `rsa_bits`."""
    ca_cert, ca_key = ca
    key = rsa.generate_private_key(65537, rsa_bits) if rsa_bits else _key()
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_START).not_valid_after(_END)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    chain = cert.public_bytes(serialization.Encoding.PEM).decode() + ca_cert.public_bytes(
        serialization.Encoding.PEM).decode()
    return Pair(chain, _pem_key(key))


@dataclass(frozen=True)
class PKI:
    ca: Pair
    leaf: Pair  # a.example.com, chain: leaf then CA
    wildcard: Pair  # *.example.com
    other_key: str  # a key that matches none of them


@lru_cache(maxsize=1)
def pki() -> PKI:
    ca, signer = make_ca()
    return PKI(ca, make_leaf(["a.example.com"], signer), make_leaf(["*.example.com", "example.com"], signer),
               _pem_key(_key()))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def kubectl_secret(name: str, cert_pem: str, key_pem: str | None) -> dict:
    """The document `kubectl create secret tls` prints (-o yaml), as a dict."""
    data = {"tls.crt": b64(cert_pem)}
    if key_pem is not None:
        data["tls.key"] = b64(key_pem)
    return {"apiVersion": "v1", "data": data, "kind": "Secret",
            "metadata": {"creationTimestamp": None, "name": name}, "type": "kubernetes.io/tls"}


def secret_obj(name: str, cert_pem: str | None, key_pem: str | None = None, ns: str = "default",
               type_: str = "kubernetes.io/tls", extra: dict | None = None, source: str = "f.yaml") -> RawObject:
    """A Secret as the sources hand it to compile."""
    data = {}
    if cert_pem is not None:
        data["tls.crt"] = b64(cert_pem)
    if key_pem is not None:
        data["tls.key"] = b64(key_pem)
    data.update(extra or {})
    return RawObject("Secret", ns, name, source, secret_spec({"type": type_, "data": data}), {}, "v1")
