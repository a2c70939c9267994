"""The allocator's Redis client: one Redis (`redis://`) or a Redis Cluster (`redis+cluster://`).

A cluster URL names one or more of its nodes, comma-separated:
`redis+cluster://[[user]:password@]host:port[,host:port...]`; the client learns the rest
of the cluster (masters, replicas, which master serves which slot) from any one of them
and follows failovers and slot moves by itself. Every key of a run shares the hash tag
`{run_id}` (see `keys`), so all of a run's commands, transactions and scripts go to the
one master serving that slot; only the list of runs reads every master.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

CLUSTER_SCHEME = "redis+cluster"

AnyRedis = Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() == CLUSTER_SCHEME


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """The (host, port) pairs of a `redis+cluster://` URL, and its credentials
    (`username`, `password`, when given). ValueError for another scheme, a node without a
    port, a path other than `/` or `/0` (a cluster has one database), or no node."""
    head, sep, rest = url.partition("://")
    if not sep or head.lower() != CLUSTER_SCHEME:
        raise ValueError(f"not a {CLUSTER_SCHEME}:// URL: {url!r}")
    netloc, _, path = rest.partition("/")
    path = path.split("?", 1)[0]
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0, not {path!r}: {url!r}")
    auth: dict[str, str] = {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, has_pw, password = userinfo.partition(":")
        if user:
            auth["username"] = unquote(user)
        if has_pw:
            auth["password"] = unquote(password)
    nodes = []
    for part in netloc.split(","):
        parsed = urlsplit(f"//{part.strip()}")
        if not parsed.hostname or parsed.port is None:
            raise ValueError(f"cluster node {part!r} needs host:port: {url!r}")
        nodes.append((parsed.hostname, parsed.port))
    if not nodes:
        raise ValueError(f"no cluster node in {url!r}")
    return nodes, auth


def open_redis(url: str, *, timeout_s: float = 5.0, **kw: Any) -> AnyRedis:
    """A client for `url`: `redis://` / `rediss://` / `unix://` give `redis.asyncio.Redis`,
    `redis+cluster://` gives `redis.asyncio.cluster.RedisCluster` (see the module doc).
    `timeout_s` is the socket and connect timeout (seconds). ValueError for a bad URL.

    The cluster client retries a command that meets a failover (connection refused,
    MOVED, CLUSTERDOWN) with backoff for about 10 s, refreshing its slot map meanwhile:
    a promoted replica then serves the run. A retried write is safe: every mutation is a
    compare-and-set on the run's version (`store.AllocatorStore._call`)."""
    if not is_cluster_url(url):
        return Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
            **kw,
        )
    nodes, auth = cluster_nodes(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 20),
        username=auth.get("username"),
        password=auth.get("password"),
        **kw,
    )


async def primaries(redis: AnyRedis) -> list[AnyRedis | ClusterNode]:
    """Where every key lives: the client itself (one Redis) or each master of the cluster."""
    if isinstance(redis, RedisCluster):
        if redis._initialize:  # the slot map is read on first use
            await redis.initialize()
        return list(redis.get_primaries())
    return [redis]
