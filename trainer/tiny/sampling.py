"""Batched in-process completion and pass counting for the tiny model.

Calibration needs many answers quickly (greedy and temperature-1.0 answers over thousands
of prompts, dozens each for pass-rate estimates); for a sub-million-parameter model that
is cheapest inside the process, with no generation server. Sampling is pure ancestral
sampling (no top-k, no top-p) so the figures match what an RL run at temperature 1.0 sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from trainer.tiny.task import score_completion

# The longest answer is six characters ("-99999", "449991"); one more for EOS.
MAX_NEW_TOKENS = 7


@torch.no_grad()
def complete(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    *,
    temperature: float | None,
    seed: int = 0,
    batch_size: int = 1024,
) -> list[str]:
    """One completion per prompt: greedy when `temperature` is None, else sampled."""
    model.eval()
    torch.manual_seed(seed)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        enc = tokenizer(batch, return_tensors="pt", padding=True)
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature is not None:
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        generated = model.generate(
            **enc,
            max_new_tokens=MAX_NEW_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        new_tokens = generated[:, enc["input_ids"].shape[1] :]
        out += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return out


def pass_counts(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    rows: Sequence[dict],
    *,
    samples: int,
    temperature: float | None,
    seed: int = 0,
) -> list[int]:
    """How many of `samples` completions of each row are right (greedy: samples=1)."""
    prompts = [row["prompt"] for row in rows for _ in range(samples)]
    completions = complete(model, tokenizer, prompts, temperature=temperature, seed=seed)
    counts = [0] * len(rows)
    for i, completion in enumerate(completions):
        row = rows[i // samples]
        counts[i // samples] += score_completion(completion, row["answer"])
    return counts


def accuracy(counts: Sequence[int], samples: int) -> float:
    return sum(counts) / (samples * len(counts)) if counts else 0.0
