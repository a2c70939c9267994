"""Every Redis key of the allocator, in one place.

All keys of a run share the hash tag `{run_id}`, so on Redis Cluster they live in one
slot and a script or MULTI/EXEC over them is legal. The run index is the only key outside
a run; on a cluster it is not kept (`runs.RunRegistry.list_runs` scans for configs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

RUNS_INDEX = "pc:runs"
BUCKET_SIZE = 64  # prompts per statistics hash; small enough for Redis's listpack encoding
# Every kind of key a run has (the name after `pc:{run}:`) and its Redis type; a snapshot
# holding any other name or type is refused.
_KINDS = [
    (re.compile(r"config|last_step_done|(plan|result|taken):[^:]+"), "string"),
    (re.compile(r"state|buffer|requests|applied|evidence|stats:\d+"), "hash"),
    (re.compile(r"evict_pending|step_trained|step_plans|released"), "set"),
]


class RunKeys:
    """Key names of one run. `slots` maps prompt ids to statistics slots (see `locate`)."""

    def __init__(
        self, run_id: str, slots: Callable[[Sequence[int]], Sequence[int]] | None = None
    ) -> None:
        self.run_id = run_id
        self.prefix = f"pc:{{{run_id}}}"
        self._slots = slots

    @property
    def config(self) -> str:
        return f"{self.prefix}:config"

    @property
    def state(self) -> str:
        """Hash of counters; its `version` field is bumped by every mutation (compared by `cas`)."""
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
    def released(self) -> str:
        """Buffer entries released by calls the trainer does not make (a manual eviction,
        an epoch end through the endpoint), until the next plan or step completion says so."""
        return f"{self.prefix}:released"

    @property
    def pattern(self) -> str:
        return f"{self.prefix}:*"

    @property
    def restore_prefix(self) -> str:
        """Temporary keys of a restore in progress (same hash tag; never in a snapshot)."""
        return f"{self.prefix}:restore:"

    def redis_type(self, name: str) -> str | None:
        """The Redis type ("string", "hash", "set") a key of this run has; None when `name`
        is not a key of this run."""
        head = self.prefix + ":"
        if not name.startswith(head):
            return None
        rest = name[len(head) :]
        return next((kind for pattern, kind in _KINDS if pattern.fullmatch(rest)), None)

    def plan(self, plan_id: str) -> str:
        return f"{self.prefix}:plan:{plan_id}"

    def result(self, plan_id: str) -> str:
        return f"{self.prefix}:result:{plan_id}"

    @property
    def requests(self) -> str:
        """Hash request id -> plan id for the current step's plan calls."""
        return f"{self.prefix}:requests"

    @property
    def step_plans(self) -> str:
        """Plan ids of the current step, whose records are dropped when the step completes."""
        return f"{self.prefix}:step_plans"

    @property
    def applied(self) -> str:
        """Hash plan id -> digest of its rewards, for every plan ever reported."""
        return f"{self.prefix}:applied"

    def taken(self, plan_id: str) -> str:
        """Buffer entries an open plan took for its commit items."""
        return f"{self.prefix}:taken:{plan_id}"

    @property
    def evidence(self) -> str:
        """Hash evidence id -> digest of its prompt and rewards, for every evidence applied."""
        return f"{self.prefix}:evidence"

    @property
    def last_step_done(self) -> str:
        """The answer to the latest step completion, returned again to a retry."""
        return f"{self.prefix}:last_step_done"

    def stats_buckets(self, num_prompts: int) -> list[str]:
        """Every statistics hash a run of `num_prompts` prompts can have (see `locate`)."""
        return [f"{self.prefix}:stats:{b}" for b in range(-(-num_prompts // BUCKET_SIZE))]

    def locate(self, prompt_ids: Sequence[int]) -> list[tuple[str, str]]:
        """(hash key, field) of each prompt's statistics record.

        Records are placed by the prompt's position in the run's first epoch, not by its
        id: prompts seen early in a run then share buckets, which keeps memory per
        prompt seen low even when a small part of a huge pool has been visited.
        """
        slots = self._slots(prompt_ids) if self._slots else prompt_ids
        return [(f"{self.prefix}:stats:{s // BUCKET_SIZE}", str(s % BUCKET_SIZE)) for s in slots]
