"""Translate between the OpenAI completions wire format and the engine's sequences.

Pure functions of a request (or of engine outputs) plus the tokenizer, so the
validation rules and the choice layout are testable without a server.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from services.generation.engine import JobOutput, SequenceOutput, SequenceSpec
from services.generation.models import (
    CompletionChoice,
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    Usage,
)

SEED_STRIDE = 1_000_003  # spreads (seed, sample index) pairs so samples of one request differ


def tokenize_prompts(
    request: CompletionRequest, tokenizer: Any, vocab_size: int
) -> list[list[int]]:
    """Token ids of each prompt; 400 when an id is outside the vocabulary."""
    prompts = request.prompts()
    if prompts and isinstance(prompts[0], str):
        encoded = [list(tokenizer.encode(text)) for text in prompts]
        empty = [i for i, ids in enumerate(encoded) if not ids]
        if empty:  # the model cannot run on zero tokens; the whole request is refused
            raise HTTPException(422, f"prompts {empty[:5]} encode to no tokens")
        return encoded
    ids: list[list[int]] = prompts  # type: ignore[assignment]
    for prompt in ids:
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise HTTPException(400, f"token ids {bad[:5]} outside vocabulary [0, {vocab_size})")
    return ids


def build_specs(
    request: CompletionRequest, prompts: list[list[int]], *, max_model_len: int, max_batch: int
) -> list[SequenceSpec]:
    """One spec per choice, prompt-major; 400 when a request cannot be served whole."""
    longest = max(len(p) for p in prompts)
    if longest + request.max_tokens > max_model_len:
        raise HTTPException(
            400,
            f"prompt ({longest} tokens) + max_tokens ({request.max_tokens}) exceeds the "
            f"model's context of {max_model_len} tokens",
        )
    if len(prompts) * request.n > max_batch:
        raise HTTPException(
            400, f"{len(prompts)} prompts x n={request.n} exceeds max_batch_size={max_batch}"
        )
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    specs = []
    for index in range(len(prompts) * request.n):
        seed = None if request.seed is None else (request.seed * SEED_STRIDE + index) % 2**63
        specs.append(
            SequenceSpec(
                prompt_ids=prompts[index // request.n],
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=seed,
                stop=stop,
                ignore_eos=request.ignore_eos,
                top_logprobs=request.logprobs or 0,
            )
        )
    return specs


def _logprobs(
    out: SequenceOutput, request: CompletionRequest, tokenizer: Any
) -> CompletionLogProbs:
    if request.return_tokens_as_token_ids:
        tokens = [f"token_id:{t}" for t in out.token_ids]
    else:
        tokens = tokenizer.batch_decode([[t] for t in out.token_ids])
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token)
    top = None
    if request.logprobs:
        top = [{tokenizer.decode([i]): v for i, v in step} for step in out.top_logprobs]
    return CompletionLogProbs(
        tokens=tokens, token_logprobs=out.logprobs, top_logprobs=top, text_offset=offsets
    )


def build_response(
    request: CompletionRequest,
    prompts: list[list[int]],
    result: JobOutput,
    *,
    model_name: str,
    tokenizer: Any,
) -> CompletionResponse:
    """The OpenAI response for `result`, choices in the order of the specs."""
    choices = []
    want_logprobs = request.logprobs is not None
    for index, out in enumerate(result.sequences):
        prompt = prompts[index // request.n]
        choices.append(
            CompletionChoice(
                index=index,
                text=out.text,
                logprobs=_logprobs(out, request, tokenizer) if want_logprobs else None,
                finish_reason=out.finish_reason,
                stop_reason=out.stop_string,
                prompt_token_ids=prompt if request.return_token_ids else None,
                token_ids=out.token_ids if request.return_token_ids else None,
            )
        )
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(out.token_ids) for out in result.sequences)
    return CompletionResponse(
        model=model_name,
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        weight_version=result.weight_version,
        initial_weight_version=result.initial_weight_version,
    )
