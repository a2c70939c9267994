"""Compare-and-set on a run: writes applied by one script only if the run is as read.

Every write to a run's keys after its creation goes through `CAS`: the script compares
the generation and version of the run's state hash with the ones the caller read (and,
unless told otherwise, that no restore is being committed), and only then runs the
caller's commands. A caller that finds the run changed reads again and retries.

Why a script and not WATCH + MULTI/EXEC: the check travels with the writes, so it holds
whatever connection carries them. On Redis Cluster, redis-py resends a command that
meets a failover on a fresh connection, which holds no WATCH (redis/asyncio/cluster.py,
`TransactionStrategy._reinitialize_on_error`); a compare-and-set resent after a failover
or a lost reply is refused instead of applied twice. A script runs on one slot, and every
key of a run is in the run's slot (`keys`).
"""

from __future__ import annotations

from typing import Any

# KEYS[1]: the run's state hash. ARGV[1], ARGV[2]: its `gen` and `version` as read (""
# when absent); ARGV[3]: flags, "b" to bump the version after the writes, "r" to write
# even while a restore is being committed; then the commands, each as its argument count
# followed by its arguments. -1 when the run changed (nothing written); otherwise the
# number of keys the DEL commands deleted.
SCRIPT = """
local state, flags = KEYS[1], ARGV[3]
if (not string.find(flags, 'r', 1, true) and redis.call('HEXISTS', state, 'restoring') == 1)
  or (redis.call('HGET', state, 'gen') or '') ~= ARGV[1]
  or (redis.call('HGET', state, 'version') or '') ~= ARGV[2] then
  return -1
end
local deleted, i = 0, 4
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local reply = redis.call(unpack(ARGV, i + 1, i + n))
  if ARGV[i + 1] == 'DEL' then deleted = deleted + reply end
  i = i + n + 1
end
if string.find(flags, 'b', 1, true) then redis.call('HINCRBY', state, 'version', 1) end
return deleted
"""
REFUSED = -1
# Arguments per command (Lua's unpack takes a few thousand at most); a longer variadic
# command is split, which changes nothing inside one script.
MAX_ARGS = 1000


class Commands:
    """Writes queued for `SCRIPT` (names and values as redis-py encodes them)."""

    def __init__(self) -> None:
        self.argv: list[Any] = []

    def add(self, name: str, *args: Any) -> None:
        self.argv += [len(args) + 1, name, *args]

    def variadic(self, name: str, key: str, items: list[Any], width: int = 1) -> None:
        """`name key item...` in as many commands as `MAX_ARGS` needs; an item is
        `width` arguments (2 for HSET's field and value). Nothing for no items."""
        step = (MAX_ARGS // width) * width
        for i in range(0, len(items), step):
            self.add(name, key, *items[i : i + step])

    def delete(self, names: list[str]) -> None:
        for i in range(0, len(names), MAX_ARGS):
            self.add("DEL", *names[i : i + MAX_ARGS])

    def hset(self, key: str, mapping: dict[Any, Any]) -> None:
        self.variadic("HSET", key, [x for kv in mapping.items() for x in kv], 2)

    def args(self, state: dict[str, str], flags: str = "") -> list[Any]:
        """The script's ARGV for a run whose state hash was read as `state`."""
        return [state.get("gen", ""), state.get("version", ""), flags, *self.argv]
