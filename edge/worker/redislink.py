"""The fleet rate-limit store's connection: one per worker, to Redis, in the reactor.

`decide(matched, callback)` calls `callback(refusal or None, limits to inject)` exactly
once: with Redis' answer (EVALSHA of edge.ratelimit.fleet's script, one per matched limit,
pipelined), or, when Redis is unreachable or its answer misses the time budget, with the
failure mode's: open (allow) or deny (refuse). A key Redis refused is refused locally
until it can be allowed again, without asking. Redis going away never hangs a request:
pending requests fail over at once, and the link reconnects in the background with
exponential backoff (AUTH, SELECT and SCRIPT LOAD first on every new connection).
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from edge.backoff import Backoff
from edge.ratelimit import fleet
from edge.ratelimit.algorithm import Decision
from edge.ratelimit.limiter import Refusal
from edge.ratelimit.resp import ProtocolError, ReplyParser, RespError, encode
from edge.worker.reactor import HUP_EVENTS, READ_EVENTS, WRITE_EVENTS, Handler, Reactor, flush_kept, send_or_keep

log = logging.getLogger("edge.worker.redis")
WARN_EVERY = 10.0


class _Waiter:
    __slots__ = ("matched", "now", "callback", "deadline", "replies", "done", "internal")

    def __init__(self, matched, now, callback, deadline, internal=False):
        self.matched, self.now, self.callback, self.deadline = matched, now, callback, deadline
        self.replies = []
        self.done = False
        self.internal = internal  # SCRIPT LOAD / SELECT: no request waits on it


class RedisLink(Handler):
    __slots__ = ("reactor", "target", "address", "budget", "fail_open", "clock", "sock", "fd", "connected", "out",
                 "parser", "waiters", "over", "retry_at", "backoff", "answered", "failures", "timeouts",
                 "last_warning", "readable", "over_log_only")
    synchronous = False  # answers in `decide`'s callback, when Redis has answered

    def __init__(self, reactor: Reactor, target: RedisTarget, budget: float, fail_open: bool, clock=time.time):
        super().__init__()
        self.reactor, self.target, self.budget, self.fail_open = reactor, target, budget, fail_open
        self.address = (target.host, target.port)
        self.clock = clock
        self.sock: socket.socket | None = None
        self.fd = -1
        self.connected = False
        self.readable = False
        self.out = None
        self.parser = ReplyParser()
        self.waiters: deque[_Waiter] = deque()
        self.over: dict[str, float] = {}  # counter key -> refused until (clock time)
        self.retry_at = 0.0
        self.backoff = Backoff(first=0.1, cap=5.0)
        self.answered = self.failures = self.timeouts = self.over_log_only = 0
        self.last_warning = -math.inf

    # ---- the request side ---------------------------------------------------------------
    def decide(self, matched, callback) -> None:
        now = self.clock()
        for rule, text in matched:
            held = self.over.get(text)
            if held is not None:
                if held > now and rule.enforce:
                    reset = max(1, math.ceil(held - now))
                    callback(Refusal(rule, Decision(False, rule.limit, 0, reset)), [])
                    return
                if held <= now:
                    del self.over[text]
        if self.sock is None:
            self._connect()
        if not self.connected and self.sock is None:
            self._fail(matched, callback, "not connected")
            return
        waiter = _Waiter(matched, now, callback, time.monotonic() + self.budget)
        self._send(b"".join(fleet.command(rule, text, now) for rule, text in matched))
        if self.sock is None:  # the send failed and closed us
            self._fail(matched, callback, "connection lost")
            return
        self.waiters.append(waiter)
        if waiter.deadline < self.deadline:
            self.reactor.set_deadline(self, waiter.deadline)

    def _fail(self, matched, callback, why: str) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self.last_warning >= WARN_EVERY:
            self.last_warning = now
            log.warning("rate-limit store %s:%d unavailable (%s): failing %s", *self.address, why,
                        "open" if self.fail_open else "closed (deny)")
        if self.fail_open:
            callback(None, [])
        else:
            rule = next((r for r, _ in matched if r.enforce), matched[0][0])
            callback(Refusal(rule, Decision(False, rule.limit, 0, 1)), [])

    def _answer(self, waiter: _Waiter) -> None:
        refusal, inject = None, []
        for (rule, text), reply in zip(waiter.matched, waiter.replies):
            result = fleet.interpret(reply, rule, waiter.now)
            if result is None:
                self._fail(waiter.matched, waiter.callback, f"bad answer {reply!r:.80}")
                self._disconnect()  # NOSCRIPT after a flush, or worse: start over
                return
            decision, current, previous = result
            if not decision.allowed:
                if not rule.enforce:
                    self.over_log_only += 1
                else:
                    if len(self.over) >= 65536:
                        self.over.clear()  # a bound, not a policy: entries only save Redis calls
                    self.over[text] = fleet.refused_until(decision, rule, current, previous, waiter.now)
                    if refusal is None:
                        refusal = Refusal(rule, decision)
                continue
            if rule.inject_response_headers:
                inject.append(rule)
        self.answered += 1
        waiter.callback(refusal, [] if refusal is not None else inject)

    # ---- the connection -----------------------------------------------------------------
    def _connect(self) -> None:
        if time.monotonic() < self.retry_at:
            return
        sock = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(self.address)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._schedule_retry()
            return
        self.sock, self.fd, self.connected = sock, sock.fileno(), err == 0
        self.closed = False
        self.parser = ReplyParser()
        self.reactor.register(self.fd, self)
        setup = self.target.setup_commands()
        self._send(b"".join(setup))
        for _ in setup:
            self.waiters.append(_Waiter((), 0.0, None, time.monotonic() + max(self.budget, 1.0), internal=True))
        self.reactor.set_deadline(self, time.monotonic() + max(self.budget, 1.0))

    def _schedule_retry(self) -> None:
        self.retry_at = time.monotonic() + self.backoff.next()

    def _send(self, data: bytes) -> None:
        try:
            self.out = send_or_keep(self.sock, self.out, data)
        except OSError:
            self._disconnect()

    def _disconnect(self) -> None:
        if self.sock is not None:
            self.reactor.unregister(self.fd)
            self.sock.close()
            self.sock, self.fd, self.connected, self.out = None, -1, False, None
            self._schedule_retry()
        waiters, self.waiters = self.waiters, deque()
        for w in waiters:
            if not w.done and not w.internal:
                w.done = True
                self._fail(w.matched, w.callback, "connection lost")

    def on_event(self, mask: int) -> None:
        if mask & WRITE_EVENTS:
            if not self.connected:
                if self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._disconnect()
                    return
                self.connected = True
                self.backoff.reset()
            if self.out:
                try:
                    self.out = flush_kept(self.sock, self.out)
                except OSError:
                    self._disconnect()
                    return
        if mask & (READ_EVENTS | HUP_EVENTS):
            self._read()

    def _read(self) -> None:
        while self.sock is not None:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                self._disconnect()
                return
            if not data:
                self._disconnect()
                return
            try:
                replies = self.parser.feed(data)
            except ProtocolError:
                self._disconnect()
                return
            for reply in replies:
                if not self.waiters:
                    self._disconnect()  # an answer nobody asked for
                    return
                w = self.waiters[0]
                w.replies.append(reply)
                if len(w.replies) >= max(1, len(w.matched)):
                    self.waiters.popleft()
                    if w.internal:
                        if isinstance(reply, RespError):
                            log.warning("rate-limit store setup failed: %s", reply.message)
                            self._disconnect()
                            return
                    elif not w.done:
                        w.done = True
                        self._answer(w)
            self._rearm()

    def _rearm(self) -> None:
        pending = [w.deadline for w in self.waiters if not w.done]
        self.reactor.set_deadline(self, min(pending) if pending else math.inf)

    def on_timeout(self) -> None:
        now = time.monotonic()
        expired_setup = any(w.internal and w.deadline <= now for w in self.waiters)
        for w in self.waiters:
            if not w.done and not w.internal and w.deadline <= now:
                w.done = True  # its replies, when they come, are read and dropped
                self.timeouts += 1
                self._fail(w.matched, w.callback, "no answer within the time budget")
        if expired_setup:
            self._disconnect()
        self._rearm()

    def on_bug(self, exc: Exception) -> None:
        log.error("rate-limit store link failed", exc_info=exc)
        self._disconnect()

    def statistics(self) -> dict:
        return {"connected": self.connected, "answered": self.answered, "failures": self.failures,
                "timeouts": self.timeouts, "pending": len(self.waiters), "over_limit_cached": len(self.over)}


@dataclass(frozen=True)
class RedisTarget:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None

    def setup_commands(self) -> list[bytes]:
        """What a new connection sends before anything else: AUTH, SELECT, SCRIPT LOAD."""
        commands = []
        if self.password is not None:
            commands.append(encode(b"AUTH", *([self.username] if self.username else []), self.password))
        if self.db:
            commands.append(encode(b"SELECT", self.db))
        commands.append(fleet.load_script())
        return commands


def parse_redis_url(url: str) -> RedisTarget:
    """redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]. Raises ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], got {url!r}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"the database must be a number, got {db!r}")
    return RedisTarget(parts.hostname, parts.port or 6379, int(db) if db else 0,
                       unquote(parts.username) if parts.username else None,
                       unquote(parts.password) if parts.password is not None else None)
