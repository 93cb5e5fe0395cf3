"""A real HTTP/1.1 upstream for the tests (h11 on trio), run as its own process.

    python tests/upstream.py --name a    # prints "PORT <n>" once listening on 127.0.0.1

Paths:  /bytes/N (N bytes, Content-Length)   /chunked/N (chunked, with a trailer)
        /status/N   /delay/MS   /close (close-delimited body)   /upload (body size + sha256)
        anything else: JSON echo of method, path, headers, body size and requests served.
Every response carries x-upstream: NAME. `Upstream(name)` starts one as a child process
(the tests' fixtures and bench/endpoint_churn.py use it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys

import h11
import trio

CHUNK = 64 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)


async def send(stream, conn, event):
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def handle(stream: trio.SocketStream, name: str) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=256 * 1024)
    try:
        while True:
            event = await next_event(stream, conn)
            if isinstance(event, h11.ConnectionClosed) or event is None:
                return
            if not isinstance(event, h11.Request):
                return
            await respond(stream, conn, event, name)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, h11.RemoteProtocolError, trio.ClosedResourceError):
        return
    finally:
        await stream.aclose()


async def next_event(stream, conn):
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(CHUNK)
            conn.receive_data(data)
            continue
        if event is h11.PAUSED:
            return None
        return event


async def read_body(stream, conn):
    size, digest, trailers = 0, hashlib.sha256(), []
    while True:
        event = await next_event(stream, conn)
        if isinstance(event, h11.Data):
            size += len(event.data)
            digest.update(event.data)
        elif isinstance(event, h11.EndOfMessage):
            trailers = [(n.decode(), v.decode()) for n, v in event.headers]
            return size, digest.hexdigest(), trailers
        else:
            return size, digest.hexdigest(), trailers


SERVED = [0]


async def respond(stream, conn, req: h11.Request, name: str) -> None:
    SERVED[0] += 1
    path = req.target.decode()
    parts = path.split("?")[0].strip("/").split("/")
    size, sha, trailers = await read_body(stream, conn)
    base = [("x-upstream", name)]
    if parts[0] == "bytes" and len(parts) > 1:
        n = int(parts[1])
        await send(stream, conn, h11.Response(status_code=200, headers=base + [("content-length", str(n)), ("content-type", "application/octet-stream")]))
        if req.method != b"HEAD":
            while n > 0:
                piece = PATTERN[:min(n, CHUNK)]
                await send(stream, conn, h11.Data(data=piece))
                n -= len(piece)
        await send(stream, conn, h11.EndOfMessage())
        return
    if parts[0] == "chunked" and len(parts) > 1:
        n = int(parts[1])
        await send(stream, conn, h11.Response(status_code=200, headers=base + [("transfer-encoding", "chunked"), ("trailer", "x-trailer")]))
        while n > 0:
            piece = PATTERN[:min(n, CHUNK)]
            await send(stream, conn, h11.Data(data=piece))
            n -= len(piece)
        await send(stream, conn, h11.EndOfMessage(headers=[("x-trailer", "done")]))
        return
    if parts[0] == "close":
        body = b"close-delimited body"
        await stream.send_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\nx-upstream: " + name.encode() + b"\r\n\r\n" + body)
        await stream.aclose()
        raise trio.ClosedResourceError
    if parts[0] == "delay" and len(parts) > 1:
        await trio.sleep(int(parts[1]) / 1000)
    status = int(parts[1]) if parts[0] == "status" and len(parts) > 1 else 200
    echo = {
        "method": req.method.decode(), "path": path, "upstream": name,
        "headers": [[n.decode(), v.decode()] for n, v in req.headers],
        "body_size": size, "body_sha256": sha, "trailers": trailers, "served": SERVED[0],
    }
    body = json.dumps(echo).encode() if status not in (204, 304) else b""
    headers = base + [("content-type", "application/json"), ("server", "upstream"),
                      ("connection", "keep-alive"), ("x-hop", "1"), ("keep-alive", "timeout=5")]
    if status not in (204, 304):
        headers.append(("content-length", str(len(body))))
    await send(stream, conn, h11.Response(status_code=status, headers=headers))
    if req.method != b"HEAD" and body:
        await send(stream, conn, h11.Data(data=body))
    await send(stream, conn, h11.EndOfMessage())


async def main(port: int, name: str) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    print(f"PORT {listeners[0].socket.getsockname()[1]}", flush=True)
    await trio.serve_listeners(lambda s: handle(s, name), listeners)


class Upstream:
    """This file run as a child process; `port`, `service` ("127.0.0.1:PORT"), `stop()`."""

    def __init__(self, name: str):
        self.proc = subprocess.Popen([sys.executable, __file__, "--name", name], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("PORT "), line
        self.port = int(line.split()[1])
        self.service = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="upstream")
    a = ap.parse_args()
    trio.run(main, a.port, a.name)
