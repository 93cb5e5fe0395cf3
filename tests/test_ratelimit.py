"""Rate limiting, pure parts and the shared-memory store: fake clocks, exact windows."""

from __future__ import annotations

import secrets

import pytest

from edge.model import LabelAction, LabelGroup, PatternEntry, RateLimitRule
from edge.ratelimit import algorithm
from edge.ratelimit.descriptors import RuleIndex, descriptors
from edge.ratelimit.limiter import Limiter
from edge.ratelimit.store import PROBES, CounterStore
from edge.resources.base import Invalid, RawObject
from edge.resources.ratelimit import parse_labels, parse_ratelimit


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store():
    s = CounterStore(f"edge-test-{secrets.token_hex(4)}-rl", cells=4, buckets=64, create=True)
    yield s
    s.close()


def rule(rate=5, unit=1, values=("backend",), enforce=True, keys=("generic_key",), burst=1.0) -> RateLimitRule:
    return RateLimitRule(f"default/rl#{rate}", "ambassador", tuple(PatternEntry(k, v) for k, v in zip(keys, values)),
                         rate, unit, int(rate * burst), enforce, (), (), None)


def test_windows_roll_over_exactly_with_a_fake_clock():
    assert algorithm.window(119.999, 60) == (1, pytest.approx(59.999 / 60))
    assert algorithm.window(120.0, 60) == (2, 0.0)
    # the previous window's count weighs (1 - elapsed fraction) of it
    assert algorithm.decide(0, 10, 120.0, 60, 10).allowed is False
    assert algorithm.decide(0, 10, 120.001, 60, 10).allowed is True  # 9.998 used: below 10
    assert algorithm.decide(5, 10, 150.0, 60, 10).allowed is False  # 5 + 5 used
    assert algorithm.decide(5, 10, 150.001, 60, 10).allowed is True
    d = algorithm.decide(3, 0, 150.5, 60, 10)
    assert (d.allowed, d.remaining, d.reset) == (True, 6, 30)  # the window ends at 180


