"""The admin HTTP server (hypercorn on trio, in the supervisor).

    /ambassador/v0/check_ready   200 once the first table is published and every worker
                                 has loaded it, else 503
    /ambassador/v0/check_alive   200 while the supervisor runs
    /ambassador/v0/diag/         HTML overview; ?json=true for JSON
    /edge/v1/config              JSON: version, generation, publish_time, diagnostics, workers,
                                 sources (Kubernetes/Consul: synced, stale, per-kind state)
    /edge/v1/clusters            JSON: every cluster of the published table with its endpoints
    /metrics                     Prometheus text
    POST /edge/v1/restart        rolling restart of every worker (as SIGUSR2): 202, or 409
                                 when one runs already

Anything but GET and HEAD changes the gateway: it is answered only for loopback clients
(403 for others) unless `allow_remote_restart` (--admin-allow-remote-restart). The admin
port is often bound on 0.0.0.0 in a pod for probes and metrics, and nothing here asks who
is calling.
"""

from __future__ import annotations

import html
import ipaddress
import json
import os
import socket
from typing import Protocol
from urllib.parse import parse_qs

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


class AdminView(Protocol):
    def ready(self) -> tuple[bool, str]: ...
    def config(self) -> dict: ...
    def diag(self) -> dict: ...
    def metrics(self) -> dict[str, float]: ...
    def restart_workers(self) -> bool: ...
    def clusters(self) -> list[dict]: ...


READ_ONLY = ("GET", "HEAD")


def is_loopback(client) -> bool:
    """The ASGI scope's client: (host, port), or None (unknown: not loopback)."""
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0].split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def make_app(view: AdminView, *, allow_remote_restart: bool = False):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode())
        if scope["method"] not in READ_ONLY and not allow_remote_restart and not is_loopback(scope.get("client")):
            status, ctype = 403, b"text/plain"
            body = (f"{scope['method']} {path} is allowed only from loopback; start edge with "
                    f"--admin-allow-remote-restart (env EDGE_ADMIN_ALLOW_REMOTE_RESTART) to allow it "
                    f"from other hosts\n").encode()
        elif path == "/ambassador/v0/check_ready":
            ok, why = view.ready()
            status, body, ctype = (200 if ok else 503), why.encode(), b"text/plain"
        elif path == "/ambassador/v0/check_alive":
            status, body, ctype = 200, b"edge is alive\n", b"text/plain"
        elif path in ("/ambassador/v0/diag", "/ambassador/v0/diag/"):
            data = view.diag()
            if query.get("json", ["false"])[0].lower() == "true":
                status, body, ctype = 200, _json(data), b"application/json"
            else:
                status, body, ctype = 200, render_diag(data).encode(), b"text/html; charset=utf-8"
        elif path == "/edge/v1/config":
            status, body, ctype = 200, _json(view.config()), b"application/json"
        elif path == "/edge/v1/clusters":
            status, body, ctype = 200, _json(view.clusters()), b"application/json"
        elif path == "/edge/v1/restart" and scope["method"] == "POST":
            started = view.restart_workers()
            status = 202 if started else 409
            body = b"rolling restart started\n" if started else b"a rolling restart is running, or no table yet\n"
            ctype = b"text/plain"
        elif path == "/metrics":
            lines = [f"{name} {value}" for name, value in sorted(view.metrics().items())]
            status, body, ctype = 200, ("\n".join(lines) + "\n").encode(), b"text/plain; version=0.0.4"
        else:
            status, body, ctype = 404, b"not found\n", b"text/plain"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def _json(data) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def render_diag(data: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(d['severity'])}</td><td>{html.escape(d['kind'])}</td>"
        f"<td>{html.escape(d['namespace'])}/{html.escape(d['name'])}</td><td>{html.escape(d['field'])}</td>"
        f"<td>{html.escape(d['message'])}</td><td>{html.escape(d['source'])}</td></tr>"
        for d in data["errors"])
    resources = "".join(
        f"<tr><td>{html.escape(r['kind'])}</td><td>{html.escape(r['namespace'])}/{html.escape(r['name'])}</td>"
        f"<td>{html.escape(r['source'])}</td></tr>" for r in data["resources"])
    kube = data.get("kubernetes")
    kube_html = ""
    if kube is not None:  # kinds edge runs without (no CRD, forbidden by RBAC), with the reason
        kinds = "".join(
            f"<tr><td>{html.escape(kind)}</td><td>{html.escape(reason)}</td>"
            f"<td>{kube['kept'].get(kind, 0)}</td></tr>" for kind, reason in sorted(kube["unavailable"].items()))
        state = "synced" if kube["synced"] else "not synced yet"
        if kube["stale"]:
            state += "; stale: " + html.escape(", ".join(kube["stale_kinds"]) or "the API server is unreachable")
        kube_html = (
            f"<h2>Kubernetes</h2><p>{state}</p>"
            + ("<h3>Unavailable kinds</h3><table border='1'><tr><th>kind</th><th>reason</th>"
               f"<th>objects kept</th></tr>{kinds}</table>" if kinds else "<p>every kind is read</p>"))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>edge diagnostics</title></head><body>"
        f"<h1>edge diagnostics</h1><p>table version {html.escape(str(data['version']))}, "
        f"generation {data['generation']}</p>"
        "<h2>Errors</h2><table border='1'><tr><th>severity</th><th>kind</th><th>object</th><th>field</th>"
        f"<th>message</th><th>source</th></tr>{rows}</table>{kube_html}"
        "<h2>Resources</h2><table border='1'><tr><th>kind</th><th>object</th><th>source</th></tr>"
        f"{resources}</table></body></html>")


class AdminBindError(OSError):
    """The admin address cannot be listened on (taken, not ours, malformed)."""


def open_admin_socket(address: str) -> socket.socket:
    """The admin port's listening socket for "HOST:PORT" ("[::1]:8877" for IPv6). The
    supervisor opens it (not hypercorn), so that an edge taking over receives it.
    AdminBindError (EADDRINUSE, ...) names the address."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise AdminBindError(exc.errno, f"admin address {address}: {exc.strerror}") from exc
    except ValueError as exc:
        sock.close()
        raise AdminBindError(f"admin address {address}: not HOST:PORT") from exc
    return sock


async def serve_admin(view: AdminView, sock: socket.socket, *, allow_remote_restart: bool = False,
                      stop: trio.Event | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the admin app on `sock` (a listening socket: open_admin_socket's); the socket
    itself stays open when this returns (hypercorn closes a duplicate of it). Once `stop` is
    set, no connection is accepted any more and the requests under way are answered (for
    up to a second) before this returns."""
    config = Config()
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1
    await serve(make_app(view, allow_remote_restart=allow_remote_restart), config, task_status=task_status,
                shutdown_trigger=stop.wait if stop is not None else None)
