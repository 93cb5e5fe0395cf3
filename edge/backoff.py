"""Exponential back-off with full jitter, for every reconnecting loop (Kubernetes watches,
Consul queries, Ingress status writes, the workers' Redis link)."""

from __future__ import annotations

import random


class Backoff:
    """Exponential back-off with full jitter: first, 2x first, ... up to cap."""

    def __init__(self, first: float = 0.1, cap: float = 5.0):
        self.first, self.cap, self.attempt = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * (2 ** self.attempt))
        if delay < self.cap:
            self.attempt += 1  # no further: 2 ** attempt overflows a float after ~1,000 failures
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0
