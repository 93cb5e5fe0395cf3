"""The worker's contract, declared once: its command-line options and control messages.

The supervisor (arbiter) writes a WorkerOptions as argv with `to_argv()`; the worker reads
it back with `from_argv()`. Each default is declared here only: the supervisor's Options and
the `edge serve` command line take theirs from `DEFAULTS`. Neither `edge.supervisor` nor
`edge.worker` is imported here, so both may import this module.

Control messages travel on the worker's SOCK_SEQPACKET pair, one message per packet:
    T          a new table is published (the worker also polls, as a fallback)
    L<port>    listen on `port`: one listening socket fd attached (SCM_RIGHTS)
    U<port>    stop listening on `port`
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from typing import Callable, Mapping

# The Redis URL goes to workers through the environment, never argv: it may carry a
# password, and argv is public (ps, /proc/PID/cmdline).
RATELIMIT_REDIS_ENV = "EDGE_RATELIMIT_REDIS"
# The TLS session-ticket keys (80 bytes as 160 hex digits) every worker encrypts tickets
# with, so a client resumes on any worker: also secret, also through the environment. The
# supervisor makes one at start unless the operator set it (the same keys on several
# gateways let clients resume across them, as nginx's ssl_session_ticket_key does).
TLS_TICKET_KEYS_ENV = "EDGE_TLS_TICKET_KEYS"
TLS_TICKET_KEYS_SIZE = 80
FAILURE_MODES = ("open", "deny")


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class WorkerOptions:
    # one worker process: set by the arbiter for each process it starts
    slot: int = _opt(0, "worker slot: which listening socket of each port")
    cell: int | None = _opt(None, "stats cell (default: the slot's own)")
    routes: str = _opt("", "routes segment name")
    stats: str = _opt("", "stats segment name")
    ctrl: int = _opt(-1, "fd of the control socket (SOCK_SEQPACKET)")
    listen: tuple[tuple[int, int], ...] = _opt((), "PORT:FD of an inherited listening socket (repeatable)",
                                               repeat=True)
    # the same for every worker: set by the supervisor from `edge serve`'s options
    header_timeout: float = _opt(10.0, "seconds a client has to send its request head, else 408")
    idle_timeout: float = _opt(300.0, "seconds an idle keep-alive client connection stays open")
    send_timeout: float = _opt(60.0, "seconds a client may take none of a response edge holds for it "
                                     "(an HTTP/2 window kept shut) before its connection is closed")
    drain_timeout: float = _opt(30.0, "seconds in-flight requests get on SIGTERM")
    log_level: str = _opt("INFO", "logging level")
    ratelimit: str | None = _opt(None, "rate-limit counter segment name")
    ratelimit_budget_ms: float = _opt(20.0, "how long a request waits for Redis before the failure mode applies")
    ratelimit_failure_mode: str = _opt("open", "Redis unavailable: allow (open) or refuse (deny) limited requests",
                                       choices=FAILURE_MODES)

    def to_argv(self) -> list[str]:
        """Every field that is not None, as `--name value` (repeatable ones once per item)."""
        argv: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            items = value if f.metadata.get("repeat") else (value,)
            for item in items:
                argv += [flag(f.name), _format(item)]
        return argv

    @classmethod
    def from_argv(cls, argv: list[str]) -> "WorkerOptions":
        values = vars(parser().parse_args(argv))
        values["listen"] = tuple(values["listen"])  # frozen and hashable
        return cls(**values)


DEFAULTS = WorkerOptions()


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _format(value) -> str:
    if isinstance(value, tuple):  # a listen item
        return ":".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)  # repr: floats round-trip exactly


def _port_fd(text: str) -> tuple[int, int]:
    port, fd = text.split(":")
    return int(port), int(fd)


_SCALARS = {"int": int, "float": float, "str": str}


def _parse(f) -> Callable[[str], object]:
    """How argv text becomes field `f`'s value, from its annotation ("float", "int | None"):
    a repeatable field is a PORT:FD item. A field of another type is a KeyError here."""
    return _port_fd if f.metadata.get("repeat") else _SCALARS[f.type.split(" | ")[0]]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-worker", description="an edge worker process (started by `edge serve`)")
    for f in fields(WorkerOptions):
        kind = _parse(f)
        if f.metadata.get("repeat"):
            p.add_argument(flag(f.name), type=kind, action="append", default=[], help=f.metadata["help"])
        else:
            p.add_argument(flag(f.name), type=kind, default=f.default, choices=f.metadata.get("choices"),
                           help=f.metadata["help"])
    return p


def ratelimit_redis(environ: Mapping[str, str] = os.environ) -> str | None:
    return environ.get(RATELIMIT_REDIS_ENV) or None


def tls_ticket_keys(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The ticket keys, or None when unset. Raises ValueError when they are malformed."""
    text = environ.get(TLS_TICKET_KEYS_ENV)
    if not text:
        return None
    keys = bytes.fromhex(text)
    if len(keys) != TLS_TICKET_KEYS_SIZE:
        raise ValueError(f"{TLS_TICKET_KEYS_ENV} must be {TLS_TICKET_KEYS_SIZE * 2} hex digits, got {len(text)}")
    return keys


# ---- control messages ----------------------------------------------------------------------

TABLE = b"T"
LISTEN = b"L"
UNLISTEN = b"U"
MAX_MESSAGE = 64  # bytes of one control message
MAX_FDS = 4  # fds one message may carry


def table_message() -> bytes:
    return TABLE


def listen_message(port: int) -> bytes:
    """Sent with the port's listening socket attached (socket.send_fds)."""
    return LISTEN + b"%d" % port


def unlisten_message(port: int) -> bytes:
    return UNLISTEN + b"%d" % port


def parse_message(msg: bytes) -> tuple[bytes, int | None]:
    """(kind, port): (TABLE, None), (LISTEN, port) or (UNLISTEN, port). ValueError otherwise."""
    kind, rest = msg[:1], msg[1:]
    if kind == TABLE and not rest:
        return TABLE, None
    if kind in (LISTEN, UNLISTEN) and rest.isdigit():
        return kind, int(rest)
    raise ValueError(f"unknown control message {msg[:MAX_MESSAGE]!r}")
