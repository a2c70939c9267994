"""How a model's pass rates spread over a task set's prompts, per task, on validation.

The allocator's gate pays off where many prompts are never or always solved: those groups
carry no advantage, and a pilot finds them for a few rollouts instead of a full group. So a
task set is chosen for its spread, not only its mean: per task we sample K answers for each
of N validation prompts at the training temperature and report

- the mean pass rate over prompts, with its clustered standard error (answers to one prompt
  are correlated; trainer.algos.clustered_mean_stderr);
- the shares of prompts never solved, always solved, and in between (informative: a group
  of K of them has a nonzero advantage);
- the share of answers in the asked format (the verifier extracted an answer at all) and
  the accuracy among those, to tell "cannot do it" from "does not say it the right way".

Answers are judged by the row's verifier kind with the verifier's own pure functions
(trainer.calibration.judge). The test split is never calibrated on: choosing tasks by
their test figures would leak the test split into the choice.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from trainer.algos import clustered_mean_stderr
from trainer.calibration import generate, judge
from trainer.prompts import chat_prompt_ids
from trainer.tasks.generate import task_seed

if TYPE_CHECKING:
    from rich.progress import Progress

    from services.common.progress import LineProgress

REFUSED_SPLIT = "test"


@dataclass(frozen=True)
class Answer:
    """One sampled answer: an answer found at all, right, cut at the token limit."""

    extracted: bool
    correct: bool
    cut: bool


@dataclass(frozen=True)
class Spread:
    """Pass-rate figures of one task (or of all tasks together) over its prompts."""

    prompts: int
    answers: int
    mean: float
    stderr: float
    never: float
    always: float
    informative: float
    in_format: float
    accuracy_in_format: float
    cut: float

    @classmethod
    def of(cls, groups: Sequence[Sequence[Answer]]) -> Spread:
        """Figures of `groups`, one list of answers per prompt (each non-empty)."""
        mean, stderr = clustered_mean_stderr([[a.correct for a in g] for g in groups])
        rates = [sum(a.correct for a in g) / len(g) for g in groups]
        flat = [a for g in groups for a in g]
        extracted = [a for a in flat if a.extracted]
        return cls(
            prompts=len(groups),
            answers=len(flat),
            mean=mean,
            stderr=stderr,
            never=sum(r == 0 for r in rates) / len(rates),
            always=sum(r == 1 for r in rates) / len(rates),
            informative=sum(0 < r < 1 for r in rates) / len(rates),
            in_format=len(extracted) / len(flat),
            accuracy_in_format=(
                sum(a.correct for a in extracted) / len(extracted) if extracted else math.nan
            ),
            cut=sum(a.cut for a in flat) / len(flat),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_rows(rows: Sequence[dict[str, Any]], per_task: int) -> dict[str, list[dict[str, Any]]]:
    """The first `per_task` rows of each source, in file order (a build's files are a
    seeded shuffle, so these are a random sample of the split)."""
    picked: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        chosen = picked.setdefault(row["source"], [])
        if len(chosen) < per_task:
            chosen.append(row)
    return dict(sorted(picked.items()))


def judge_rows(
    rows: Sequence[dict[str, Any]], outputs: Sequence[tuple[str, bool]], samples: int
) -> list[list[Answer]]:
    """Group `outputs` (`samples` consecutive answers per row) and judge each by its row's
    verifier kind and reference."""
    groups = []
    for i, row in enumerate(rows):
        group = []
        for text, cut in outputs[i * samples : (i + 1) * samples]:
            verdict = judge(text, row["answer"], row["task"])
            group.append(Answer(verdict.extracted, verdict.correct, cut))
        groups.append(group)
    return groups


@dataclass(frozen=True)
class Sampling:
    samples: int
    max_tokens: int
    temperature: float
    batch_size: int = 64
    seed: int = 0


def sample_task(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    sampling: Sampling,
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[str, bool]]:
    """`sampling.samples` answers per row (consecutive), from the chat-templated prompt."""
    prompts = []
    for row in rows:
        prompts += [chat_prompt_ids(tokenizer, row["prompt"])] * sampling.samples
    return generate(
        model, tokenizer, prompts, max_tokens=sampling.max_tokens,
        temperature=sampling.temperature, batch_size=sampling.batch_size,
        seed=sampling.seed, on_batch=on_batch,
    )  # fmt: skip


@dataclass(frozen=True)
class TaskResult:
    """One task's figures and every answer behind them (kept, so that a change of the
    verifier's rules can be re-scored without sampling again)."""

    spread: Spread
    rows: list[dict[str, Any]]
    responses: list[list[str]]
    groups: list[list[Answer]]
    wall_seconds: float

    def to_dict(self) -> dict[str, Any]:
        answers = [
            {"id": row["id"], "task": row["task"], "answer": row["answer"],
             "responses": responses, "cut": [a.cut for a in group]}
            for row, responses, group in zip(self.rows, self.responses, self.groups, strict=True)
        ]  # fmt: skip
        return {**self.spread.to_dict(), "wall_seconds": self.wall_seconds, "rows": answers}


