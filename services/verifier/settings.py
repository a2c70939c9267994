"""Settings of the verifier service, from `PC_VERIFIER_*` environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class VerifierSettings(BaseSettings):
    """Limits, worker pool and reward shaping of the verifier; see docs/verifier.md."""

    model_config = SettingsConfigDict(env_prefix="PC_VERIFIER_")

    max_items: int = Field(
        default=512, ge=1, le=100_000, description="Most items in one /v1/score request."
    )
    max_chars: int = Field(
        default=2_000_000, ge=100, description="Most characters in one response or reference "
        "(far above any real completion; a 1 MB runaway response is still scored)."
    )  # fmt: skip
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Larger request bodies are refused "
        "with 413, counted as they arrive (chunked bodies too)."
    )  # fmt: skip
    timeout_s: float = Field(
        default=2.0, gt=0, le=120, description="Hard limit of one symbolic check (the worker "
        "running it is killed past it)."
    )  # fmt: skip
    request_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="Backstop for a whole request: items not "
        "judged by then get `timeout` (see docs/verifier.md for the trade-off)."
    )  # fmt: skip
    workers: int = Field(default=2, ge=1, le=256, description="Resident worker processes.")
    max_workers: int = Field(
        default=6, ge=1, le=512, description="Worker cap including surge workers, which "
        "start in place of stuck ones."
    )  # fmt: skip
    stuck_after_s: float = Field(
        default=0.25, ge=0, le=60, description="A worker busy on one item longer than this "
        "counts as stuck: a waiting item may start a surge worker in its place."
    )  # fmt: skip
    worker_memory_mb: int = Field(
        default=2048, ge=0, description="Address-space limit of a worker in MiB (0: none)."
    )
    cache_size: int = Field(
        default=100_000, ge=0, description="Symbolic verdicts kept across requests (LRU)."
    )
    max_answer_chars: int = Field(
        default=1000, ge=10, description="Longer extracted answers are `too_complex`."
    )
    max_answer_depth: int = Field(
        default=40, ge=1, description="Answers nested deeper are `too_complex`."
    )
    format_bonus: float = Field(
        default=0.0, ge=0, le=0.5, description="Weight b of a well-formed (boxed) answer: "
        "reward = (1 - b) * correct + b * boxed."
    )  # fmt: skip
    numeric_rel_tol: float = Field(
        default=1e-6,
        ge=0,
        le=1,
        description="Relative tolerance of the `numeric` and `leading_number` tasks.",
    )
    numeric_abs_tol: float = Field(
        default=0.0,
        ge=0,
        description="Absolute tolerance of the `numeric` and `leading_number` tasks (default "
        "none: 1e-12 and 2e-12 are different numbers, and so are 0 and 1e-12).",
    )

    @model_validator(mode="after")
    def _check(self) -> VerifierSettings:
        if self.max_workers < self.workers:
            raise ValueError("max_workers must be >= workers")
        return self


@lru_cache
def get_settings() -> VerifierSettings:
    """The settings of this process (a FastAPI dependency; tests override it)."""
    return VerifierSettings()
