"""1,000 EndpointSlice changes per second: absorbed (the final endpoints are exactly the
last ones written) and propagated fast. The numbers are bench/endpoint_churn.py's; this
test holds the scenario to gross bounds only."""

from __future__ import annotations

import statistics

import pytest

from bench.endpoint_churn import run

pytestmark = pytest.mark.integration


def test_a_thousand_endpoint_changes_per_second_are_absorbed(tmp_path):
    work = tmp_path / "config"
    work.mkdir()
    result = run(rate=1000, probes=30, services=50, workers=2, work=work)
    assert result.rate >= 950 and result.changes >= 2850, result.summary()  # 30 probes last >= 3 s
    assert result.mismatched_services == [], "published endpoints differ from the last slices written"
    assert result.probe_timeouts == 0 and len(result.propagation_ms) == 30, result.summary()
    assert statistics.median(result.propagation_ms) < 100, result.summary()
    assert max(result.propagation_ms) < 1000, result.summary()
    assert result.endpoint_publishes < result.changes / 3, "endpoint changes were not batched"
