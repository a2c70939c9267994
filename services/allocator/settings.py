"""Allocator settings, from the environment (prefix `PC_ALLOCATOR_`)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AllocatorSettings(BaseSettings):
    """Every field can be set as PC_ALLOCATOR_<NAME> (e.g. PC_ALLOCATOR_REDIS_URL)."""

    model_config = SettingsConfigDict(env_prefix="PC_ALLOCATOR_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis holding all state: `redis://host:port/db` for one Redis, or "
        "`redis+cluster://host:port[,host:port...]` for a Redis Cluster (any of its nodes; "
        "the client finds the others).",
    )
    token: str | None = Field(
        None,
        description="When set, every /v1 call (reads too) requires `Authorization: Bearer "
        "<token>`; /health, /ready, /metrics and the OpenAPI schema stay open.",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Larger request bodies are refused with 413."
    )
    ttl_s: int = Field(
        7 * 86400,
        ge=60,
        description="How long plans, results and request ids are kept for idempotent retries.",
    )
    redis_timeout_s: float = Field(5.0, gt=0, description="Socket timeout for Redis calls.")


@lru_cache
def get_settings() -> AllocatorSettings:
    return AllocatorSettings()
