"""The admin app: anything but GET/HEAD only from loopback unless --admin-allow-remote-restart.

The ASGI app is called directly with the client address hypercorn would put in the scope;
tests/integration/test_limits.py does the same over TCP from this machine's own
non-loopback address."""

from __future__ import annotations

import pytest

from edge.supervisor.admin import is_loopback, make_app

REMOTE = ("10.1.2.3", 5000)


class View:
    """The supervisor's admin view, as little as the app asks of it."""

    def __init__(self, restart_answers=(True, False)):
        self.restart_answers = list(restart_answers)
        self.restarts = 0

    def ready(self):
        return True, "ready: generation 1\n"

    def config(self):
        return {"generation": 1, "workers": []}

    def diag(self):
        return {"version": "abc", "generation": 1, "resources": [], "errors": [], "routes": 0}

    def metrics(self):
        return {"edge_requests_total": 3}

    def restart_workers(self):
        self.restarts += 1
        return self.restart_answers.pop(0)

    def clusters(self):
        return []


async def call(app, method: str, path: str, client, query: bytes = b"") -> tuple[int, bytes]:
    scope = {"type": "http", "method": method, "path": path, "query_string": query, "headers": [],
             "client": client, "server": ("0.0.0.0", 8877), "scheme": "http", "http_version": "1.1"}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent
    assert start["type"] == "http.response.start" and body["type"] == "http.response.body"
    return start["status"], body["body"]


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.1.2.3", False), ("192.0.2.2", False), ("::ffff:10.1.2.3", False), ("fd00::2", False),
    ("fe80::1%eth0", False), ("0.0.0.0", False), ("localhost", False), ("", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback((host, 5000)) is loopback


def test_an_unknown_client_is_not_loopback():
    assert is_loopback(None) is False and is_loopback(()) is False


async def test_restart_from_another_host_is_403_and_restarts_nothing():
    view = View()
    app = make_app(view)
    status, body = await call(app, "POST", "/edge/v1/restart", REMOTE)
    assert status == 403 and view.restarts == 0
    assert b"only from loopback" in body and b"--admin-allow-remote-restart" in body
    assert b"EDGE_ADMIN_ALLOW_REMOTE_RESTART" in body
    assert (await call(app, "POST", "/edge/v1/restart", ("::ffff:10.1.2.3", 5000)))[0] == 403
    assert (await call(app, "POST", "/edge/v1/restart", None))[0] == 403  # who is calling is unknown
    for method in ("PUT", "DELETE", "PATCH", "POST"):  # anything that is not a read, wherever it goes
        assert (await call(app, method, "/edge/v1/config", REMOTE))[0] == 403
    assert view.restarts == 0


@pytest.mark.parametrize("path, query, status", [
    ("/ambassador/v0/check_ready", b"", 200),
    ("/ambassador/v0/check_alive", b"", 200),
    ("/metrics", b"", 200),
    ("/edge/v1/config", b"", 200),
    ("/edge/v1/clusters", b"", 200),
    ("/ambassador/v0/diag/", b"json=true", 200),
    ("/nope", b"", 404),
])
async def test_reads_from_another_host_are_answered(path, query, status):
    app = make_app(View())
    for method in ("GET", "HEAD"):
        assert (await call(app, method, path, REMOTE, query))[0] == status
    assert (await call(app, "GET", "/metrics", REMOTE))[1] == b"edge_requests_total 3\n"


@pytest.mark.parametrize("client", [("127.0.0.1", 40000), ("::1", 40000), ("::ffff:127.0.0.1", 40000)])
async def test_restart_from_loopback_is_202_then_409_while_one_runs(client):
    view = View()
    app = make_app(view)
    assert (await call(app, "POST", "/edge/v1/restart", client))[0] == 202
    assert (await call(app, "POST", "/edge/v1/restart", client))[0] == 409
    assert view.restarts == 2


async def test_allow_remote_restart_answers_other_hosts():
    view = View()
    app = make_app(view, allow_remote_restart=True)
    assert (await call(app, "POST", "/edge/v1/restart", REMOTE)) == (202, b"rolling restart started\n")
    assert (await call(app, "POST", "/edge/v1/restart", REMOTE))[0] == 409
    assert view.restarts == 2
    assert (await call(app, "GET", "/metrics", REMOTE))[0] == 200
