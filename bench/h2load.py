"""Run h2load (nghttp2's HTTP/2 load generator) and read its report.

A fixed duration per run (`-D`) after a warm-up in the same connections (`--warm-up-time`):
h2load counts only the requests of the main duration and says on stdout when it starts and
ends in each thread, so `snapshot` (the proxy's CPU time, say) is taken right then and
covers the same requests. Latencies are the percentiles of h2load's per-request log, which
holds the main duration's requests only. h2load does not verify certificates.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run(port: int, path: str, *, clients: int, streams: int, duration: float, warm_up: float = 1.0,
        tls: bool = True, threads: int = 2, snapshot: Callable[[], Any] = lambda: None,
        data: bytes | None = None, headers: tuple[str, ...] = ()) -> tuple[dict, tuple]:
    """h2load -t`threads` -c`clients` -m`streams` against 127.0.0.1:port (https: h2 via ALPN,
    which is checked; else h2c with prior knowledge) for `warm_up` then `duration` seconds.
    Returns requests, rps, p50/p99 ms, bytes/s (everything received: frames' headers and
    payloads), errors (every finished request without a 2xx status: failed, errored, 3xx)
    with h2load's own counts beside (and its output, when there were errors), and
    `snapshot()` taken when the main duration had started, and was over, in every thread.
    `data`: every request is a POST of these bytes; `headers`: added ("name: value")."""
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{path}"
    with tempfile.TemporaryDirectory(prefix="edge-h2load-") as tmp:
        log = Path(tmp) / "requests.tsv"
        cmd = ["h2load", f"-t{threads}", f"-c{clients}", f"-m{streams}", f"-D{int(duration)}",
               f"--log-file={log}", url]
        if warm_up:
            cmd.insert(-1, f"--warm-up-time={warm_up:g}")
        if data is not None:
            (Path(tmp) / "body").write_bytes(data)
            cmd[-1:-1] = ["-d", str(Path(tmp) / "body")]
        for header in headers:
            cmd[-1:-1] = ["-H", header]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines, started, over, snapshots = [], 0, 0, []
        for line in proc.stdout:  # h2load flushes every line of its progress
            lines.append(line)
            started += line.startswith("Main benchmark duration is started")
            over += line.startswith("Main benchmark duration is over")
            if (started == threads and not snapshots) or (over == threads and len(snapshots) == 1):
                snapshots.append(snapshot())
        if proc.wait() != 0 or len(snapshots) != 2:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(lines)}")
        durations = sorted(int(row.split("\t")[2]) for row in log.read_text().splitlines() if row)
    out = "".join(lines)
    protocol = re.search(r"Application protocol: (\S+)", out)
    if tls and (protocol is None or protocol.group(1) != "h2"):
        raise RuntimeError(f"{url} did not negotiate h2 by ALPN:\n{out}")
    rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", out)
    _, started_n, done, succeeded, failed, errored, timeout = map(int, counts.groups())
    statuses = dict((k, int(v)) for v, k in re.findall(r"(\d+) ([2-5]xx)", out.split("status codes:", 1)[1]
                                                       .splitlines()[0]))
    traffic = int(re.search(r"traffic: \S+ \((\d+)\) total", out).group(1))

    def percentile(q: float) -> float:
        return durations[min(len(durations) - 1, int(q * len(durations)))] / 1000 if durations else 0.0

    result = {
        "requests": done,
        "rps": rps,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "bytes_per_s": traffic / duration,
        # errored is a subset of failed, which also holds 4xx and 5xx (h2load counts 3xx as succeeded).
        # Not done - 2xx: h2load counts a status when the head arrives, so a response with trailers
        # still open at the end has its 2xx counted and is not done
        "errors": failed + timeout + statuses["3xx"],
        "h2load": {"started": started_n, "done": done, "succeeded": succeeded, "failed": failed,
                   "errored": errored, "timeout": timeout, "status_codes": statuses},
    }
    if result["errors"]:  # h2load's whole report (its per-connection complaints included), for whoever reads the JSON
        result["output"] = out
    return result, tuple(snapshots)
