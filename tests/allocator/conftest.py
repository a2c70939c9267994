"""A real Redis Cluster per test session (3 masters, one replica each, on loopback).

Needs Redis 7 (`apt-get install redis-server`); without it the cluster tests are skipped
with the reason, unless PC_REQUIRE_REDIS_CLUSTER=1 (set by `.ci/run`), which makes that a
failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pilot_commit.bench.redis_cluster import (
    RedisClusterProcs,
    find_cluster_binaries,
    start_redis_cluster,
)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    try:
        find_cluster_binaries()
    except RuntimeError as exc:
        if os.environ.get("PC_REQUIRE_REDIS_CLUSTER"):
            pytest.fail(f"PC_REQUIRE_REDIS_CLUSTER is set but {exc}")
        pytest.skip(str(exc))
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"), appendonly=True)
    yield cluster
    cluster.stop()
