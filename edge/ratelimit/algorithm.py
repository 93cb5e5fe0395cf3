"""The sliding-window counter, pure: the clock is an argument.

Time is cut into windows of `unit` seconds (window n covers [n*unit, (n+1)*unit)). A key
keeps the count of its current window and of the one before; the rate at time t is
estimated as

    current + previous * (1 - elapsed fraction of the current window)

and a request is allowed while that estimate is below the limit. Under steady overload
each window lets exactly `limit` requests through (the k-th once the previous window's
weight has fallen by k); a burst at the end of one window cannot be followed by a full
burst at the start of the next (the fixed window's flaw). The estimate is never below
`current`, so no window ever counts more than `limit` allowed requests from one writer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int  # requests left in the window after this one (0 when refused)
    reset: int  # whole seconds until the current window ends (RateLimit-Reset, Retry-After)


def window(now: float, unit: int) -> tuple[int, float]:
    """(window index, fraction of it elapsed) at time `now`."""
    index = int(now // unit)
    return index, (now - index * unit) / unit


def estimate(current: int, previous: int, fraction: float) -> float:
    return current + previous * (1.0 - fraction)


def decide(current: int, previous: int, now: float, unit: int, limit: int) -> Decision:
    """Whether one more request fits, given the counts already taken (not counting it)."""
    index, fraction = window(now, unit)
    reset = max(1, math.ceil((index + 1) * unit - now))
    used = estimate(current, previous, fraction)
    if used >= limit:
        return Decision(False, limit, 0, reset)
    return Decision(True, limit, max(0, math.ceil(limit - used) - 1), reset)
