"""TLS inside the reactor: contexts per table, and a transport over a socket, for
termination (clients to edge) and origination (edge to upstreams).

`ServerContexts` turns a table's ServerTLS entries into `ssl.SSLContext`s once per table
generation (never per connection) and picks one per ClientHello by SNI: the exact name,
then the longest wildcard, then the fallback (a `*` entry, else the first one), as
Envoy's filter-chain match does. Key material comes from the table, so a rotated Secret
is served to the next connection after the reload, and nothing is read from disk.

`ClientContexts` does the same for TLS origination: one client `ssl.SSLContext` per
ClientTLS entry (client certificate, CA to verify the upstream against, SNI, versions,
ciphers, ALPN), reused across tables while unchanged.

`TLSTransport` is the stdlib's sans-IO `ssl.SSLObject` over two `ssl.MemoryBIO`s, driven
by the connection's own reads and writes. It looks like a non-blocking socket to the
connection handler (`recv_into`, `send`, `fileno`, `close`), with the contracts the
reactor's edge-triggered reads and `send_or_keep` rely on:

- `recv_into(buf)` fills `buf` with plaintext, reading the socket until the buffer is
  full or the socket has nothing more; so a short read means "wait for the next event",
  as on a plain socket. It returns 0 at the end of the stream and raises
  BlockingIOError when there is nothing yet (the handshake included).
- `send(data)` encrypts and writes, and returns how much of `data` it took. When the
  socket takes only part of a piece's ciphertext, the rest is kept and that piece is
  not counted: the caller keeps it and calls again, once EPOLLOUT says the socket has
  room, with a buffer that starts with the same bytes (OpenSSL's own rule for a retried
  write); that call sends the kept ciphertext and counts the piece. So the caller's
  kept bytes are never empty while ciphertext waits, and EPOLLOUT always has a writer.

A client-side transport (`server_side=False`, TLS origination) starts its handshake with
`do_handshake()`, called once the TCP connect is done and again on each event until it
returns True; then `recv_into` and `send` work as above.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import ssl
from typing import NamedTuple

from edge.model import Certificate, ClientTLS, RouteTable, ServerTLS
from edge.worker import xfcc

log = logging.getLogger("edge.worker")

RAW_READ = 65536
WRITE_CHUNK = 65536  # plaintext per send: bounds the ciphertext kept when the socket is full
SPOKEN = ("h2", "http/1.1")  # ALPN protocols this worker serves, in its order of preference

VERSIONS = {
    "v1.0": ssl.TLSVersion.TLSv1, "v1.1": ssl.TLSVersion.TLSv1_1,
    "v1.2": ssl.TLSVersion.TLSv1_2, "v1.3": ssl.TLSVersion.TLSv1_3,
}


SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59  # openssl/ssl.h
_ticket_keys: bytes | None = None


def use_ticket_keys(keys: bytes | None) -> None:
    """Encrypt session tickets with `keys` (80 bytes: name, HMAC and AES keys) in every
    context made from now on, so that all workers of a gateway, which share them, resume
    each other's sessions. Process-wide, like OpenSSL's own configuration: the worker
    sets it once at start. None: OpenSSL's random per-context keys (resumption on the
    same worker only)."""
    global _ticket_keys
    _ticket_keys = keys


def _share_tickets(ctx: ssl.SSLContext, keys: bytes) -> bool:
    """SSL_CTX_set_tlsext_ticket_keys, which the ssl module does not expose, through
    ctypes on the context's SSL_CTX (the first field after the object header of CPython's
    PySSLContext). The pointer is checked against the context's options before use."""
    lib = _libssl()
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr or lib.SSL_CTX_get_options(ptr) != ctx.options:
        return False
    return lib.SSL_CTX_ctrl(ptr, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(keys), keys) == 1


_lib = None


def _libssl():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL("libssl.so.3")  # the library the ssl module is linked with (OpenSSL 3)
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        _lib = lib
    return _lib


