"""How often SmolLM2 answers the word problems right, greedy and sampled (T = 1).

RL learns only from prompts whose rollouts disagree, so before training on these problems
we want to know that the model is neither hopeless nor already perfect on them. Answers
are judged as the trainer's verifier judges task `math` (last `\\boxed{}`, else "the
answer is ...", else `####`), using the verifier's pure functions in this process.

Generation here is plain `model.generate` in batches, with the same chat-templated prompt
ids the trainer sends to the generation server, and stops at EOS (`<|im_end|>`) or
`max_tokens`, as the server does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from services.verifier import answers
from trainer.prompts import chat_prompt_ids
from trainer.tiny.task import read_jsonl


def is_correct(response: str, reference: str) -> bool:
    """The verifier's verdict for task `math` on one response (fast path only).

    Integer references are always decided by the fast path (string or number
    comparison); an answer it cannot decide (not a plain number) counts as wrong here,
    where the service would ask its symbolic checker.
    """
    found = answers.extract_answer(answers.sanitize(response), "math")
    if found.text is None:
        return False
    verdict = answers.fast_verdict(
        answers.normalize(reference), answers.normalize(found.text), "math"
    )
    return bool(verdict and verdict.correct)


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


def generate(
    model: torch.nn.Module,
    tokenizer: object,
    prompts: list[list[int]],
    *,
    max_tokens: int,
    temperature: float,
    batch_size: int = 32,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[str, bool]]:
    """(completion text, cut by max_tokens) per prompt; `temperature` 0 is greedy.

    Prompts are left-padded into batches of `batch_size`; the text is decoded without
    special tokens, as the generation server returns it.
    """
    pad = int(tokenizer.pad_token_id)  # type: ignore[attr-defined]
    eos = int(tokenizer.eos_token_id)  # type: ignore[attr-defined]
    torch.manual_seed(seed)
    out: list[tuple[str, bool]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(chunk):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        with torch.no_grad():
            gen = model.generate(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                **(sampling if temperature > 0 else {"do_sample": False}),
            )
        for row in gen[:, width:].tolist():
            ended = eos in row
            row = row[: row.index(eos)] if ended else row
            text = tokenizer.decode(row, skip_special_tokens=True)  # type: ignore[attr-defined]
            out.append((text, not ended))
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def score(outputs: list[tuple[str, bool]], references: list[str]) -> Accuracy:
    right = [is_correct(text, ref) for (text, _), ref in zip(outputs, references, strict=True)]
    truncated = sum(cut for _, cut in outputs)
    return Accuracy(sum(right) / max(1, len(right)), len(right), truncated)


def load_problems(path: Path, limit: int, seed: int) -> list[dict]:
    rows = list(read_jsonl(path))
    return random.Random(seed).sample(rows, min(limit, len(rows)))


def prompt_ids(tokenizer: object, rows: list[dict]) -> list[list[int]]:
    return [chat_prompt_ids(tokenizer, row["prompt"]) for row in rows]  # type: ignore[arg-type]
