"""Wire models of the generation API, shared by the embedded server and the trainer's client.

Field names follow OpenAI's `/v1/completions` and vLLM's extensions (`return_token_ids`,
`prompt_token_ids`, `token_ids`, `ignore_eos`) so that the same client talks to vLLM,
SGLang or the embedded server. The control models mirror vLLM's weight-transfer routes
(`/pause`, `/init_weight_transfer_engine`, `/update_weights`, `/weight_info`, ...).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FinishReason = Literal["stop", "length", "abort"]
PauseMode = Literal["abort", "wait", "keep"]
Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(BaseModel):
    """Body of `POST /v1/completions` (the subset of OpenAI/vLLM fields that is honoured)."""

    # Unknown OpenAI fields (user, presence_penalty, ...) are ignored, as vLLM does.
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, description="Served model name; must match the server's when given."
    )
    prompt: Prompt = Field(
        description="One text, several texts, one list of token ids, or several such lists."
    )
    n: int = Field(default=1, ge=1, le=256, description="Samples per prompt.")
    max_tokens: int = Field(default=16, ge=1, description="Most tokens generated per sample.")
    temperature: float = Field(
        default=1.0, ge=0.0, le=10.0, description="Sampling temperature; 0 is greedy."
    )
    top_p: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass kept per step."
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="Seed that makes the request's samples reproducible (0 to 2^63 - 1).",
    )
    stop: str | list[str] | None = Field(
        default=None,
        description="Strings that end a sample (excluded from its text); at most 16, none empty.",
    )
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="Return per-token logprobs: 0 gives the sampled token's only, k > 0 adds "
        "the k most likely tokens in `top_logprobs`.",
    )
    return_token_ids: bool | None = Field(
        default=None,
        description="vLLM extension: add `prompt_token_ids` and `token_ids` to each choice.",
    )
    return_tokens_as_token_ids: bool | None = Field(
        default=None,
        description="vLLM extension: write `logprobs.tokens` as 'token_id:<id>' strings.",
    )
    ignore_eos: bool = Field(
        default=False, description="vLLM extension: keep sampling after the EOS token."
    )
    stream: bool = Field(default=False, description="Streaming is not supported: must be false.")
    echo: bool = Field(default=False, description="Echoing the prompt is not supported.")

    @model_validator(mode="after")
    def _check_supported(self) -> CompletionRequest:
        if self.stream:
            raise ValueError("stream=true is not supported by the embedded server")
        if self.echo:
            raise ValueError("echo=true is not supported by the embedded server")
        if self.prompt == "" or (isinstance(self.prompt, list) and not self.prompt):
            raise ValueError("prompt must not be empty")
        if isinstance(self.prompt, list) and any(p == "" for p in self.prompt):
            raise ValueError("a text prompt must not be empty")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 16 or any(not stop for stop in stops):
            raise ValueError("stop takes at most 16 strings, none of them empty")
        if isinstance(self.prompt, list) and any(
            isinstance(p, list) and not p for p in self.prompt
        ):
            raise ValueError("a token-id prompt must not be empty")
        return self

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts as a list, whichever of the four accepted shapes was sent."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [[int(p) for p in prompt]]  # type: ignore[arg-type]
        if all(isinstance(p, str) for p in prompt):
            return [str(p) for p in prompt]
        return [[int(t) for t in p] for p in prompt]  # type: ignore[union-attr]


class CompletionLogProbs(BaseModel):
    """Per-token logprobs of one choice, in OpenAI's legacy completions layout."""

    tokens: list[str] = Field(default_factory=list, description="Each generated token's text.")
    token_logprobs: list[float] = Field(
        default_factory=list,
        description="Log-probability of each sampled token under the distribution it was "
        "sampled from: log_softmax(logits / temperature), renormalised over the top-p "
        "nucleus (vLLM's processed_logprobs); greedy: the raw log_softmax.",
    )
    top_logprobs: list[dict[str, float]] | None = Field(
        default=None, description="The k most likely tokens at each step, when logprobs=k>0."
    )
    text_offset: list[int] = Field(
        default_factory=list, description="Character offset of each token in `text`."
    )