def calibrate(
    model: Any,
    tokenizer: Any,
    picked: dict[str, list[dict[str, Any]]],
    sampling: Sampling,
    bars: Progress | LineProgress | None = None,
) -> dict[str, TaskResult]:
    """Sample and judge every task of `picked` (source -> rows), one progress line each."""
    results = {}
    for source, rows in picked.items():
        advance = None
        if bars is not None:
            bar = bars.add_task(f"{source}: answers", total=len(rows) * sampling.samples)

            def advance(n: int, bar: Any = bar) -> None:
                bars.advance(bar, n)

        started = time.monotonic()
        # A seed of its own per task: with one seed, the i-th answer of every task would be
        # drawn from the same random numbers, and the tasks' figures would be correlated.
        own = dataclasses.replace(sampling, seed=task_seed(sampling.seed, source))
        outputs = sample_task(model, tokenizer, rows, own, on_batch=advance)
        k = sampling.samples
        groups = judge_rows(rows, outputs, k)
        results[source] = TaskResult(
            spread=Spread.of(groups),
            rows=list(rows),
            responses=[[t for t, _ in outputs[i * k : (i + 1) * k]] for i in range(len(rows))],
            groups=groups,
            wall_seconds=round(time.monotonic() - started, 1),
        )
    return results


def pooled(results: dict[str, TaskResult]) -> Spread:
    """The figures of all tasks' prompts together."""
    return Spread.of([group for result in results.values() for group in result.groups])


def rescore(record: dict[str, Any]) -> dict[str, Spread]:
    """The figures of a saved calibration (`calibration-*.json`) with answers judged again
    by the verifier as it is now: for a change of its rules, without sampling again."""
    spreads, everything = {}, []
    for source, task in record["tasks"].items():
        groups = []
        for row in task["rows"]:
            group = []
            for text, cut in zip(row["responses"], row["cut"], strict=True):
                verdict = judge(text, row["answer"], row["task"])
                group.append(Answer(verdict.extracted, verdict.correct, cut))
            groups.append(group)
        spreads[source] = Spread.of(groups)
        everything += groups
    spreads["all"] = Spread.of(everything)
    return spreads


def table(spreads: dict[str, Spread]) -> str:
    """A Markdown table of `spreads` (task name -> figures), for the console and docs."""
    lines = [
        "| task | prompts x answers | mean pass rate | never | always | in between "
        "| in format | right when in format | cut |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in spreads.items():
        lines.append(
            f"| {name} | {s.prompts} x {s.answers // max(1, s.prompts)} | {s.mean:.3f} +- "
            f"{s.stderr:.3f} | {s.never:.0%} | {s.always:.0%} | {s.informative:.0%} "
            f"| {s.in_format:.0%} | {s.accuracy_in_format:.0%} | {s.cut:.0%} |"
        )
    return "\n".join(lines)
