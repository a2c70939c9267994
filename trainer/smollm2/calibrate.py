"""How often SmolLM2 answers the word problems right, greedy and sampled (T = 1).

RL learns only from prompts whose rollouts disagree, so before training on these problems
we want to know that the model is neither hopeless nor already perfect on them. Answers
are judged as the trainer's verifier judges task `math` (last `\\boxed{}`, else "the
answer is ...", else `####`), using the verifier's pure functions in this process.

Generation (`trainer.calibration.generate`) is plain `model.generate` in batches, with the
same chat-templated prompt ids the trainer sends to the generation server, and stops at EOS
(`<|im_end|>`) or `max_tokens`, as the server does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from trainer.calibration import generate, judge
from trainer.prompts import chat_prompt_ids
from trainer.tiny.task import read_jsonl

__all__ = ["Accuracy", "generate", "is_correct", "load_problems", "prompt_ids", "score"]


def is_correct(response: str, reference: str) -> bool:
    """The verifier's verdict for task `math` on one response (fast path only).

    Integer references are always decided by the fast path (string or number
    comparison); an answer it cannot decide (not a plain number) counts as wrong here,
    where the service would ask its symbolic checker.
    """
    return judge(response, reference, "math").correct


@dataclass(frozen=True)
class Accuracy:
    """Share of right answers (0-1) over `n` answers, and how many were cut by max_tokens."""

    accuracy: float
    n: int
    truncated: int

    @property
    def stderr(self) -> float:
        return (self.accuracy * (1 - self.accuracy) / max(1, self.n)) ** 0.5

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "stderr": self.stderr, "n": self.n,
                "truncated": self.truncated}  # fmt: skip


def score(outputs: list[tuple[str, bool]], references: list[str]) -> Accuracy:
    right = [is_correct(text, ref) for (text, _), ref in zip(outputs, references, strict=True)]
    truncated = sum(cut for _, cut in outputs)
    return Accuracy(sum(right) / max(1, len(right)), len(right), truncated)


def load_problems(path: Path, limit: int, seed: int) -> list[dict]:
    rows = list(read_jsonl(path))
    return random.Random(seed).sample(rows, min(limit, len(rows)))


def prompt_ids(tokenizer: object, rows: list[dict]) -> list[list[int]]:
    return [chat_prompt_ids(tokenizer, row["prompt"]) for row in rows]  # type: ignore[arg-type]