class CompletionChoice(BaseModel):
    """One sample: choices are ordered prompt-major, `index = prompt_index * n + sample`."""

    index: int = Field(description="Position of this choice in `choices`.")
    text: str = Field(description="Decoded completion, special tokens skipped, stop excluded.")
    logprobs: CompletionLogProbs | None = Field(
        default=None, description="Per-token logprobs, when the request asked for them."
    )
    finish_reason: FinishReason | None = Field(
        default=None,
        description="'stop' (EOS or a stop string), 'length' (max_tokens) or 'abort' "
        "(cut by `/pause?mode=abort`).",
    )
    stop_reason: str | int | None = Field(
        default=None, description="The stop string that ended the sample, if any."
    )
    prompt_token_ids: list[int] | None = Field(
        default=None, description="Token ids of this choice's prompt (return_token_ids)."
    )
    token_ids: list[int] | None = Field(
        default=None,
        description="Generated token ids, EOS included when sampled (return_token_ids).",
    )


class Usage(BaseModel):
    """Token counts of one response."""

    prompt_tokens: int = Field(description="Prompt tokens, counted once per prompt.")
    completion_tokens: int = Field(description="Generated tokens over every choice.")
    total_tokens: int = Field(description="prompt_tokens + completion_tokens.")


class CompletionResponse(BaseModel):
    """Body returned by `POST /v1/completions`."""

    id: str = Field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}", description="Response id.")
    object: Literal["text_completion"] = Field(default="text_completion", description="Type.")
    created: int = Field(default_factory=lambda: int(time.time()), description="Unix time.")
    model: str = Field(description="Served model name.")
    choices: list[CompletionChoice] = Field(description="Samples, prompt-major.")
    usage: Usage = Field(description="Token counts.")
    weight_version: str | None = Field(
        default=None,
        description="Weight version (as committed by `/finish_weight_update`) that produced "
        "the last decoding step of this response. Absent from vLLM and SGLang responses.",
    )
    initial_weight_version: str | None = Field(
        default=None,
        description="Weight version at this response's first decoding step; differs from "
        "`weight_version` only when weights changed mid-generation (no pause, or "
        "`/pause?mode=keep`).",
    )


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`."""

    id: str = Field(description="Served model name.")
    object: Literal["model"] = Field(default="model", description="Type.")
    created: int = Field(default_factory=lambda: int(time.time()), description="Unix time.")
    owned_by: str = Field(default="pilot-commit", description="Owner.")
    max_model_len: int | None = Field(default=None, description="Longest prompt + completion.")
    seed_scope: Literal["sequence"] | None = Field(
        default=None,
        description=(
            "How a call's seed reaches its sequences. 'sequence': each sequence of the call "
            "draws from its own stream (the embedded server: seed x 1,000,003 + sequence "
            "index), so the prompts of one seeded call are independent. Absent (vLLM, "
            "SGLang): sample i of every prompt shares one stream (vllm#50440)."
        ),
    )


class ModelList(BaseModel):
    """Body of `GET /v1/models`."""

    object: Literal["list"] = Field(default="list", description="Type.")
    data: list[ModelCard] = Field(description="Served models.")


class Health(BaseModel):
    """Body of `GET /health`."""

    status: Literal["ok"] = Field(default="ok", description="Always 'ok' when answering.")
    weight_version: str | None = Field(description="Current weight version.")
    is_paused: bool = Field(description="Whether generation is paused.")


# --- vLLM weight-transfer control API ------------------------------------------------------


class InitWeightTransferRequest(BaseModel):
    """Body of `POST /init_weight_transfer_engine`."""

    init_info: dict[str, Any] = Field(
        description="Backend-specific init info: `{}` for the disk backend; NCCL sends "
        "master_address, master_port, rank_offset, world_size (rejected here)."
    )


class StartWeightUpdateRequest(BaseModel):
    """Optional body of `POST /start_weight_update` (older vLLM clients send one)."""

    is_checkpoint_format: bool = Field(
        default=True, description="Accepted for compatibility; weights are always checkpoint."
    )


class UpdateWeightsRequest(BaseModel):
    """Body of `POST /update_weights`."""

    update_info: dict[str, Any] = Field(
        description="Backend-specific update info; the disk backend needs `path`, a directory "
        "of safetensors files (absolute, or relative to the server's weights_dir)."
    )


class FinishWeightUpdateRequest(BaseModel):
    """Body of `POST /finish_weight_update`."""

    weight_version: str | None = Field(
        default=None,
        description="Version committed with the new weights; when omitted, an integer "
        "version is incremented by one.",
    )


class UpdateWeightVersionRequest(BaseModel):
    """Body of `POST /update_weight_version`."""

    new_version: str = Field(description="Version to report from now on; weights unchanged.")


class CollectiveRpcRequest(BaseModel):
    """Body of `POST /collective_rpc` (vLLM dev mode): a worker method and string kwargs.

    The embedded server runs one method, `reload_weights` with `weights_path`, vLLM's
    in-place reload from a safetensors directory; anything else is refused with 400.
    """

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    method: str = Field(description="Worker method to run: `reload_weights`.")
    args: list[str] = Field(default_factory=list, description="Positional string args.")
    rpc_kwargs: dict[str, str] = Field(
        default_factory=dict,
        alias="kwargs",
        description="Keyword string args; `reload_weights` takes `weights_path`, a directory "
        "of safetensors files (absolute, or relative to the server's weights_dir).",
    )
    timeout: float | None = Field(default=None, gt=0, description="Seconds to wait, or none.")


class CollectiveRpcResponse(BaseModel):
    """Answer of `POST /collective_rpc`: one result per worker (one worker here)."""

    results: list[Any] = Field(description="Each worker's return value (null for none).")


class WeightInfo(BaseModel):
    """Body of `GET /weight_info` (vLLM's name for the committed weight version)."""

    weight_version: str | None = Field(description="Latest committed weight version.")


class StatusMessage(BaseModel):
    """Acknowledgement of a control call, in vLLM's shapes (`message` or `status`)."""

    message: str | None = Field(default=None, description="What was done.")
    status: str | None = Field(default=None, description="'paused' or 'resumed'.")


class PausedState(BaseModel):
    """Body of `GET /is_paused`."""

    is_paused: bool = Field(description="Whether generation is paused.")


class WorldSize(BaseModel):
    """Body of `GET /get_world_size`: inference workers behind this server."""

    world_size: int = Field(description="Number of inference workers (1 here).")


class UpdateWeightVersionResponse(BaseModel):
    """Body returned by `POST /update_weight_version`."""

    success: bool = Field(description="Always true when answering 200.")
    new_version: str = Field(description="The version now reported.")


# --- SGLang's disk update, used by the trainer's `sglang` adapter -------------------------


class SGLangUpdateFromDiskRequest(BaseModel):
    """Body of SGLang's `POST /update_weights_from_disk`."""

    model_path: str = Field(description="Model directory holding the new weights.")
    load_format: str | None = Field(default=None, description="Loader format; None is auto.")
    abort_all_requests: bool = Field(
        default=False, description="Abort running requests before loading."
    )
    weight_version: str | None = Field(default=None, description="Version to commit.")


class SGLangUpdateFromDiskResponse(BaseModel):
    """Body SGLang returns from `POST /update_weights_from_disk`."""

    model_config = ConfigDict(extra="ignore")

    success: bool = Field(description="Whether the weights were loaded.")
    message: str = Field(default="", description="Why not, when success is false.")