def _context(entry: ServerTLS, certs: tuple[Certificate, ...]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert = certs[entry.certificate]
    _load_chain(ctx, cert)
    if entry.min_version:
        ctx.minimum_version = VERSIONS[entry.min_version]
    if entry.max_version:
        ctx.maximum_version = VERSIONS[entry.max_version]
    if entry.cipher_suites:
        ctx.set_ciphers(":".join(entry.cipher_suites))  # TLS 1.2 and below; 1.3 keeps OpenSSL's
    if entry.ecdh_curves:
        ctx.set_ecdh_curve(entry.ecdh_curves[0])
    if entry.ca_certificate >= 0:
        ctx.load_verify_locations(cadata=certs[entry.ca_certificate].chain_pem)
        ctx.verify_mode = ssl.CERT_REQUIRED if entry.cert_required else ssl.CERT_OPTIONAL
    offered = [p for p in (entry.alpn_protocols or SPOKEN) if p in SPOKEN] or list(SPOKEN)
    ctx.set_alpn_protocols(offered)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    if _ticket_keys is not None and not _share_tickets(ctx, _ticket_keys):
        log.warning("TLS for %s: session tickets are not shared between workers (SSL_CTX not reachable); "
                    "clients resume on the same worker only", entry.name)
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: Certificate) -> None:
    """load_cert_chain reads files only: hand it anonymous memory files, never the disk
    (a read-only root and a key that must not land in /tmp)."""
    fds = []
    try:
        for pem in (cert.chain_pem, cert.key_pem):
            fd = os.memfd_create("edge-tls", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, pem.encode())
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)


class ServerContexts:
    """The SSL contexts of one table, chosen per ClientHello by SNI.

    Built once per table (in the table loader's thread); a context whose entry and
    certificates did not change is reused from the previous table's, so a reload that
    touches only routes costs no certificate loading.
    """

    def __init__(self, table: RouteTable, previous: ServerContexts | None = None):
        self.key = (table.certificates, table.server_tls, table.client_tls)
        old = previous.by_entry if previous is not None else {}
        self.by_entry: dict[tuple, ssl.SSLContext] = {}
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcards: list[tuple[str, ssl.SSLContext]] = []  # (".suffix", ctx), longest first
        self.errors: list[str] = []
        self.by_uri: dict[ssl.SSLContext, str] = {}  # x-forwarded-client-cert's By, where the certificate has a URI SAN
        fallback = star = None
        for entry in table.server_tls:
            key = (entry, table.certificates[entry.certificate],
                   table.certificates[entry.ca_certificate] if entry.ca_certificate >= 0 else None)
            ctx = old.get(key)
            if ctx is None:
                try:
                    ctx = _context(entry, table.certificates)
                except (ssl.SSLError, ValueError, OSError) as exc:  # OpenSSL refused a setting
                    self.errors.append(f"{entry.name}: {exc}")
                    log.error("TLS for %s cannot be served: %s", entry.name, exc)
                    continue
            self.by_entry[key] = ctx
            by = xfcc.uri_san(key[1].chain_pem)
            if by:
                self.by_uri[ctx] = by
            fallback = fallback or ctx
            for name in entry.server_names:
                if name == "*":
                    star = star or ctx
                elif name.startswith("*."):
                    self.wildcards.append((name[1:], ctx))
                else:
                    self.exact.setdefault(name, ctx)
        self.wildcards.sort(key=lambda w: -len(w[0]))
        self.fallback = star or fallback
        if self.fallback is not None:
            for ctx in self.by_entry.values():
                ctx.sni_callback = self._select
        # TLS origination's contexts travel with these: the Router keeps them per table
        self.client = ClientContexts(table, previous.client if previous is not None else None)

    def __bool__(self) -> bool:
        return self.fallback is not None

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context for an SNI name (None: the client sent none)."""
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = self.exact.get(name)
            if ctx is not None:
                return ctx
            for suffix, ctx in self.wildcards:
                if name.endswith(suffix) and len(name) > len(suffix):
                    return ctx
        return self.fallback

    def _select(self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        chosen = self.select(server_name)
        if chosen is not sslobj.context:
            sslobj.context = chosen

    def wrap(self, sock: socket.socket) -> TLSTransport:
        return TLSTransport(sock, self.fallback)


def _client_context(entry: ClientTLS, certs: tuple[Certificate, ...]) -> ssl.SSLContext:
    """A client context as Envoy's UpstreamTlsContext from Emissary's TLSContext: the
    upstream's chain is verified only against ca_secret, and its name never (Envoy
    checks names only with match_subject_alt_names, which Emissary does not set)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if entry.ca_certificate >= 0:
        ctx.load_verify_locations(cadata=certs[entry.ca_certificate].chain_pem)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if entry.certificate >= 0:
        _load_chain(ctx, certs[entry.certificate])
    if entry.min_version:
        ctx.minimum_version = VERSIONS[entry.min_version]
    if entry.max_version:
        ctx.maximum_version = VERSIONS[entry.max_version]
    if entry.cipher_suites:
        ctx.set_ciphers(":".join(entry.cipher_suites))
    if entry.ecdh_curves:
        ctx.set_ecdh_curve(entry.ecdh_curves[0])
    if entry.alpn_protocols:
        ctx.set_alpn_protocols(list(entry.alpn_protocols))  # compile kept what the cluster speaks
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


