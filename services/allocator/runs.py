"""A run's identity in Redis: its config, its generation, and the cached configs.

Identity: a run's config never changes, but a run can be deleted and re-created with
another config, or restored from a snapshot of another incarnation, by any replica. Each
incarnation gets a fresh generation (`state.gen`), and every call compares it with the
generation of the config this process cached, in the same read of the state that
its writes depend on: a replica never acts on a config that is gone (it reloads it, or
answers 404 when the run is gone).
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from redis.asyncio.cluster import RedisCluster

from services.allocator import cas
from services.allocator import models as m
from services.allocator.connection import AnyRedis, primaries
from services.allocator.core import Strategy
from services.allocator.keys import RUNS_INDEX, RunKeys
from services.allocator.permutation import EpochPermutation
from services.allocator.protocol import Conflict, NotFound
from services.allocator.strategies import STRATEGIES

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R", bound="RunRegistry")


class StaleRun(Exception):
    """The cached config is not the run's current incarnation; reload it and start over."""


@dataclass(frozen=True)
class Run:
    run_id: str
    spec: m.RunSpec
    strategy: Strategy
    keys: RunKeys
    gen: str  # the incarnation this config belongs to ("" for runs created before gens)

    def check(self, state: dict[str, str]) -> None:
        """StaleRun unless `state` (the run's state hash as read) is of this incarnation;
        Conflict (409) while a restore is being committed."""
        if "restoring" in state:
            raise Conflict(f"run {self.run_id!r} is being restored; retry when it is done")
        if not state or state.get("gen", "") != self.gen:
            raise StaleRun(self.run_id)


_CREATE = """
local config = redis.call('GET', KEYS[1])
if config then return config end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'version', 0, 'gen', ARGV[2])
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[3]) end
return false
"""
# On Redis Cluster a run's keys and the run index hash to different slots, which no
# script or transaction may span: there is no index, and listing runs scans every master
# for config keys (`pc:{<run>}:config`).
_CONFIG_PATTERN = "pc:{*}:config"


def fresh(
    method: Callable[Concatenate[R, str, P], Awaitable[T]],
) -> Callable[Concatenate[R, str, P], Awaitable[T]]:
    """Run a store method on the run's current config: when it finds its cached config
    stale, drop it and run the method again (on a reloaded config)."""

    @functools.wraps(method)
    async def wrapper(self: R, run_id: str, *args: P.args, **kw: P.kwargs) -> T:
        for _ in range(self.max_attempts):
            try:
                return await method(self, run_id, *args, **kw)
            except StaleRun:
                self._runs.pop(run_id, None)
        raise Conflict(f"run {run_id!r} is being re-created by many requests at once; retry")

    return wrapper


