"""Wire models of the verifier, shared by the service and `VerifierClient`."""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel, Field

from services.verifier.answers import Reason, Task

TASKS: tuple[str, ...] = get_args(Task)
REASONS: tuple[str, ...] = get_args(Reason)


class ScoreItem(BaseModel):
    """One model response to judge against its reference answer."""

    response: str = Field(description="The model's completion, as generated.")
    reference: str = Field(
        description="The gold answer: a bare answer (`\\frac{1}{2}`, `42`, `B`) or a full "
        "solution whose last `\\boxed{}` or GSM8K `####` line holds it."
    )
    task: Task = Field(
        default="math",
        description="How to extract and compare (docs/verifier.md): `math` (symbolic); "
        "`numeric` (box, `####`, answer statement, else the last number of the response, "
        "compared as numbers with a tolerance); `leading_number` (the number the completion "
        "starts with, compared as `numeric`: only for a model trained to answer that way, "
        "like the tiny task); `exact` (normalised strings; without a marker the whole "
        "response, so a sentence never matches); `choice` (a letter A-J).",
    )


class ScoreRequest(BaseModel):
    """A batch of items, typically every rollout of several prompts."""

    items: list[ScoreItem] = Field(
        description="Items to score; at most the server's `max_items` (see `/health`)."
    )


class ScoreResult(BaseModel):
    """The verdict on one item, at the same index as the item in the request."""

    reward: float = Field(ge=0.0, le=1.0, description="Reward in [0, 1].")
    correct: bool = Field(description="Whether the extracted answer equals the reference.")
    extracted: str | None = Field(
        description="The answer found in the response, before normalisation; null if none."
    )
    reason: Reason = Field(
        description="What happened: `match`, `mismatch`, `no_answer`, `parse_error`, "
        "`too_complex`, `timeout` or `worker_error`."
    )


class ScoreResponse(BaseModel):
    """Results in the order of the request's items."""

    results: list[ScoreResult] = Field(description="One result per item, in order.")


class HealthResponse(BaseModel):
    """Liveness plus the limits a client needs to split its batches."""

    status: str = Field(description="`ok` once the worker pool is up.")
    workers: int = Field(description="Worker processes running now (resident + surge).")
    max_items: int = Field(description="Most items accepted in one request.")
    max_chars: int = Field(description="Most characters accepted in a response or reference.")
    timeout_s: float = Field(description="Hard time limit of one symbolic check, in seconds.")