class Origin:
    """One ClientTLS entry ready for connections: its context and the SNI to send (None:
    none). Compared by identity: the pool keys idle connections by it, so a connection is
    reused only with the very context (certificates, settings) it was made with."""

    __slots__ = ("ctx", "sni", "name")

    def __init__(self, ctx: ssl.SSLContext, sni: str | None, name: str):
        self.ctx = ctx
        self.sni = sni
        self.name = name


class ClientContexts:
    """The client contexts of a table's ClientTLS entries, by index (Cluster.tls).

    Built with the table's ServerContexts (in the table loader's thread); an entry whose
    settings and certificates did not change reuses the previous table's Origin, so its
    pooled connections stay usable. A Router that kept the previous table's contexts
    (only clusters changed) asks with its own table: its entries are looked up (and any
    new one built) then, once per table; the last few tables' indexes are kept, since the
    requests of the previous table still finish while the next one serves."""

    RECENT = 4

    def __init__(self, table: RouteTable, previous: ClientContexts | None = None):
        self.by_key: dict[tuple, Origin | str] = {}  # (entry, certificate, CA) -> Origin, or why none
        self.errors: list[str] = []
        self._recent: dict[int, tuple[tuple[ClientTLS, ...], list[Origin | str]]] = {}
        self._entries, self._by_index = self._index(table, previous.by_key if previous is not None else {})

    def _index(self, table: RouteTable, old: dict) -> tuple[tuple[ClientTLS, ...], list[Origin | str]]:
        certs = table.certificates
        by_index: list[Origin | str] = []
        for entry in table.client_tls:
            key = (entry, certs[entry.certificate] if entry.certificate >= 0 else None,
                   certs[entry.ca_certificate] if entry.ca_certificate >= 0 else None)
            origin = self.by_key.get(key) or old.get(key)
            if origin is None:
                try:
                    origin = Origin(_client_context(entry, certs), entry.sni or None, entry.name)
                except (ssl.SSLError, ValueError, OSError) as exc:  # OpenSSL refused a setting or the key
                    origin = f"{entry.name}: {exc}"
                    self.errors.append(origin)
                    log.error("TLS origination with %s cannot be set up: %s", entry.name, exc)
            self.by_key[key] = origin
            by_index.append(origin)
        recent = self._recent
        if len(recent) >= self.RECENT:
            del recent[next(iter(recent))]
        recent[id(table.client_tls)] = (table.client_tls, by_index)  # the tuple kept: its id stays its own
        return table.client_tls, by_index

    def origin(self, table: RouteTable, index: int) -> Origin:
        """The Origin for `table`'s ClientTLS `index`. Raises ssl.SSLError when its context
        could not be made."""
        entries = table.client_tls
        if entries is not self._entries:
            known = self._recent.get(id(entries))
            self._entries, self._by_index = known if known is not None else self._index(table, {})
        origin = self._by_index[index]
        if type(origin) is str:
            raise ssl.SSLError(origin)
        return origin


class Handshake(NamedTuple):
    """What the finished handshake says about the client."""

    alpn: str | None
    version: str
    peer_cert: bytes | None  # DER, when the client presented one
    context: ssl.SSLContext  # the one SNI chose


def client_cert_of(transport: TLSTransport, router) -> tuple:
    """(xfcc.ClientCert or None, the URI SAN of the certificate we presented) of a
    finished handshake, for x-forwarded-client-cert."""
    shake = transport.handshake
    if shake is None or shake.peer_cert is None:
        return None, ""
    contexts = router.tls
    return xfcc.client_cert(shake.peer_cert), contexts.by_uri.get(shake.context, "") if contexts else ""


