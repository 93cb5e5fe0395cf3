"""DNS resolution of cluster hosts, in the supervisor (workers never resolve names)."""

from __future__ import annotations

import logging
import socket

import trio

log = logging.getLogger("edge.resolver")


async def resolve_one(name: str, timeout: float = 5.0) -> tuple[str, ...] | None:
    """IPv4 addresses of `name` (IPv6 only when it has no IPv4), sorted; None on failure."""
    with trio.move_on_after(timeout):
        try:
            infos = await trio.socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            log.warning("cannot resolve %s: %s", name, exc)
            return None
        v4 = sorted({i[4][0] for i in infos if i[0] == socket.AF_INET})
        v6 = sorted({i[4][0] for i in infos if i[0] == socket.AF_INET6})
        return tuple(v4 or v6)
    log.warning("resolving %s timed out", name)
    return None


async def resolve_all(names: list[str], previous: dict[str, tuple[str, ...]]) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """Resolve `names` concurrently. A failed name keeps its previous addresses.

    Returns (name -> addresses, names that failed).
    """
    results: dict[str, tuple[str, ...] | None] = {}

    async def one(name: str) -> None:
        results[name] = await resolve_one(name)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    resolved, failed = {}, []
    for name in names:
        addrs = results.get(name)
        if addrs is None:
            failed.append(name)
            addrs = previous.get(name, ())
        resolved[name] = addrs
    return resolved, failed
