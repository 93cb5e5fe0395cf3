"""A callback reactor hosted in one trio task (DESIGN.md §4, Envoy's worker model).

Sockets are registered once with an edge-triggered `select.epoll`; the reactor task waits
on that epoll's fd with `trio.lowlevel.wait_readable`, then runs the handlers of every
ready socket in one batch and polls again before it waits. Under load a scheduler
round-trip (~4.5 µs here) is paid per batch instead of per socket wait, and no epoll_ctl
is made per read. Timers are one deadline per handler, kept in a heap with lazy deletion:
moving a deadline later costs an assignment, moving it earlier one heap push.

Slow paths (table watch, heartbeat, accept loops, signals) stay ordinary trio tasks in
the worker's nursery; they call into handlers directly, which is safe because trio runs
one task at a time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import select
import time

import trio
from trio.lowlevel import cancel_shielded_checkpoint, wait_readable

log = logging.getLogger("edge.worker")

EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP
EPOLLRDHUP, EPOLLET = select.EPOLLRDHUP, select.EPOLLET
READ_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR
# The peer closed (or the socket failed): reads must go on until they return 0 or fail,
# since no new edge will come for a FIN that arrived with the last data.
HUP_EVENTS = EPOLLRDHUP | EPOLLHUP | EPOLLERR
WRITE_EVENTS = EPOLLOUT | EPOLLHUP | EPOLLERR
MAX_EVENTS = 512


class Handler:
    """What the reactor calls. `on_event(mask)` runs for epoll events on the handler's
    socket, `on_timeout()` once its `deadline` (time.monotonic seconds) has passed, and
    `on_bug(exc)` when either raised: the handler decides how to fail (DESIGN.md §5)."""

    __slots__ = ("deadline", "scheduled", "closed")

    def __init__(self):
        self.deadline = math.inf
        self.scheduled = math.inf  # earliest deadline this handler has in the heap
        self.closed = False

    def on_event(self, mask: int) -> None:
        raise NotImplementedError

    def on_timeout(self) -> None:
        raise NotImplementedError

    def on_bug(self, exc: Exception) -> None:
        raise NotImplementedError


class Reactor:
    def __init__(self):
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        self._timers: list = []
        self._stale = 0  # heap entries whose handler closed or moved its deadline earlier
        self._seq = itertools.count()
        self.batches = 0  # loop turns that handled events: one scheduler round trip each
        self.events = 0

    def register(self, fd: int, handler: Handler) -> None:
        """Watch `fd` for reading and writing (edge-triggered) until `unregister`."""
        self._handlers[fd] = handler
        self._epoll.register(fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

    def unregister(self, fd: int) -> None:
        """Stop watching `fd`; call before closing it (its number may be reused at once)."""
        if self._handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass

    def set_deadline(self, handler: Handler, deadline: float) -> None:
        """Call handler.on_timeout() once `deadline` has passed (math.inf: never)."""
        handler.deadline = deadline
        if deadline < handler.scheduled:
            if handler.scheduled < math.inf:
                self._stale += 1  # its later entry stays in the heap until popped
            handler.scheduled = deadline
            heapq.heappush(self._timers, (deadline, next(self._seq), handler))

    def forget(self, handler: Handler) -> None:
        """A closed handler's timer entries are dead. When dead entries are the majority,
        the heap is rebuilt without them, so a stream of short connections with long
        idle timeouts cannot grow it (or keep their handlers alive) without bound."""
        if handler.scheduled < math.inf:
            handler.scheduled = math.inf
            self._stale += 1
        timers = self._timers
        if self._stale > 1024 and self._stale * 2 > len(timers):
            self._timers[:] = [t for t in timers if not t[2].closed and t[0] == t[2].scheduled]
            heapq.heapify(timers)
            self._stale = 0

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, handler = heapq.heappop(timers)
            if handler.closed or when != handler.scheduled:
                self._stale = max(0, self._stale - 1)
                continue  # superseded by an earlier entry, or its handler is gone
            handler.scheduled = math.inf
            if handler.deadline <= now:
                handler.deadline = math.inf
                try:
                    handler.on_timeout()
                except Exception as exc:
                    _failed(handler, exc)
                if handler.closed:
                    continue
            if handler.deadline < math.inf and handler.deadline < handler.scheduled:
                handler.scheduled = handler.deadline
                heapq.heappush(timers, (handler.deadline, next(self._seq), handler))

    async def run(self) -> None:
        """Serve events and timers until cancelled."""
        poll = self._epoll.poll
        handlers = self._handlers
        timers = self._timers
        epfd = self._epoll.fileno()
        while True:
            events = poll(0, MAX_EVENTS)
            now = time.monotonic()
            if events:
                self.batches += 1
                self.events += len(events)
                for fd, mask in events:
                    handler = handlers.get(fd)
                    if handler is None:
                        continue
                    try:
                        handler.on_event(mask)
                    except Exception as exc:
                        _failed(handler, exc)
            if timers and timers[0][0] <= now:
                self._fire_timers(now)
            if events:
                # let the accept loops and the table watch run between batches
                await cancel_shielded_checkpoint()
                continue
            if timers:
                with trio.move_on_at(trio.current_time() + max(0.0, timers[0][0] - now)):
                    await wait_readable(epfd)
            else:
                await wait_readable(epfd)



def send_or_keep(sock, out: list | None, data) -> list | None:
    """Send `data` on a non-blocking socket behind the bytes `out` still keeps (a write
    waits for EPOLLOUT then); returns what is kept now, None when everything went.
    Raises OSError (reset, broken pipe)."""
    if out:
        out.append(bytes(data))
        return out
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    return None if sent == len(data) else [bytes(memoryview(data)[sent:])]


def flush_kept(sock, out: list) -> list | None:
    """On EPOLLOUT: send what `out` keeps; returns what is still kept, or None."""
    return send_or_keep(sock, None, out[0] if len(out) == 1 else b"".join(out))


def _failed(handler: Handler, exc: Exception) -> None:
    """A handler raised: it decides how to fail; if that raises too, log it."""
    try:
        handler.on_bug(exc)
    except Exception:
        log.exception("handler %r failed while failing", handler)
