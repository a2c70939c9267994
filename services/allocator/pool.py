"""The pool at a glance: histograms of a run's per-prompt statistics and buffer.

Pure: `pool_view` takes decoded records and buffer entries; the store reads them
(`AllocatorStore.pool`, one pass over every statistics bucket of the run).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from services.allocator import models as m
from services.allocator.configs import StrategyConfig
from services.allocator.records import BufferEntry, PromptStats, Status


def band_of(config: StrategyConfig) -> tuple[float, float] | None:
    """[p_lower, 1 - p_upper] for strategies with a pilot gate, else None."""
    lower, upper = getattr(config, "p_lower", None), getattr(config, "p_upper", None)
    return None if lower is None or upper is None else (lower, 1.0 - upper)


def pool_view(
    spec: m.RunSpec,
    summary: m.RunSummary,
    records: Iterable[PromptStats],
    buffer: Iterable[BufferEntry],
    bins: int = 20,
) -> m.PoolView:
    """Histograms of `records` (one per prompt seen; prompts without one are active and
    unpiloted) and `buffer` (ages against `summary`'s step), with `summary`, all read
    together. Raises ValueError for `bins` < 1."""
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    counts = [0] * bins
    statuses: Counter[str] = Counter({status.name.lower(): 0 for status in Status})
    piloted = all_equal = seen = 0
    for record in records:
        seen += 1
        statuses[record.status.name.lower()] += 1
        rate = record.pilot_pass_rate
        if math.isnan(rate):
            continue
        piloted += 1
        all_equal += rate <= 0.0 or rate >= 1.0
        counts[min(bins - 1, max(0, int(rate * bins)))] += 1
    statuses["active"] += spec.num_prompts - seen
    ages: list[int] = []
    for entry in buffer:
        age = max(0, summary.step - entry.step)
        ages.extend([0] * (age + 1 - len(ages)))
        ages[age] += 1
    config = spec.config
    return m.PoolView(
        summary=summary,
        band=band_of(config),
        exclude_threshold=getattr(config, "exclude_threshold", None),
        pass_rate_edges=[i / bins for i in range(bins + 1)],
        pass_rate_counts=counts,
        piloted=piloted,
        pilot_all_equal=all_equal,
        statuses=dict(statuses),
        buffer_ages=ages,
    )
