"""Descriptors from a request and the limits they match. Pure (no clock, no shared memory).

A Mapping's label group gives one descriptor per request: its entries in order, each a
(key, value) pair; a `request_headers` entry whose header is absent drops the whole
descriptor, unless it says `omit_if_not_present` (then just that entry goes). A RateLimit
limit matches a descriptor of its domain with exactly its keys, in order, and the same
values where the pattern gives one; where it gives none, each distinct value has its own
counter (the counter key carries the values).
"""

from __future__ import annotations

from edge.model import LabelGroup, RateLimitRule


class RuleIndex:
    """The table's limits by (domain, descriptor keys), built once per table generation."""

    def __init__(self, rules: tuple[RateLimitRule, ...]):
        # (domain, keys) -> [(rule, [(position, required value)])]
        self.by_shape: dict[tuple, list[tuple[RateLimitRule, list[tuple[int, str]]]]] = {}
        for rule in rules:
            required = [(i, e.value) for i, e in enumerate(rule.pattern) if e.value is not None]
            self.by_shape.setdefault((rule.domain, tuple(e.key for e in rule.pattern)), []).append((rule, required))

    def matches(self, domain: str, keys: tuple[str, ...], values: list[str]) -> list[tuple[RateLimitRule, str]]:
        """(limit, counter key) for every limit the descriptor (keys, values) matches."""
        rules = self.by_shape.get((domain, keys))
        if not rules:
            return []
        out = []
        for rule, required in rules:
            for i, value in required:
                if values[i] != value:
                    break
            else:
                out.append((rule, rule.id + "\x00" + "\x00".join(values)))
        return out


def descriptors(groups: tuple[LabelGroup, ...], headers: list, remote: str, source: str,
                destination: str) -> list[tuple[str, tuple[str, ...], list[str]]]:
    """(domain, keys, values) for each label group that yields a descriptor for this
    request. `headers` are the request's [(lower-cased name bytes, value bytes)]."""
    out = []
    by_name = None
    for group in groups:
        keys = []
        values = []
        for action in group.actions:
            kind = action.kind
            if kind == "generic_key":
                keys.append(action.key)
                values.append(action.value)
            elif kind == "remote_address":
                keys.append(action.key)
                values.append(remote)
            elif kind == "request_headers":
                if by_name is None:
                    by_name = {}
                    for name, value in headers:
                        by_name.setdefault(name, value)
                value = by_name.get(action.header.encode("latin-1"))
                if value is None:
                    if action.omit_if_not_present:
                        continue
                    break  # Envoy's rule: a missing header drops the descriptor
                keys.append(action.key)
                values.append(value.decode("latin-1"))
            else:
                keys.append(action.key)
                values.append(source if kind == "source_cluster" else destination)
        else:
            if keys:
                out.append((group.domain, tuple(keys), values))
    return out
