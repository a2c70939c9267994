"""A run's identity in Redis: its config, its generation, and the cached configs.

Identity: a run's config never changes, but a run can be deleted and re-created with
another config, or restored from a snapshot of another incarnation, by any replica. Each
incarnation gets a fresh generation (`state.gen`), and every call compares it with the
generation of the config this process cached, in the same WATCHed read of the state that
its writes depend on: a replica never acts on a config that is gone (it reloads it, or
answers 404 when the run is gone).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from redis.asyncio import Redis
from redis.exceptions import WatchError

from services.allocator import models as m
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
redis.call('SADD', KEYS[3], ARGV[3])
return false
"""


# A restore's commit moves the staged keys into place in batches of this many keys, one


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

    def __init__(self, redis: Redis, *, ttl_s: int = 7 * 86400, max_attempts: int = 64) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_attempts = max_attempts
        # Configs by run; each call checks that its config's generation is still current.
        self._runs: dict[str, Run] = {}
        self._create = redis.register_script(_CREATE)

    async def create_run(self, run_id: str, spec: m.RunSpec) -> tuple[Run, bool]:
        """Create the run (config, state with a fresh generation, index entry) in one
        script: a crash never leaves half a run. An identical run already there is a
        no-op; Conflict (409) when it has another config."""
        keys = RunKeys(run_id)
        gen = uuid.uuid4().hex
        argv = [spec.model_dump_json(), gen, run_id]
        existing = await self._create(keys=[keys.config, keys.state, RUNS_INDEX], args=argv)
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
        members = await self.redis.smembers(RUNS_INDEX)
        return sorted(x.decode() if isinstance(x, bytes) else x for x in members)

    async def delete_run(self, run_id: str) -> int:
        """Delete every key of the run in one MULTI/EXEC (retried if a mutation of the
        run commits meanwhile, so none of its writes survives the delete); the number of
        keys deleted. NotFound (404) for an unknown run."""
        keys = RunKeys(run_id)
        self._runs.pop(run_id, None)
        for _ in range(self.max_attempts):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(keys.state, keys.config)
                    if not await pipe.exists(keys.config):
                        raise NotFound(f"unknown run {run_id!r}")
                    names = [n async for n in scan_names(self.redis, keys.pattern)]
                    pipe.multi()
                    for batch in chunks(names):
                        pipe.delete(*batch)
                    pipe.srem(RUNS_INDEX, run_id)
                    *counts, _ = await pipe.execute()
                    return int(sum(counts))
                except WatchError:
                    continue
        raise Conflict(f"run {run_id!r} is being changed by many requests at once; retry")


def s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def opt_s(value: bytes | str | None) -> str | None:
    return None if value is None else s(value)


def chunks(names: list[T], size: int = 500) -> Iterable[list[T]]:
    return (names[i : i + size] for i in range(0, len(names), size))


async def scan_names(redis: Redis, pattern: str) -> Any:
    async for key in redis.scan_iter(match=pattern, count=1000):
        yield s(key)
