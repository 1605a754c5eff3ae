"""The weight-transport benchmark's two paths under a real local Ray: both deliver the writer's
exact weights to the reader actor, through the path they name. No timing is asserted."""

import pytest

pytestmark = [pytest.mark.ray]


def test_both_transports_deliver_the_writers_weights(ray_local):
    from benchmarks.bench_weight_transport import run

    result = run("tiny", repeats=2)  # raises if a path delivers other bytes or takes the other route
    assert result["tensors"] > 10 and result["bytes"] > 0
    for path in ("shared_memory", "object_store"):
        assert len(result["paths"][path]["sync_s_all"]) == 2
