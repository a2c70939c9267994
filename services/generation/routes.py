"""OpenAI-compatible routes: `/v1/completions`, `/v1/models` and `/health`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException

from services.generation.completions import build_response, build_specs, tokenize_prompts
from services.generation.deps import Authorized, EngineDep
from services.generation.models import (
    CompletionRequest,
    CompletionResponse,
    Health,
    ModelCard,
    ModelList,
)

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse, dependencies=Authorized)
async def create_completion(request: CompletionRequest, engine: EngineDep) -> CompletionResponse:
    """Sample `n` completions per prompt; batched with every other request in flight."""
    if request.model is not None and request.model != engine.name:
        raise HTTPException(404, f"The model `{request.model}` does not exist.")
    prompts = tokenize_prompts(request, engine.tokenizer, engine.vocab_size)
    specs = build_specs(
        request,
        prompts,
        max_model_len=engine.max_model_len,
        max_batch=engine.settings.max_batch_size,
    )
    result = await asyncio.wrap_future(engine.submit(specs))
    return build_response(
        request, prompts, result, model_name=engine.name, tokenizer=engine.tokenizer
    )


@router.get("/v1/models", response_model=ModelList, dependencies=Authorized)
async def list_models(engine: EngineDep) -> ModelList:
    return ModelList(
        data=[ModelCard(id=engine.name, max_model_len=engine.max_model_len, seed_scope="sequence")]
    )


@router.get("/health", response_model=Health)
async def health(engine: EngineDep) -> Health:
    return Health(weight_version=engine.weight_version, is_paused=engine.barrier.is_paused)
