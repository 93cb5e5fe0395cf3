from edge.model import Cluster, Endpoint
from edge.worker.reactor import Reactor
from edge.worker.upstream import Pool


def test_round_robin_over_endpoints_and_none_without_endpoints():
    eps = (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80), Endpoint("10.0.0.3", 80))
    pool = Pool(Reactor())
    cluster = Cluster("c", "svc", "svc", 80, 1000, eps)
    assert [pool.pick(cluster) for _ in range(6)] == list(eps) * 2
    assert pool.pick(Cluster("empty", "x", "x", 80, 1000, ())) is None
