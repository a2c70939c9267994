"""A run's snapshot (every key as a DUMP payload, whole or page by page) and its staged
restore, for trainer checkpoints."""

from __future__ import annotations

import base64
import binascii
import uuid

from redis.exceptions import ResponseError

from services.allocator import cas
from services.allocator import models as m
from services.allocator.keys import RunKeys
from services.allocator.protocol import Conflict, Invalid
from services.allocator.runs import (
    RunRegistry,
    chunks,
    fresh,
    run_node,
    s,
    scan_names,
    scan_node,
)

_STAGE_TTL_MS = 3_600_000  # a restore's temporary keys outlive a crashed restore by this


class _Torn(Conflict):
    """The run changed while a snapshot page was read: a 409, or read it again."""


_MOVE_BATCH = 2000
# Move staged keys (KEYS[1..n]) to their final names (KEYS[n+1..2n]); a key already moved
# by an interrupted commit is skipped.
_MOVE = """
local n = #KEYS / 2
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('RENAME', KEYS[i], KEYS[i + n])
    redis.call('PERSIST', KEYS[i + n])
  end
end
return n
"""
# Finish a restore: the staged state (KEYS[1]) replaces the state (KEYS[2]), which drops
# the `restoring` mark; a fresh generation (ARGV[1]); the run index (KEYS[3], none on a
# cluster).
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('HGET', KEYS[2], 'restored_from') == ARGV[2] then return 0 end
  return redis.error_reply('staged state missing: ' .. KEYS[1])
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PERSIST', KEYS[2])
redis.call('HSET', KEYS[2], 'gen', ARGV[1], 'restored_from', ARGV[2])
redis.call('HDEL', KEYS[2], 'restoring')
if KEYS[3] then redis.call('SADD', KEYS[3], ARGV[3]) end
return 1
"""


# A snapshot page's batch, read at one instant: the state hash (KEYS[1], as HGETALL's flat
# list), then the DUMP payload of each other key (KEYS[2..], false when gone). One script
# rather than a MULTI: redis-py's cluster pipeline hands each command queued in a MULTI to
# a thread of its own; with the MULTI a 1M-prompt snapshot read took 8.5 s on a cluster vs
# 3.8 s on one Redis, with the script 1.5 s vs 0.9 s (bench allocator --snapshot
# --cluster, a loaded machine).
_DUMP = """
local out = {redis.call('HGETALL', KEYS[1])}
for i = 2, #KEYS do
  out[i] = redis.call('DUMP', KEYS[i])