def test_steady_overload_lets_exactly_the_limit_through_each_window(store):
    clock = Clock(3600.0)
    limiter = Limiter(store, 0, clock)
    r = rule(rate=10, unit=60)
    allowed_per_window = {}
    for step in range(6000):  # 10 minutes, one request every 0.1 s
        clock.now = 3600.0 + step * 0.1
        refused, _ = limiter.check([(r, "k")])
        if refused is None:
            w = int(clock.now // 60)
            allowed_per_window[w] = allowed_per_window.get(w, 0) + 1
    assert set(allowed_per_window.values()) == {10}, allowed_per_window


def test_cells_of_every_worker_add_up_and_each_worker_writes_its_own(store):
    clock = Clock(50.0)
    workers = [Limiter(store, cell, clock) for cell in range(4)]
    r = rule(rate=8)
    results = [w.check([(r, "k")])[0] is None for _ in range(3) for w in workers]
    assert results.count(True) == 8 and results[8:] == [False] * 4
    key = workers[0].key("k")
    assert store.counts(key, 50) == (8, 0)
    clock.now = 51.0  # next window: the 8 are the previous window's, fully weighted at its start
    assert workers[1].check([(r, "k")])[0] is not None
    clock.now = 51.5
    assert [w.check([(r, "k")])[0] is None for w in workers].count(True) == 4  # 8 * 0.5 = 4 used


def test_a_full_table_evicts_old_windows_and_never_blocks(store):
    limiter = Limiter(store, 0, Clock(10.0))
    r = rule(rate=1000)
    for i in range(64 * PROBES * 4):  # far more keys than buckets
        assert limiter.check([(r, f"key-{i}")])[0] is None
    limiter.clock.now = 20.0
    assert limiter.check([(r, "fresh")])[0] is None
    assert store.counts(limiter.key("fresh"), 20) == (1, 0)


def test_counters_live_in_the_segment_not_in_the_worker(store):
    clock = Clock(5.0)
    first = Limiter(store, 1, clock)
    r = rule(rate=3)
    for _ in range(3):
        assert first.check([(r, "k")])[0] is None
    again = Limiter(CounterStore(store.name), 1, clock)  # a restarted worker attaches anew
    refused, _ = again.check([(r, "k")])
    assert refused is not None and refused.decision.reset == 1
    again.store.close()


def test_take_decides_and_counts_as_counts_then_add_would(store):
    """take is the one-read fast path of a single limit: against a second store driven
    by counts + add, the answers and the counters stay equal, across windows, cells,
    LogOnly and keys that collide in a row."""
    import random

    other = CounterStore(f"edge-test-{secrets.token_hex(4)}-rl", cells=4, buckets=64, create=True)
    try:
        rng = random.Random(7)
        now = 1_000.0
        for _ in range(3000):
            now += rng.random() * 0.05
            cell, key, enforce = rng.randrange(4), rng.choice((3, 5, 67, 131)), rng.random() < 0.8
            window = int(now // 1)
            current, previous = other.counts(key, window)
            within = algorithm.estimate(current, previous, now - window) < 4
            if within or not enforce:
                other.add(cell, key, window)
            assert store.take(cell, key, now, 1, 4, enforce) is within
            assert store.counts(key, window) == other.counts(key, window)
    finally:
        other.close()


def test_a_refused_request_is_counted_in_none_of_its_limits(store):
    limiter = Limiter(store, 0, Clock(7.0))
    tight, loose = rule(rate=2), rule(rate=100, values=("other",))
    assert [limiter.check([(loose, "b"), (tight, "a")])[0] is None for _ in range(4)] == [True, True, False, False]
    assert store.counts(limiter.key("b"), 7) == (2, 0)


def test_log_only_counts_and_never_refuses(store):
    limiter = Limiter(store, 0, Clock(1.0))
    r = rule(rate=1, enforce=False)
    assert all(limiter.check([(r, "k")])[0] is None for _ in range(4))
    assert limiter.over_log_only == 3


def test_descriptors_follow_envoys_rules_for_missing_headers():
    groups = (LabelGroup("ambassador", (LabelAction("generic_key", "generic_key", value="api"),
                                        LabelAction("request_headers", "user", header="x-user"))),
              LabelGroup("ambassador", (LabelAction("remote_address", "remote_address"),
                                        LabelAction("request_headers", "plan", header="x-plan",
                                                    omit_if_not_present=True))),
              LabelGroup("other", (LabelAction("source_cluster", "src"), LabelAction("destination_cluster", "dst"))))
    without = descriptors(groups, [(b"host", b"x")], "10.0.0.1", "listener", "cluster_a")
    assert without == [("ambassador", ("remote_address",), ["10.0.0.1"]),
                       ("other", ("src", "dst"), ["listener", "cluster_a"])]
    with_user = descriptors(groups, [(b"x-user", b"ann"), (b"x-plan", b"gold")], "10.0.0.1", "l", "c")
    assert with_user[0] == ("ambassador", ("generic_key", "user"), ["api", "ann"])
    assert with_user[1] == ("ambassador", ("remote_address", "plan"), ["10.0.0.1", "gold"])


def test_patterns_match_keys_in_order_and_values_when_given():
    per_user = rule(keys=("generic_key", "user"), values=("api", None))
    only_bob = RateLimitRule("default/bob#0", "ambassador", (PatternEntry("generic_key", "api"),
                                                             PatternEntry("user", "bob")), 1, 1, 1, True, (), (), None)
    index = RuleIndex((per_user, only_bob))
    ann = index.matches("ambassador", ("generic_key", "user"), ["api", "ann"])
    bob = index.matches("ambassador", ("generic_key", "user"), ["api", "bob"])
    assert [r.id for r, _ in ann] == [per_user.id] and [r.id for r, _ in bob] == [per_user.id, only_bob.id]
    assert ann[0][1] != bob[0][1]  # each distinct value has its own counter
    assert index.matches("ambassador", ("user", "generic_key"), ["ann", "api"]) == []
    assert index.matches("elsewhere", ("generic_key", "user"), ["api", "ann"]) == []


def test_labels_in_emissarys_syntax():
    groups = parse_labels({"ambassador": [{"g": [
        "remote_address", "literal", {"generic_key": {"value": "v", "key": "k"}},
        {"request_headers": {"key": "u", "header_name": "X-User", "omit_if_not_present": True}},
        {"plan": {"header": "x-plan"}}, {"destination_cluster": {"key": "dst"}}]}]})
    kinds = [(a.kind, a.key, a.value or a.header) for a in groups[0].actions]
    assert kinds == [("remote_address", "remote_address", ""), ("generic_key", "generic_key", "literal"),
                     ("generic_key", "k", "v"), ("request_headers", "u", "x-user"),
                     ("request_headers", "plan", "x-plan"), ("destination_cluster", "dst", "")]


@pytest.mark.parametrize("limit, field", [
    ({"rate": 1, "unit": "minute"}, "spec.limits[0].pattern"),
    ({"pattern": [{"a": "b"}], "rate": -1, "unit": "minute"}, "spec.limits[0].rate"),
    ({"pattern": [{"a": "b"}], "rate": 1, "unit": "week"}, "spec.limits[0].unit"),
    ({"pattern": [{"a": "b"}], "rate": 1, "unit": "hour", "burstFactor": 0.5}, "spec.limits[0].burstFactor"),
    ({"pattern": [{"a": "b"}], "rate": 1, "unit": "hour", "action": "Deny"}, "spec.limits[0].action"),
    ({"pattern": [{"a": "b"}], "rate": 1, "unit": "hour", "injectResponseHeaders": [{"value": "x"}]},
     "spec.limits[0].injectResponseHeaders[0].name"),
])
def test_invalid_limits_name_the_field(limit, field):
    with pytest.raises(Invalid) as exc:
        parse_ratelimit(RawObject("RateLimit", "default", "rl", "t", {"domain": "ambassador", "limits": [limit]}))
    assert exc.value.field == field


def test_burst_factor_raises_the_limit_per_window():
    (r,) = parse_ratelimit(RawObject("RateLimit", "default", "rl", "t", {"domain": "d", "limits": [
        {"pattern": [{"generic_key": "x"}, {"remote_address": None}], "rate": 10, "unit": "second",
         "burstFactor": 2.5}]}))
    assert (r.limit, r.unit_seconds, r.pattern[1].value) == (25, 1, None)


def test_keys_that_collide_in_a_bucket_are_counted_apart(store):
    k1 = 5
    k2 = k1 + store.buckets  # the same first bucket
    store.add(0, k1, 7)
    store.add(1, k2, 7)
    store.add(1, k1, 7)  # cell 1's first bucket is k2's: k1 goes one further
    store.add(1, k1, 7)
    assert store.counts(k1, 7) == (3, 0)
    assert store.counts(k2, 7) == (1, 0)
    store.add(0, k1, 8)
    assert store.counts(k1, 8) == (1, 3)  # window 7 became the previous one


def test_resp_replies_are_parsed_from_any_split():
    from edge.ratelimit.resp import ProtocolError, ReplyParser, RespError, encode

    assert encode(b"GET", "k", 3) == b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n3\r\n"
    data = b"+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*3\r\n:1\r\n:2\r\n*1\r\n$1\r\nx\r\n-NOSCRIPT No matching script\r\n"
    for split in range(len(data) + 1):
        parser = ReplyParser()
        replies = parser.feed(data[:split]) + parser.feed(data[split:])
        assert replies[:5] == ["OK", 42, b"hello", None, [1, 2, [b"x"]]]
        assert isinstance(replies[5], RespError) and replies[5].message.startswith("NOSCRIPT")
    with pytest.raises(ProtocolError):
        ReplyParser().feed(b"?what\r\n")


def test_the_fleet_script_answer_means_what_the_local_decision_would():
    from edge.ratelimit import fleet
    from edge.ratelimit.resp import RespError

    r = rule(rate=10, unit=60)
    allowed, current, previous = fleet.interpret([1, 4, 0], r, 120.0)
    assert allowed.allowed and (current, previous) == (4, 0) and allowed.remaining == 6
    refused, current, previous = fleet.interpret([0, 10, 3], r, 130.0)
    assert not refused.allowed and refused.reset == 50
    assert fleet.refused_until(refused, r, current, previous, 130.0) == 180  # full: until the window ends
    # 4 now and 10 before: allowed again once the previous window weighs under 6
    assert fleet.refused_until(refused, r, 4, 10, 121.0) == pytest.approx(120 + 0.4 * 60)
    assert fleet.interpret(RespError("NOSCRIPT"), r, 1.0) is None
    assert b"EVALSHA" in fleet.command(r, "default/rl#10\x00backend", 120.0)


def test_redis_urls_carry_credentials_and_database():
    from edge.worker.redislink import RedisTarget, parse_redis_url

    assert parse_redis_url("redis://10.0.0.5") == RedisTarget("10.0.0.5", 6379)
    target = parse_redis_url("redis://edge:s%40cret@redis.example:6380/2")
    assert target == RedisTarget("redis.example", 6380, 2, "edge", "s@cret")
    assert target.setup_commands()[:2] == [b"*3\r\n$4\r\nAUTH\r\n$4\r\nedge\r\n$6\r\ns@cret\r\n",
                                           b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n"]
    assert parse_redis_url("redis://:pw@h").setup_commands()[0] == b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
    for bad in ("http://h", "redis://", "redis://h/x"):
        with pytest.raises(ValueError):
            parse_redis_url(bad)
