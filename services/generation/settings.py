"""Settings of the embedded generation server, read from `PC_GENERATION_*` variables.

Read through the cached `get_settings()` dependency, never at import time, so tests can
pass their own `GenerationSettings` to `create_app` or override the dependency.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GenerationSettings(BaseSettings):
    """How the embedded server loads its model and batches requests."""

    model_config = SettingsConfigDict(env_prefix="PC_GENERATION_", extra="ignore")

    model: Path | None = Field(
        default=None,
        description="Hugging Face model directory (config, safetensors, tokenizer) to serve.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the model runs; `auto` picks CUDA when available."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Model dtype; `auto` is float32 on CPU, bfloat16 on CUDA."
    )
    max_batch_size: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="Most sequences (prompts x n) decoded together in one batch.",
    )
    batch_window_ms: float = Field(
        default=5.0,
        ge=0.0,
        le=1000.0,
        description="Quiet gap that closes a batch: the batcher keeps admitting requests "
        "while they arrive less than this apart.",
    )
    max_batch_wait_ms: float = Field(
        default=50.0,
        ge=0.0,
        le=10000.0,
        description="Longest the batcher waits after a batch's first request.",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Larger request bodies are refused with 413, counted as they arrive "
        "(chunked bodies too).",
    )
    weights_dir: Path | None = Field(
        default=None,
        description="Directory that relative `update_info.path` values of `/update_weights` "
        "are resolved against; unset means paths must be absolute, as in vLLM.",
    )
    token: str | None = Field(
        default=None,
        description="When set, every route but `/health` and `/metrics` requires "
        "`Authorization: Bearer <token>` (401 otherwise); unset: no authentication.",
    )
    served_model_name: str | None = Field(
        default=None,
        description="Model name in `/v1/models` and responses; defaults to the directory name.",
    )
    initial_weight_version: str = Field(
        default="0",
        description="`weight_version` reported before any weight update (a restarted server "
        "reports it again, which is how clients notice stale weights).",
    )
    seed: int | None = Field(
        default=None, description="Seed of the shared sampler for unseeded requests."
    )
    decode_step_delay_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=10000.0,
        description="Sleep this long after every decoding step (0: none). A deliberately "
        "slow server, for measuring how clients balance a fleet; never set in production.",
    )
    torch_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads on CPU; unset keeps torch's."
    )


@lru_cache
def get_settings() -> GenerationSettings:
    """The process's settings, read once from the environment."""
    return GenerationSettings()
