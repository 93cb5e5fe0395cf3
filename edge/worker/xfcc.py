"""x-forwarded-client-cert as Envoy writes it (the Module's forward_client_cert_details).

Pure: the policy of one table, the facts of one client certificate (read once per TLS
connection), and the headers a request goes upstream with. SANITIZE, the default, costs
nothing per request: the header rules drop the client's header (proxy.header_rules).

The modes (Envoy's HttpConnectionManager.ForwardClientCertDetails):
- FORWARD_ONLY: forward the client's header on an mTLS connection, drop it otherwise;
- APPEND_FORWARD: on mTLS, append this certificate's element to it; otherwise drop it;
- SANITIZE_SET: on mTLS, replace it with this certificate's element; otherwise drop it;
- ALWAYS_FORWARD_ONLY: forward it as the client sent it, always.

An element is `By=<our certificate's URI SAN>;Hash=<SHA-256 of the client's DER, hex>`
then, as set_current_client_cert_details asks, `Cert="<PEM, URL-encoded>"`,
`Chain="<PEM chain, URL-encoded>"`, `Subject="<RFC 2253 DN>"`, `URI=<SAN>`, `DNS=<SAN>`
(one key per SAN). The chain is the client's certificate alone: the handshake's verified
chain is not visible through the ssl module before Python 3.13.
"""

from __future__ import annotations

import hashlib
import ssl
from typing import NamedTuple
from urllib.parse import quote

from cryptography import x509

XFCC = b"x-forwarded-client-cert"


class ClientCert(NamedTuple):
    sha256: str
    pem: str
    subject: str
    uris: tuple[str, ...]
    dns: tuple[str, ...]


def client_cert(der: bytes) -> ClientCert:
    """What an element can say about a client certificate (DER, as the handshake gave it)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        uris = dns = ()
    return ClientCert(hashlib.sha256(der).hexdigest(), ssl.DER_cert_to_PEM_cert(der),
                      cert.subject.rfc4514_string(), uris, dns)


def uri_san(pem: str) -> str:
    """The first URI SAN of a certificate (XFCC's `By`), "" when it has none."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else ""


def element(cert: ClientCert, details: tuple[str, ...], by: str = "") -> bytes:
    parts = [f"By={by}"] if by else []
    parts.append(f"Hash={cert.sha256}")
    if "cert" in details:
        parts.append(f'Cert="{quote(cert.pem, safe="")}"')
    if "chain" in details:
        parts.append(f'Chain="{quote(cert.pem, safe="")}"')
    if "subject" in details:
        parts.append(f'Subject="{cert.subject}"')
    if "uri" in details:
        parts += [f"URI={u}" for u in cert.uris]
    if "dns" in details:
        parts += [f"DNS={d}" for d in cert.dns]
    return ";".join(parts).encode()


class XfccPolicy(NamedTuple):
    mode: str  # any but SANITIZE (which the header rules do)
    details: tuple[str, ...]

    def headers(self, headers: list, cert: ClientCert | None, by: str = "") -> list:
        """The request headers the upstream gets; `cert` None: not an mTLS connection."""
        mode = self.mode
        if mode == "ALWAYS_FORWARD_ONLY" or mode == "FORWARD_ONLY" and cert is not None:
            return headers
        rest = [pair for pair in headers if pair[0] != XFCC]
        if cert is None or mode == "FORWARD_ONLY":
            return rest
        mine = element(cert, self.details, by)
        if mode == "APPEND_FORWARD":
            prior = b",".join(v for n, v in headers if n == XFCC)
            return rest + [(XFCC, prior + b"," + mine if prior else mine)]
        return rest + [(XFCC, mine)]  # SANITIZE_SET
