"""The fleet store's logic, sans-IO: what to ask Redis for a request and what the answer
means. The same sliding window as the node-local store (edge.ratelimit.algorithm), run
atomically inside Redis by a Lua script, so every edge on one Redis shares one exact
count: the script reads the current and previous window's counters, and only when the
estimate is under the limit increments the current one (with an expiry of two windows).

Keys already over their limit are remembered locally until the estimate can fall under the
limit again, so a flood on one key does not become a flood of Redis calls.
"""

from __future__ import annotations

import hashlib

from edge.model import RateLimitRule
from edge.ratelimit import algorithm
from edge.ratelimit.resp import RespError, encode

SCRIPT = b"""
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
if cur + prev * tonumber(ARGV[1]) >= tonumber(ARGV[2]) then
  return {0, cur, prev}
end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, cur + 1, prev}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT).hexdigest().encode()
PREFIX = "edge:rl:"


def command(rule: RateLimitRule, text: str, now: float) -> bytes:
    """The EVALSHA deciding `text` (a counter key) under `rule` at `now`."""
    unit = rule.unit_seconds
    index, fraction = algorithm.window(now, unit)
    base = PREFIX + text.replace("\x00", "|")
    return encode(b"EVALSHA", SCRIPT_SHA, 2, f"{base}:{index}", f"{base}:{index - 1}",
                  repr(1.0 - fraction), rule.limit, 2 * unit)


def load_script() -> bytes:
    return encode(b"SCRIPT", b"LOAD", SCRIPT)


def interpret(reply, rule: RateLimitRule, now: float) -> tuple[algorithm.Decision, int, int] | None:
    """(decision, current count, previous count) of a script answer; None when the reply
    is not one (NOSCRIPT, any error): the caller treats that as Redis being unavailable."""
    if isinstance(reply, RespError) or not isinstance(reply, list) or len(reply) != 3:
        return None
    allowed, current, previous = reply
    if not all(isinstance(v, int) for v in reply):
        return None
    before = current - 1 if allowed else current  # the decision is about the counts before this request
    decision = algorithm.decide(before, previous, now, rule.unit_seconds, rule.limit)
    if bool(allowed) != decision.allowed:  # both sides agree unless the clocks differ a lot
        decision = algorithm.Decision(bool(allowed), decision.limit, 0 if not allowed else decision.remaining,
                                      decision.reset)
    return decision, current, previous


def refused_until(decision: algorithm.Decision, rule: RateLimitRule, current: int, previous: int,
                  now: float) -> float:
    """When a refused key could be allowed again: the end of the window if the current
    count alone fills the limit, else the moment the previous window's weight has fallen
    enough."""
    unit = rule.unit_seconds
    index, _ = algorithm.window(now, unit)
    end = (index + 1) * unit
    if current >= rule.limit or previous <= 0:
        return end
    fraction_needed = 1.0 - (rule.limit - current) / previous
    return min(end, index * unit + fraction_needed * unit)