class RunRegistry:
    """Create, find, list and delete runs; the base of the store."""

    def __init__(self, redis: AnyRedis, *, ttl_s: int = 7 * 86400, max_attempts: int = 64) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_attempts = max_attempts
        # Configs by run; each call checks that its config's generation is still current.
        self._runs: dict[str, Run] = {}
        self._create = redis.register_script(_CREATE)
        self._cas = redis.register_script(cas.SCRIPT)
        self.cluster = isinstance(redis, RedisCluster)
        # The run index's key, to go with a run's keys in its scripts and transactions;
        # none on a cluster (see `_CONFIG_PATTERN`).
        self.index_keys = [] if self.cluster else [RUNS_INDEX]

    async def create_run(self, run_id: str, spec: m.RunSpec) -> tuple[Run, bool]:
        """Create the run (config, state with a fresh generation, index entry) in one
        script: a crash never leaves half a run. An identical run already there is a
        no-op; Conflict (409) when it has another config."""
        keys = RunKeys(run_id)
        gen = uuid.uuid4().hex
        argv = [spec.model_dump_json(), gen, run_id]
        existing = await self._create(keys=[keys.config, keys.state, *self.index_keys], args=argv)
        if existing is not None:
            if m.RunSpec.model_validate_json(existing) != spec:
                raise Conflict(f"run {run_id!r} exists with a different configuration")
            return await self.run(run_id), False
        self._runs.pop(run_id, None)
        return await self.run(run_id), True

    async def run(self, run_id: str) -> Run:
        """The run's config, cached. The cache may be stale (another replica re-created
        the run): every use of it checks `Run.check` against the state it reads."""
        cached = self._runs.get(run_id)
        if cached is not None:
            return cached
        keys = RunKeys(run_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.config)
            pipe.hget(keys.state, "gen")
            raw, gen = await pipe.execute()
        if raw is None:
            raise NotFound(f"unknown run {run_id!r}")
        spec = m.RunSpec.model_validate_json(raw)
        strategy_cls = STRATEGIES[spec.config.strategy]
        first_epoch = EpochPermutation(spec.num_prompts, spec.seed, 0)
        keys = RunKeys(run_id, first_epoch.positions)
        run = Run(run_id, spec, strategy_cls(spec.config), keys, s(gen or b""))
        self._runs[run_id] = run
        return run

    async def list_runs(self) -> list[str]:
        """Every run's id, sorted: the run index on one Redis; on a cluster, the config
        keys a SCAN of every master finds (a run being created or deleted meanwhile may or
        may not be listed)."""
        if not self.cluster:
            members = await self.redis.smembers(RUNS_INDEX)
            return sorted(s(x) for x in members)
        found: set[str] = set()
        for node in await primaries(self.redis):
            cursor = 0
            while True:
                cursor, names = await scan_node(self.redis, node, cursor, _CONFIG_PATTERN, 1000)
                for name in map(s, names):
                    run_id = name[len("pc:{") : -len("}:config")]
                    if re.fullmatch(m.RUN_ID_PATTERN, run_id) and RunKeys(run_id).config == name:
                        found.add(run_id)
                if cursor == 0:
                    break
        return sorted(found)

    async def delete_run(self, run_id: str) -> int:
        """Delete every key of the run in one compare-and-set (`cas`: retried if a
        mutation of the run commits meanwhile, so none of its writes survives the
        delete); the number of keys deleted. NotFound (404) for an unknown run."""
        keys = RunKeys(run_id)
        self._runs.pop(run_id, None)
        for _ in range(self.max_attempts):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(keys.state)
                pipe.strlen(keys.config)  # not EXISTS: a cluster pipeline splits that by slot
                raw, config = await pipe.execute()
            if not config:
                raise NotFound(f"unknown run {run_id!r}")
            names = [n async for n in scan_names(self.redis, keys, keys.pattern)]
            writes = cas.Commands()
            writes.delete(names)
            for index in self.index_keys:
                writes.add("SREM", index, run_id)
            state = {s(k): s(v) for k, v in raw.items()}
            deleted = await self._cas(
                keys=[keys.state, *self.index_keys], args=writes.args(state, "r")
            )
            if deleted != cas.REFUSED:
                return int(deleted)
        raise Conflict(f"run {run_id!r} is being changed by many requests at once; retry")


def s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def chunks(names: list[T], size: int = 500) -> Iterable[list[T]]:
    return (names[i : i + size] for i in range(0, len(names), size))


async def scan_names(redis: AnyRedis, keys: RunKeys, pattern: str) -> Any:
    """The names of the run's keys matching `pattern` (a key may come twice: SCAN's rule);
    on a cluster, only the master serving the run's slot is scanned."""
    node = await run_node(redis, keys)
    cursor = 0
    while True:
        cursor, names = await scan_node(redis, node, cursor, pattern, 1000)
        for name in names:
            yield s(name)
        if cursor == 0:
            return


async def run_node(redis: AnyRedis, keys: RunKeys) -> Any:
    """The client itself (one Redis), or the cluster master serving the run's slot."""
    if isinstance(redis, RedisCluster):
        await primaries(redis)  # the slot map, read on first use
        return redis.get_node_from_key(keys.state)
    return redis


async def scan_node(
    redis: AnyRedis, node: Any, cursor: int, pattern: str, count: int
) -> tuple[int, list[Any]]:
    """One SCAN step on `node` (from `run_node` or `primaries`): (next cursor, names)."""
    if isinstance(redis, RedisCluster):
        answer: Any = await redis.scan(cursor, match=pattern, count=count, target_nodes=node)
        cursors, names = answer  # ({node name: cursor}, names) from the cluster client
        return int(cursors[node.name]), list(names)
    next_cursor, names = await redis.scan(cursor, match=pattern, count=count)
    return int(next_cursor), list(names)
