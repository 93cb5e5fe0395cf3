"""The per-request decision, pure: one function that every protocol calls.

    plan(router, port, peer, req) -> Plan | LocalReply

HTTP/1 connections, HTTP/2 streams, gRPC calls and upgrades all decide a request here:
normalise and split the target, strip the Host port, match a route, pick the canary
target, answer a CORS preflight (or mark the response's CORS headers), rewrite the path,
decide what the upstream head says about the client, and match the rate limits. The
drivers keep only what their protocol needs: framing, the upstream head's bytes
(`heads.request_head` for an HTTP/1 upstream), the limiter's answer (shared memory or
Redis), I/O. Nothing here touches a socket, a clock or the worker's state, so
tables of requests test it without any.

Both results are NamedTuples rather than frozen dataclasses: one is made per request,
and a tuple is built in C while a frozen dataclass sets each field through
object.__setattr__ (measured in bench.micro: plan).
"""

from __future__ import annotations

import random
from typing import NamedTuple

from edge.model import Cluster, ListenerSpec
from edge.ratelimit.descriptors import descriptors
from edge.worker import cors
from edge.worker.proto.messages import ClientError, Request
from edge.worker.proxy import normalize_path, rewrite_path, split_target
from edge.worker.router import CompiledRoute, CompiledTarget, Router, pick_target


class Plan(NamedTuple):
    """Where a request goes and what its upstream head carries."""

    route: CompiledRoute
    target: CompiledTarget
    cluster: Cluster
    listener: ListenerSpec
    path: str  # rewritten
    query: str
    original_path: str | None  # path?query as the client sent it, when the rewrite changed it
    trust_xff: bool  # keep the client's X-Forwarded-For / -Proto (l7Depth, xff_num_trusted_hops)
    headers: list  # the request's headers as the upstream gets them (x-forwarded-client-cert applied)
    limits: list  # [(RateLimitRule, counter key)] the request's descriptors match
    router: Router  # the table it was planned with (limits of a keep-alive connection are reused per table)
    extra: bytes  # header lines (each ending in CRLF) the client's response gets: CORS; b"" when none


class LocalReply(NamedTuple):
    """An answer edge gives itself. `close`: the request itself was malformed, so the
    stream it came on cannot be trusted further (HTTP/1 closes the connection; HTTP/2
    resets nothing more than the stream)."""

    status: int
    body: bytes = b""
    close: bool = False
    extra: bytes = b""  # header lines, each ending in CRLF
    content_type: bytes = b"text/plain"


NOT_FOUND = LocalReply(404)
_new_plan = tuple.__new__  # a Plan without the Python frame of NamedTuple.__new__ (one per request)
UPGRADE_UNSUPPORTED = LocalReply(501, b"protocol upgrades are not supported yet", close=True)


