"""edge.backoff: doubling with jitter, capped, for as long as the outage lasts."""

from edge.backoff import Backoff


def test_backoff_doubles_to_its_cap_and_stays_there_for_any_number_of_failures():
    b = Backoff(first=0.1, cap=5.0)
    delays = [b.next() for _ in range(5000)]  # hours of a down Redis at 5 s per attempt
    assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2
    assert all(2.5 <= d <= 5.0 for d in delays[10:])
    b.reset()
    assert b.next() <= 0.1
