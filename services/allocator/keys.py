"""Every Redis key of the allocator, in one place.

All keys of a run share the hash tag `{run_id}`, so on Redis Cluster they live in one
slot and a MULTI/EXEC over them is legal. The run index is the only key outside a run.
"""

from __future__ import annotations

RUNS_INDEX = "pc:runs"
BUCKET_SIZE = 64  # prompts per statistics hash; small enough for Redis's listpack encoding


class RunKeys:
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.prefix = f"pc:{{{run_id}}}"

    @property
    def config(self) -> str:
        return f"{self.prefix}:config"

    @property
    def state(self) -> str:
        """Hash of counters; its `version` field is bumped by every mutation (WATCHed)."""
        return f"{self.prefix}:state"

    @property
    def buffer(self) -> str:
        return f"{self.prefix}:buffer"

    @property
    def evict_pending(self) -> str:
        return f"{self.prefix}:evict_pending"

    @property
    def step_trained(self) -> str:
        """Prompts already in the current step's train batch (a prompt trains once a step)."""
        return f"{self.prefix}:step_trained"

    @property
    def pattern(self) -> str:
        return f"{self.prefix}:*"

    def plan(self, plan_id: str) -> str:
        return f"{self.prefix}:plan:{plan_id}"

    def result(self, plan_id: str) -> str:
        return f"{self.prefix}:result:{plan_id}"

    def request(self, request_id: str) -> str:
        return f"{self.prefix}:request:{request_id}"

    def step_done(self, step: int) -> str:
        return f"{self.prefix}:step_done:{step}"

    def stats_bucket(self, prompt_id: int) -> str:
        return f"{self.prefix}:stats:{prompt_id // BUCKET_SIZE}"


def stats_field(prompt_id: int) -> str:
    return str(prompt_id % BUCKET_SIZE)