class TLSTransport:
    """A TLS stream over a non-blocking socket (see the module docstring): server-side by
    default, client-side (TLS origination) with `server_side=False`, sending
    `server_hostname` as SNI (None: no SNI)."""

    __slots__ = ("sock", "obj", "incoming", "outgoing", "kept", "kept_plain", "handshake", "eof")

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool = True,
                 server_hostname: str | None = None):
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                server_hostname=server_hostname)
        self.kept = b""  # ciphertext the socket did not take yet
        self.kept_plain = 0  # how much of the caller's data that ciphertext carries
        self.handshake: Handshake | None = None
        self.eof = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    @property
    def pending_output(self) -> bool:
        return bool(self.kept)

    def recv_into(self, buf) -> int:
        obj = self.obj
        view = memoryview(buf)
        size = len(view)
        total = 0
        try:
            if self.handshake is None and not self._handshake():
                if self.eof:
                    return 0
                raise BlockingIOError
            while total < size:
                try:
                    n = obj.read(size - total, view[total:])
                except ssl.SSLWantReadError:
                    if self.eof or not self._fill():
                        break
                    continue
                if n == 0:
                    self.eof = True
                    break
                total += n
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self.eof = True
        except ssl.SSLError:
            self._flush_quietly()  # the alert tells the client why
            raise
        if self.outgoing.pending:  # post-handshake messages (session tickets, key updates), alerts
            if self.eof:
                self._flush_quietly()  # the peer may be gone: its end of stream is what counts
            else:
                self._write_out()
        if total == 0 and not self.eof:
            raise BlockingIOError
        return total

    def _fill(self) -> bool:
        """Move what the socket has into the incoming BIO; False when it has nothing."""
        try:
            data = self.sock.recv(RAW_READ)
        except BlockingIOError:
            return False
        if not data:
            self.eof = True
            self.incoming.write_eof()
            return True
        self.incoming.write(data)
        return True

    def handshake_step(self) -> bool:
        """Go on with the handshake as far as the socket allows; True once it is done.
        Raises ssl.SSLError when it fails (the alert is sent first) and EOFError when the
        client went away."""
        try:
            done = self._handshake()
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self.eof = True
            done = False
        except ssl.SSLError:
            self._flush_quietly()
            raise
        if not done and self.eof:
            raise EOFError("the client closed the connection during the TLS handshake")
        return done

    def _handshake(self) -> bool:
        obj = self.obj
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if self.outgoing.pending:
                    self._write_out()
                if self.eof or not self._fill():
                    return False
        if self.outgoing.pending:
            self._write_out()
        cert = obj.getpeercert(binary_form=True)
        self.handshake = Handshake(obj.selected_alpn_protocol(), obj.version() or "", cert, obj.context)
        return True

    def do_handshake(self) -> bool:
        """Drive a client handshake: send what is kept, then go as far as the socket allows.
        True once done. Raises ssl.SSLError (the handshake failed, the peer closed) or
        OSError (the socket failed)."""
        if self.handshake is not None:
            return True
        if self.kept:
            self._write_out()
        if self._handshake():
            return True
        if self.eof:
            raise ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "the upstream closed the connection during the handshake")
        return False

    def send(self, data) -> int:
        taken = 0
        if self.kept:
            self._write_out()
            if self.kept:
                return 0
            taken, self.kept_plain = self.kept_plain, 0  # `data` starts with what that ciphertext carried
        view = memoryview(data)
        size = len(view)
        while taken < size:
            piece = view[taken:taken + WRITE_CHUNK]
            self.obj.write(piece)
            self._write_out()
            if self.kept:  # the socket is full: EPOLLOUT comes, and the caller retries from `taken`
                self.kept_plain = len(piece)
                return taken
            taken += len(piece)
        return taken

    def _write_out(self) -> None:
        data = self.kept + self.outgoing.read() if self.kept else self.outgoing.read()
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        self.kept = data[sent:] if sent < len(data) else b""

    def flush(self) -> bool:
        """On EPOLLOUT with nothing of the caller's waiting (the handshake's flight):
        send the kept ciphertext; True when none is left."""
        self._write_out()
        return not self.kept

    def _flush_quietly(self) -> None:
        try:
            self._write_out()
        except OSError:
            pass  # the connection is failing already; the alert was a courtesy