def plan(router: Router, port: int, peer: str, req: Request, prior: Plan | None = None,
         rand=random.random, scheme: bytes = b"http", client_cert=None) -> Plan | LocalReply:
    """Decide `req`, which arrived on Listener `port` from client address `peer` over a
    connection of `scheme` (b"https" when TLS was terminated). `client_cert`: a callable
    giving the connection's (xfcc.ClientCert or None, our certificate's URI SAN), asked
    only when the Module forwards client certificate details.

    `prior` is the Plan of the previous request on the same connection: when it had the
    same target in the same table and its limits depend on the connection alone, they are
    reused rather than matched again. `rand` gives the canary roll in [0, 1). Malformed
    targets give a 400 LocalReply (never an exception); no route gives 404.

    A request that is not secure (the Listener's securityModel: XFP reads the effective
    X-Forwarded-Proto) gets its Host's requestPolicy.insecure.action, as Emissary builds
    its routes: Redirect answers 301 to https, Reject answers as if no route matched,
    Route goes on; ACME HTTP-01 challenges are always routed.
    """
    if req.upgrade:
        return UPGRADE_UNSUPPORTED
    settings = router.settings
    try:
        path, query = split_target(req.target)
        if "%" in path or "/." in path or "//" in path:
            path = normalize_path(path, settings.merge_slashes)
    except ClientError as exc:
        return LocalReply(exc.status, exc.reason.encode(), close=True)
    host = req.host.decode("latin-1").lower() if req.host else ""
    if settings.strip_matching_host_port and host.endswith(f":{port}"):
        host = host[: host.rfind(":")]
    found = router.match(port, host, path, req.method, req.headers, query)
    if found is None:
        return NOT_FOUND
    route, matched = found
    listener = router.listeners[port]
    trust_xff = listener.l7_depth > 0 or settings.xff_num_trusted_hops > 0
    if router.insecure_policies and not secure(listener.security_model, scheme, trust_xff, req.headers):
        action = router.insecure_action(port, host)
        if action != "Route" and not path.startswith(ACME_CHALLENGE):
            if action == "Reject":
                return NOT_FOUND
            return https_redirect(req.host or b"", path, query)
    targets = route.targets
    target = targets[0] if len(targets) == 1 else pick_target(route, int(rand() * 100))
    t = target.target
    extra = b""
    if t.cors is not None:  # Envoy's cors filter: a preflight is answered here, a request's response marked
        origin = cors.origin_of(req.headers)
        if origin is not None:
            if req.method == b"OPTIONS":
                reply = cors.preflight(t.cors, req.headers, origin)
                if reply is not None:
                    return reply
            extra = cors.response_extra(t.cors, origin)
    new_path = rewrite_path(path, matched, t.rewrite, target.regex_rewrite, t.regex_rewrite_substitution)
    original = (path + ("?" + query if query else "")) if new_path != path else None
    limits = _NO_LIMITS
    if t.labels and router.rate_limits is not None:
        if prior is not None and prior.target is target and prior.router is router and target.labels_per_connection:
            limits = prior.limits
        else:
            limits = matched_limits(router, target, listener, req.headers, peer)
    headers = req.headers
    if router.xfcc is not None:
        cert, by = client_cert() if client_cert is not None else (None, "")
        headers = router.xfcc.headers(headers, cert, by)
    return _new_plan(Plan, (route, target, router.clusters[t.cluster], listener, new_path, query, original,
                            trust_xff, headers, limits, router, extra))


ACME_CHALLENGE = "/.well-known/acme-challenge/"


def secure(security_model: str, scheme: bytes, trust_xff: bool, headers: list) -> bool:
    """Did the request arrive securely, by the Listener's securityModel? XFP believes the
    client's X-Forwarded-Proto only from trusted hops (l7Depth, xff_num_trusted_hops), as
    Envoy overwrites it otherwise."""
    if security_model == "SECURE":
        return True
    if security_model == "INSECURE":
        return False
    if trust_xff:
        for name, value in headers:
            if name == b"x-forwarded-proto":
                return value.split(b",")[0].strip().lower() == b"https"
    return scheme == b"https"


def https_redirect(host: bytes, path: str, query: str) -> LocalReply:
    """Envoy's https_redirect: the same host (its default http port dropped) and path."""
    if host.endswith(b":80"):
        host = host[:-3]
    location = b"https://" + host + (path + ("?" + query if query else "")).encode()
    return LocalReply(301, b"", False, b"location: " + location + b"\r\n")


_NO_LIMITS: list = []  # shared and never changed: most routes have no limits


def matched_limits(router: Router, target: CompiledTarget, listener: ListenerSpec, headers: list,
                   peer: str) -> list:
    """(limit, counter key) of every rate limit the request's descriptors match."""
    t = target.target
    index = router.rate_limits
    matched = []
    for domain, keys, values in descriptors(t.labels, headers, peer, listener.name, t.cluster):
        matched += index.matches(domain, keys, values)
    return matched
