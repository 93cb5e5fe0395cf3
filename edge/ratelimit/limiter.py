"""The worker's rate limiter: descriptors -> counters in the node-local store -> decision.

`check` costs a few microseconds (python -m bench.micro: ratelimit_check): one hash per
counter key (cached), one read of every cell's bucket, and one write to our own cell when
the request is allowed. Only allowed requests are counted, so a refused flood does not keep
a key refused past its window. LogOnly limits count and never refuse.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from edge.model import RateLimitRule
from edge.ratelimit import algorithm
from edge.ratelimit.store import CounterStore

_KEY_CACHE_MAX = 65536
ALLOWED: tuple = (None, ())  # check's answer for an allowed request with no headers to inject


@dataclass(frozen=True)
class Refusal:
    rule: RateLimitRule
    decision: algorithm.Decision


class Limiter:
    failures = 0  # the shared-memory store has no failure mode to fall back on
    synchronous = True  # answers in `check`; the fleet store's link answers later, in `decide`

    def __init__(self, store: CounterStore, cell: int, clock=time.time):
        self.store = store
        self.cell = cell
        self.clock = clock
        self._keys: dict[str, int] = {}
        self.over_log_only = 0

    def key(self, text: str) -> int:
        """A stable 64-bit key (the same in every worker and after restarts), never 0."""
        key = self._keys.get(text)
        if key is None:
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            key = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") | 1
            self._keys[text] = key
        return key

    def check(self, matched: list[tuple[RateLimitRule, str]]) -> tuple[Refusal | None, list[RateLimitRule]]:
        """Decide one request. Returns (the refusal, or None when allowed; the limits whose
        response headers apply). Counts the request in every matched limit when allowed."""
        now = self.clock()
        store = self.store
        if len(matched) == 1:  # the usual case: one read of the row, one write
            rule, text = matched[0]
            key = self._keys.get(text) or self.key(text)
            if not store.take(self.cell, key, now, rule.unit_seconds, rule.limit, rule.enforce):
                if rule.enforce:
                    current, previous = store.counts(key, int(now // rule.unit_seconds))
                    return Refusal(rule, algorithm.decide(current, previous, now, rule.unit_seconds, rule.limit)), []
                self.over_log_only += 1
            return (None, [rule]) if rule.inject_response_headers else ALLOWED
        refusal = None
        counted = []
        for rule, text in matched:  # decide first: nothing is counted for a refused request
            key = self._keys.get(text) or self.key(text)
            unit = rule.unit_seconds
            # algorithm.window and algorithm.estimate, inlined: this runs per request
            index = int(now // unit)
            current, previous = store.counts(key, index)
            if current + previous * (1.0 - (now - index * unit) / unit) >= rule.limit:
                if rule.enforce:
                    if refusal is None:  # the full decision (headers) only for a refusal
                        refusal = Refusal(rule, algorithm.decide(current, previous, now, unit, rule.limit))
                    continue
                self.over_log_only += 1
            counted.append((key, index, rule))
        if refusal is not None:
            return refusal, []
        inject = []
        cell = self.cell
        for key, index, rule in counted:
            store.add(cell, key, index)
            if rule.inject_response_headers:
                inject.append(rule)
        return None, inject