end
return out
"""


class RunSnapshots(RunRegistry):
    """Snapshot and restore of whole runs (the store's base)."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._move = self.redis.register_script(_MOVE)
        self._finish = self.redis.register_script(_FINISH)
        self._dump = self.redis.register_script(_DUMP)

    async def snapshot(self, run_id: str) -> m.Snapshot:
        """Every key of the run as base64 DUMP payloads, in one piece (small runs; large
        ones are read page by page with `snapshot_page`). Conflict (409) if the run keeps
        changing while it is read."""
        for _ in range(self.max_attempts):
            pages, cursor = [], 0
            try:
                while True:
                    page = await self.snapshot_page(run_id, cursor, 2**62)
                    pages.append(page)
                    if page.next_cursor is None:
                        break
                    cursor = page.next_cursor
            except _Torn:
                continue
            if len({p.version for p in pages}) == 1:
                return m.Snapshot(
                    run_id=run_id, keys={k: v for p in pages for k, v in p.keys.items()}
                )
        raise Conflict(f"run {run_id!r} is being changed by many requests at once; retry")

    @fresh
    async def snapshot_page(self, run_id: str, cursor: int, max_bytes: int) -> m.SnapshotPage:
        """One page of the run's snapshot: the keys a Redis SCAN from `cursor` finds, as
        base64 DUMP payloads, until they pass `max_bytes` (of base64) or the scan ends
        (`next_cursor` None). Each batch is dumped in one script with the run's
        `gen:version`; a page whose batches disagree is Conflict (409). A snapshot is
        consistent when all its pages carry one `version` (every mutation bumps it); a
        key may come twice (SCAN's rule), with the same payload."""
        run = await self.run(run_id)
        keys = run.keys
        out: dict[str, str] = {}
        size, version = 0, None
        node = await run_node(self.redis, keys)  # on a cluster, the master of the run's slot
        while True:
            cursor, found = await scan_node(self.redis, node, cursor, keys.pattern, 256)
            names = [n for n in map(s, found) if keys.redis_type(n)]
            flat, *dumps = await self._dump(keys=[keys.state, *names])
            state = {s(k): s(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}
            run.check(state)
            now = f"{state['gen']}:{state.get('version', '0')}" if "gen" in state else ""
            if version is not None and now != version:
                raise _Torn(f"run {run_id!r} changed while its snapshot was read; retry")
            version = now
            for name, dump in zip(names, dumps, strict=True):
                if dump is not None:
                    out[name] = base64.b64encode(dump).decode()
                    size += len(out[name])
            if cursor == 0 or size >= max_bytes:
                break
        return m.SnapshotPage(run_id=run_id, version=version, keys=out, next_cursor=cursor or None)

    async def restore_snapshot(self, run_id: str, snapshot: m.Snapshot) -> None:
        """Replace the run's state with a snapshot taken earlier, in one call (small runs;
        large ones use `stage_restore` chunk by chunk, then `commit_restore`)."""
        if snapshot.run_id != run_id:
            raise Invalid(f"snapshot of run {snapshot.run_id!r} is not a snapshot of {run_id!r}")
        restore_id = uuid.uuid4().hex
        try:
            await self.stage_restore(run_id, restore_id, snapshot.keys)
            await self.commit_restore(run_id, restore_id, len(snapshot.keys))
        finally:
            await self._drop_staged(RunKeys(run_id), restore_id)

    async def stage_restore(self, run_id: str, restore_id: str, chunk: dict[str, str]) -> int:
        """Stage a chunk of a snapshot (key name -> base64 DUMP payload) for the restore
        `restore_id`; retrying a chunk is harmless. The number of keys staged.

        Invalid (422) for a key outside the run or of an unknown kind, bad base64, a
        payload Redis refuses (bad checksum or RDB version), a key of the wrong type, or
        a config that is not a run spec; this chunk's keys are then dropped again. The
        run itself is not touched until `commit_restore`.

        How: every payload is RESTOREd into a temporary key under the run's hash tag
        (`pc:{run}:restore:<restore_id>:...`, expiring in an hour, should the restore
        never be committed) and checked there. Redis itself validates the payloads that
        way (checksum, version, type), which parsing the RDB format here would only
        imitate.
        """
        keys = RunKeys(run_id)
        payloads = _decode_keys(keys, chunk)
        staged = {name: _staged_name(keys, restore_id, name) for name in payloads}
        try:
            await self._stage(keys, payloads, staged)
        except Invalid:
            await self._delete(list(staged.values()))
            raise
        return len(staged)

    async def commit_restore(self, run_id: str, restore_id: str, expected_keys: int) -> None:
        """Replace the run's keys by the `expected_keys` keys staged for `restore_id`: no
        call ever sees a mix of the two. A retry of a committed restore is a no-op, and
        a retry of an interrupted one finishes it.

        Invalid (422) when another number of keys is staged (a chunk is missing or came
        from another snapshot) or the config or state is missing; Conflict (409) when
        another restore is being committed or the run keeps changing meanwhile.

        How: one compare-and-set (`cas`) marks the state `restoring` and deletes the
        run's keys the snapshot does not replace; from then on every other call on the
        run gets 409. The staged keys are then renamed into
        place by scripts of `_MOVE_BATCH` keys, and a last script puts the staged state
        in place, which drops the mark. One script for everything would be simpler, but
        at 10M prompts (~156k keys) it kept Redis busy for seconds, answering nothing
        else. The cost: Redis holds the run twice while a restore is staged.
        """
        keys = RunKeys(run_id)
        temp = _staged_name(keys, restore_id, keys.prefix + ":")
        for _ in range(self.max_attempts):
            raw = await self.redis.hgetall(keys.state)
            state = {s(k): s(v) for k, v in raw.items()}
            mark, done = state.get("restoring"), state.get("restored_from")
            if mark is None and done == restore_id:
                return
            if mark is not None and mark != restore_id:
                raise Conflict(f"run {run_id!r} is being restored by restore {mark!r}")
            found: set[str] = set()  # SCAN may return a key twice
            async for name in scan_names(self.redis, keys, keys.pattern):
                found.add(name)
            staged = sorted(n for n in found if n.startswith(temp))
            finals = [keys.prefix + ":" + name[len(temp) :] for name in staged]
            if mark is not None:
                break  # an interrupted commit: finish it
            if len(staged) != expected_keys:
                raise Invalid(
                    f"restore {restore_id!r} has {len(staged)} keys staged, "
                    f"the snapshot has {expected_keys}"
                )
            for needed in ("config", "state"):
                if temp + needed not in staged:
                    raise Invalid(f"restore {restore_id!r} has no {needed!r} key")
            # Keys the snapshot does not have; the others are replaced by RENAME.
            writes = cas.Commands()
            writes.add("HSET", keys.state, "restoring", restore_id)
            writes.delete(sorted(found - set(staged) - set(finals)))
            if await self._cas(keys=[keys.state], args=writes.args(state)) != cas.REFUSED:
                break
        else:
            raise Conflict(f"run {run_id!r} is being changed by many requests at once; retry")
        moves = [(a, b) for a, b in zip(staged, finals, strict=True) if b != keys.state]
        for group in chunks(moves, _MOVE_BATCH):
            await self._move(keys=[a for a, _ in group] + [b for _, b in group])
        try:
            await self._finish(
                keys=[temp + "state", keys.state, *self.index_keys],
                args=[uuid.uuid4().hex, restore_id, run_id],  # a restored run is new
            )
        except ResponseError as exc:
            if "staged state missing" in str(exc):
                raise Invalid(f"restore {restore_id!r} lost its staged keys (expired?)") from None
            raise
        self._runs.pop(run_id, None)

    async def _drop_staged(self, keys: RunKeys, restore_id: str) -> None:
        pattern = _staged_name(keys, restore_id, keys.prefix + ":*")
        await self._delete([n async for n in scan_names(self.redis, keys, pattern)])

    async def _delete(self, names: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch in chunks(names):
                pipe.delete(*batch)
            await pipe.execute()

    async def _stage(
        self, keys: RunKeys, payloads: dict[str, bytes], staged: dict[str, str]
    ) -> None:
        """RESTORE every payload into its temporary key and check its type and content;
        Invalid if Redis refuses one or it is not what a key of that name holds."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, payload in payloads.items():
                pipe.restore(staged[name], _STAGE_TTL_MS, payload, replace=True)
            answers = await pipe.execute(raise_on_error=False)
        for name, answer in zip(payloads, answers, strict=True):
            if isinstance(answer, Exception):
                raise Invalid(f"snapshot key {name!r} is not a valid DUMP payload: {answer}")
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in payloads:
                pipe.type(staged[name])
            types = await pipe.execute()
        for name, found in zip(payloads, types, strict=True):
            want = keys.redis_type(name)
            if s(found) != want:
                raise Invalid(f"snapshot key {name!r} holds a {s(found)}, not a {want}")
        if keys.config in payloads:
            try:
                m.RunSpec.model_validate_json(await self.redis.get(staged[keys.config]) or b"")
            except ValueError as exc:
                raise Invalid(f"the snapshot's config is not a run spec: {exc}") from None


def _decode_keys(keys: RunKeys, chunk: dict[str, str]) -> dict[str, bytes]:
    """Key name -> DUMP payload; Invalid (422) unless every name is a key of the run and
    every value is base64."""
    out: dict[str, bytes] = {}
    for name, value in chunk.items():
        if keys.redis_type(name) is None:
            raise Invalid(f"snapshot key {name!r} is not a key of run {keys.run_id!r}")
        try:
            out[name] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise Invalid(f"snapshot key {name!r}: value is not base64") from None
    return out


def _staged_name(keys: RunKeys, restore_id: str, name: str) -> str:
    """Where a restore stages the run's key `name` (a name under `keys.prefix`)."""
    return f"{keys.restore_prefix}{restore_id}:{name[len(keys.prefix) + 1 :]}"
