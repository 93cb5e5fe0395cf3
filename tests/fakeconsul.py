"""A fake Consul HTTP API: the catalog and health endpoints edge and the tests use.

- PUT /v1/catalog/register, PUT /v1/catalog/deregister (nodes, services, checks),
- GET /v1/health/service/<name> (`passing`, `dc`), GET /v1/catalog/service/<name>,
- blocking queries: `index` + `wait` hold the answer until the index moves past `index` or
  `wait` passes; every answer carries `X-Consul-Index` (the catalog's raft index; it is
  never 0, and any change moves it, as in Consul).
- `outage()` / `recover()` close and reopen the port, cutting held queries.

It is driven by a real Consul client library (py-consul) in the tests.
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qs, urlsplit

from tests.fakehttp import FakeHandler, FakeServer


def parse_wait(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text or "")
    if m is None:
        raise ValueError(f"bad wait {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


class FakeConsul(FakeServer):
    def __init__(self, datacenter: str = "dc1"):
        super().__init__()
        self.datacenter = datacenter
        self.index = 1
        self.nodes: dict[str, dict] = {}
        self.services: dict[tuple[str, str], dict] = {}  # (node, service id) -> service
        self.checks: dict[tuple[str, str], dict] = {}  # (node, check id) -> check
        self.epoch = 0  # bumped by outage() to end held queries
        self.queries = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _cut(self) -> None:
        self.epoch += 1
        self.cond.notify_all()

    # ---- catalog ------------------------------------------------------------------------
    def _changed(self) -> None:
        self.index += 1
        self.cond.notify_all()

    def register(self, body: dict) -> None:
        """Field names are case-insensitive, as Consul's JSON decoding is."""
        body = _lower(body)
        with self.cond:
            node = body["node"]
            self.nodes[node] = {"Node": node, "Address": body.get("address", ""), "Datacenter": self.datacenter,
                                "ID": "", "TaggedAddresses": None, "Meta": body.get("nodemeta") or {}}
            service = body.get("service")
            if service:
                sid = service.get("id") or service["service"]
                self.services[(node, sid)] = {"ID": sid, "Service": service["service"],
                                              "Tags": service.get("tags") or [], "Address": service.get("address", ""),
                                              "Port": service.get("port", 0), "Meta": service.get("meta") or {},
                                              "CreateIndex": self.index + 1, "ModifyIndex": self.index + 1}
            checks = body.get("checks") or ([body["check"]] if body.get("check") else [])
            for check in checks:
                cid = check.get("checkid") or check["name"]
                self.checks[(node, cid)] = {"Node": node, "CheckID": cid, "Name": check.get("name", cid),
                                            "Status": check.get("status", "critical"),
                                            "ServiceID": check.get("serviceid", ""), "Output": check.get("output", "")}
            self._changed()

    def deregister(self, body: dict) -> None:
        body = _lower(body)
        with self.cond:
            node = body["node"]
            if body.get("serviceid"):
                self.services.pop((node, body["serviceid"]), None)
                for key in [k for k, c in self.checks.items() if k[0] == node and c["ServiceID"] == body["serviceid"]]:
                    del self.checks[key]
            elif body.get("checkid"):
                self.checks.pop((node, body["checkid"]), None)
            else:
                self.nodes.pop(node, None)
                self.services = {k: v for k, v in self.services.items() if k[0] != node}
                self.checks = {k: v for k, v in self.checks.items() if k[0] != node}
            self._changed()

    def health(self, name: str, passing: bool) -> list[dict]:
        out = []
        for (node, sid), service in sorted(self.services.items()):
            if service["Service"] != name:
                continue
            checks = [c for (n, _), c in sorted(self.checks.items())
                      if n == node and c["ServiceID"] in ("", sid)]
            if passing and any(c["Status"] != "passing" for c in checks):
                continue
            out.append({"Node": self.nodes.get(node, {"Node": node, "Address": ""}), "Service": service,
                        "Checks": checks})
        return out


def _lower(value):
    if isinstance(value, dict):
        return {k.lower(): _lower(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower(v) for v in value]
    return value


class _Handler(FakeHandler):
    fake: FakeConsul

    def _send(self, code: int, body, index: int | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
        if index is not None:
            self.send_header("X-Consul-Index", str(index))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        path = urlsplit(self.path).path
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if path == "/v1/catalog/register":
            self.fake.register(body)
        elif path == "/v1/catalog/deregister":
            self.fake.deregister(body)
        else:
            return self._send(404, "not found")
        self._send(200, True)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        m = re.fullmatch(r"/v1/(health|catalog)/service/([^/]+)", url.path)
        if m is None:
            return self._send(404, "not found")
        if q.get("dc", self.fake.datacenter) != self.fake.datacenter:
            return self._send(500, "No path to datacenter")
        try:
            wait = min(parse_wait(q.get("wait", "5m")), 600) if "index" in q else 0
            since = int(q.get("index", "0"))
        except ValueError as exc:
            return self._send(400, str(exc))
        consul = self.fake
        consul.queries += 1
        deadline = time.monotonic() + wait
        with consul.cond:
            epoch = consul.epoch
            while since and consul.index <= since and consul.epoch == epoch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                consul.cond.wait(left)
            if consul.epoch != epoch:
                self.close_connection = True
                return
            entries = consul.health(m.group(2), "passing" in q)
            index = consul.index
        if m.group(1) == "catalog":
            entries = [{**e["Node"], "ServiceID": e["Service"]["ID"], "ServiceName": e["Service"]["Service"],
                        "ServiceAddress": e["Service"]["Address"], "ServicePort": e["Service"]["Port"]}
                       for e in entries]
        self._send(200, entries, index)


FakeConsul.handler = _Handler
