"""Sampling a model in this process and judging its answers as the verifier does.

Before training on a dataset we want to know how often the model already answers it
right, per prompt: RL learns only from prompts whose rollouts disagree. The SmolLM2 word
problems (trainer/smollm2/calibrate.py) and the reasoning-gym task sets
(trainer/tasks/calibrate.py) are both measured with these two functions.

`generate` is plain `model.generate` in batches, from the same chat-templated prompt ids
the trainer sends to the generation server, stopping at EOS or `max_tokens` as the server
does. `judge` is the verifier's fast path (`services.verifier.answers`, the service's own
pure functions) with its default tolerances, in this process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from services.verifier import answers
from services.verifier.models import Task


@dataclass(frozen=True)
class Judgement:
    """What the verifier found in one response: an answer at all, and whether it is right."""

    extracted: bool
    correct: bool


def judge(response: str, reference: str, task: Task) -> Judgement:
    """The verifier's verdict for `task` on one response, fast path only.

    `numeric` and `exact` (and integer references of `math`) are always decided by the fast
    path; an answer it cannot decide (a `math` expression) counts as wrong here, where the
    service would ask its symbolic checker.
    """
    found = answers.extract_answer(answers.sanitize(response), task)
    if found.text is None:
        return Judgement(extracted=False, correct=False)
    gold = answers.normalize(answers.extract_reference(answers.sanitize(reference), task))
    verdict = answers.fast_verdict(gold, answers.normalize(found.text), task)
    return Judgement(extracted=True, correct=bool(verdict and verdict.correct))


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

    Prompts are left-padded into batches of `batch_size`; sampling is pure ancestral
    sampling (no top-k, no top-p), as an RL run's rollouts at that temperature; the text is
    decoded without special tokens, as the generation server returns it.
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
