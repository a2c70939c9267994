"""Allocation strategies, by name. A new strategy is one module here, its config in
`services.allocator.configs`, and one entry in `STRATEGIES`."""

from __future__ import annotations

from services.allocator.core import Strategy
from services.allocator.strategies.dapo import DAPO
from services.allocator.strategies.grpo import GRPO
from services.allocator.strategies.pilot_commit import PilotCommit
from services.allocator.strategies.posterior_gate import PosteriorGate

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (GRPO, DAPO, PilotCommit, PosteriorGate)
}


def load_all() -> dict[str, type[Strategy]]:
    """The registry (kept for callers of the former discovery)."""
    return STRATEGIES
