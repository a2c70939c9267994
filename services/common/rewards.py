"""What makes a group of rewards constant: one rule for the allocator and the trainer.

A constant group carries no learning signal (every advantage is zero), whatever the
rewards' value: the allocator drops it from train batches and counts it as zero-variance,
the trainer gives it exactly zero advantages.
"""

from __future__ import annotations

from collections.abc import Sequence

# Rewards closer than this share of their magnitude are one value. Float arithmetic leaves
# residue (twelve 0.1s have a population std of 1.4e-17, and 0.1 + 0.2 != 0.3), and a
# residue must not make a constant group look informative; differences a reward function
# means to make (partial credit, a format bonus) are many orders larger.
REWARD_REL_TOL = 1e-9


def rewards_constant(rewards: Sequence[float], rel_tol: float = REWARD_REL_TOL) -> bool:
    """True when every reward equals every other within `rel_tol` of the largest magnitude.

    One rule for the allocator (gates, train batch, zero-variance counters) and the trainer
    (`trainer.algos.group_advantages`). An empty or one-reward group is constant; 0 and any
    non-zero value are never equal (the tolerance is relative, not absolute).
    """
    if not rewards:
        return True
    high, low = max(rewards), min(rewards)
    return high - low <= rel_tol * max(abs(high), abs(low))
