"""Run wrk and read its report."""

from __future__ import annotations

import re
import subprocess

_SCALE = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_BYTES = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}


def _ms(text: str, label: str) -> float:
    m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", text)
    return float(m.group(1)) * _SCALE[m.group(2)]


def run(port: int, path: str, *, connections: int, duration: float, close: bool = False,
        host: str | None = None, tls: bool = False) -> dict:
    """wrk -t2 against 127.0.0.1:port; `close` sends Connection: close (a new
    connection per request: over `tls`, a full handshake each, as wrk never resumes a
    session), `host` a Host header, `tls` https (wrk does not verify the certificate).
    Returns requests, rps, p50/p99 ms, bytes/s and errors."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{int(duration)}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(out, "50%"),
        "p99_ms": _ms(out, "99%"),
        "bytes_per_s": float(transfer.group(1)) * _BYTES[transfer.group(2)],
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(x) for x in socket_errors.groups()) if socket_errors else 0),
    }
