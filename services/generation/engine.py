"""The batching decode engine behind the embedded server.

Requests from every HTTP client land in one queue; a single decode thread takes what
arrived within a short window (up to `max_batch_size` sequences) and decodes it as one
left-padded batch with a KV cache, so many clients cost about one `model.generate` over
the same total batch. The loop is written out, not delegated to `model.generate`,
because weights may change between two steps and `/pause` may freeze or cut a batch
mid-way; both happen at the step boundary through `StepBarrier`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from services.common.devices import pick_device
from services.generation.models import FinishReason
from services.generation.sampling import find_stop, sample_tokens, sampling_logprobs
from services.generation.settings import GenerationSettings
from services.generation.step_barrier import StepBarrier
from services.generation.weights import WeightLoadError, check_against, copy_into

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SequenceSpec:
    """One sequence to decode: a prompt and its sampling parameters."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_logprobs: int = 0


@dataclass
class SequenceOutput:
    """What one sequence produced."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_string: str | None = None
    text: str = ""


@dataclass
class JobOutput:
    """A request's sequences plus the weight versions that produced them."""

    sequences: list[SequenceOutput]
    weight_version: str | None
    initial_weight_version: str | None


@dataclass
class Job:
    """The sequences of one HTTP request; they are always decoded in the same batch."""

    sequences: list[SequenceSpec]
    future: Future[JobOutput] = field(default_factory=Future)


class ConflictError(RuntimeError):
    """A control call arrived in the wrong state (answered 409)."""


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype: torch.dtype = getattr(torch, requested)
    return dtype


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] input ids and attention mask, padded on the left so new tokens align."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def distinct_prompts(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The distinct prompts, in first-seen order, and for each input its row among them."""
    seen: dict[tuple[int, ...], int] = {}
    rows = [seen.setdefault(tuple(p), len(seen)) for p in prompts]
    return [list(p) for p in seen], rows


class BatchState:
    """Per-sequence progress of one batch: tokens so far and why each one finished."""

    def __init__(self, specs: list[SequenceSpec], eos_ids: set[int], tokenizer: Any) -> None:
        self.specs, self.eos_ids, self.tokenizer = specs, eos_ids, tokenizer
        self.outputs = [SequenceOutput() for _ in specs]
        self.stop_window = [max((len(s) for s in spec.stop), default=0) + 2 for spec in specs]

    @property
    def done(self) -> list[bool]:
        return [out.finish_reason is not None for out in self.outputs]

    def append(self, tokens: list[int], logprobs: list[float], tops: list[Any] | None) -> None:
        for row, (spec, out) in enumerate(zip(self.specs, self.outputs, strict=True)):
            if out.finish_reason is not None:
                continue
            out.token_ids.append(tokens[row])
            out.logprobs.append(logprobs[row])
            if spec.top_logprobs and tops is not None:
                out.top_logprobs.append(tops[row][: spec.top_logprobs])
            self._check_finished(row)

    def _check_finished(self, row: int) -> None:
        spec, out = self.specs[row], self.outputs[row]
        hit_eos = not spec.ignore_eos and out.token_ids[-1] in self.eos_ids
        if hit_eos or (spec.stop and self._hit_stop(row)):
            out.finish_reason = "stop"
        elif len(out.token_ids) >= spec.max_tokens:
            out.finish_reason = "length"

    def _hit_stop(self, row: int) -> bool:
        spec, out = self.specs[row], self.outputs[row]
        window = out.token_ids[-self.stop_window[row] :]
        tail = self.tokenizer.decode(window, skip_special_tokens=True)
        if find_stop(tail, spec.stop) is None:
            return False
        text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        cut = find_stop(text, spec.stop)
        if cut is None:  # the stop straddled a special token; treat as not hit
            return False
        out.stop_string = next(s for s in spec.stop if s and text.find(s) == cut)
        out.text = text[:cut]
        return True

    def abort_unfinished(self) -> None:
        for out in self.outputs:
            if out.finish_reason is None:
                out.finish_reason = "abort"

    def finalize_texts(self) -> None:
        for out in self.outputs:
            if out.stop_string is None:
                out.text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)


class Engine:
    """One model, one decode thread, and the weight-update session of vLLM's disk backend."""

    def __init__(self, settings: GenerationSettings) -> None:
        if settings.model is None:
            raise ValueError("no model: set PC_GENERATION_MODEL or pass --model DIR")
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.settings = settings
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(settings.dtype, self.device)
        self.model_dir = Path(settings.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        # Typed loosely: transformers' stubs type `.to()` oddly and the config is dynamic.
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype)
        self.model: Any = cast(Any, model).to(self.device).eval()
        self.name = settings.served_model_name or self.model_dir.name
        self.max_model_len = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.vocab_size = int(self.model.config.vocab_size)
        self.eos_ids = self._eos_ids()
        self.pad_id = self._pad_id()
        self.params = dict(self.model.state_dict())
        self.weight_version: str | None = settings.initial_weight_version
        self.weight_updates = 0
        self.batches = 0  # batches decoded and requests served: how well batching works
        self.batched_requests = 0
        self.barrier = StepBarrier()
        # The weight-update session; control calls run in worker threads, so one lock.
        self._session_lock = threading.Lock()
        self._staged: dict[str, torch.Tensor] | None = None
        self._failed: str | None = None  # why the last session failed, until the next start
        self._finished: str | None = None  # the version the last session committed
        self._shared_gen = torch.Generator(self.device)
        self._shared_gen.manual_seed(settings.seed if settings.seed is not None else time.time_ns())
        self._queue: queue.Queue[Job] = queue.Queue()
        self._carry: Job | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(source)
        return ids

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else min(self.eos_ids, default=0))

    # --- lifecycle and submission ------------------------------------------------------------

    def start(self) -> Engine:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()
        self.barrier.resume()
        self._thread.join(timeout=30)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize() + (self._carry is not None)

    def submit(self, specs: list[SequenceSpec]) -> Future[JobOutput]:
        """Queue the sequences of one request; they will be decoded in one batch."""
        job = Job(specs)
        self._queue.put(job)
        return job.future

    # --- the decode thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            jobs = self._collect()
            if not jobs:
                continue
            with self.barrier.batch():
                self._serve(jobs)

    def _serve(self, jobs: list[Job]) -> None:
        self.batches += 1
        self.batched_requests += len(jobs)
        try:
            outputs, first, last = self._decode([s for job in jobs for s in job.sequences])
        except Exception as exc:  # surfaces as a 500 on each request of the batch
            log.exception("decoding a batch of %d requests failed", len(jobs))
            for job in jobs:
                job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            mine = outputs[start : start + len(job.sequences)]
            start += len(job.sequences)
            job.future.set_result(
                JobOutput(mine, weight_version=last, initial_weight_version=first)
            )

    def _collect(self) -> list[Job]:
        """The next batch: requests that keep arriving less than a window apart.

        Waiting for a quiet gap (capped by `max_batch_wait_ms`) rather than a fixed time
        after the first request gathers a burst of clients that the event loop is still
        parsing, which a fixed window would split into several small batches.
        """
        first = self._carry
        self._carry = None
        if first is None:
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                return []
        jobs, size = [first], len(first.sequences)
        gap = self.settings.batch_window_ms / 1000
        cap = time.monotonic() + max(gap, self.settings.max_batch_wait_ms / 1000)
        while size < self.settings.max_batch_size:
            wait = min(gap, cap - time.monotonic())
            try:
                job = self._queue.get(timeout=max(0.0, wait))
            except queue.Empty:
                break
            if size + len(job.sequences) > self.settings.max_batch_size:
                self._carry = job
                break
            jobs.append(job)
            size += len(job.sequences)
        return jobs

    @torch.inference_mode()
    def _decode(
        self, specs: list[SequenceSpec]
    ) -> tuple[list[SequenceOutput], str | None, str | None]:
        """Decode `specs` together; return outputs and the first and last weight versions."""
        state = BatchState(specs, self.eos_ids, self.tokenizer)
        sampler = self._sampler_inputs(specs)
        # Each distinct prompt is prefilled once; its sequences (a group's n samples)
        # share its cache rows and first logits: a prompt of 80 tokens sampled 16 times
        # costs one 80-token prefill, not 16.
        unique, rows = distinct_prompts([s.prompt_ids for s in specs])
        ids, mask = left_pad(unique, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with self.barrier.step():
            logits = self._forward(ids, mask, positions, cache)
            first = last = self.weight_version
        index = torch.tensor(rows, device=self.device)
        if len(unique) < len(specs):
            cache.reorder_cache(cast(torch.LongTensor, index))
        logits, mask, positions = logits[index], mask[index], positions[index]
        self._slow_down()
        while True:
            tokens = self._sample_step(logits, sampler, state)
            if all(state.done):
                break
            if self.barrier.should_abort():
                state.abort_unfinished()
                break
            mask = torch.cat([mask, mask.new_ones((len(specs), 1))], dim=1)
            positions = positions[:, -1:] + 1
            with self.barrier.step():
                logits = self._forward(tokens[:, None], mask, positions, cache)
                last = self.weight_version
            self._slow_down()
        state.finalize_texts()
        return state.outputs, first, last

    def _slow_down(self) -> None:
        """`decode_step_delay_ms` of sleep after a step, outside the step barrier (so
        weight updates and pauses are not held up by it)."""
        if self.settings.decode_step_delay_ms:
            time.sleep(self.settings.decode_step_delay_ms / 1000)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def _sampler_inputs(self, specs: list[SequenceSpec]) -> dict[str, Any]:
        generators: list[torch.Generator | None] = []
        for spec in specs:
            if spec.seed is None:
                generators.append(None)
                continue
            generator = torch.Generator(self.device)
            generator.manual_seed(spec.seed)
            generators.append(generator)
        temperature = torch.tensor([s.temperature for s in specs], device=self.device)
        return {
            "temperature": temperature,
            "top_p": torch.tensor([s.top_p for s in specs], device=self.device),
            "greedy": temperature <= 0,
            "generators": generators,
            "top_k": max(s.top_logprobs for s in specs),
        }

    def _sample_step(
        self, logits: torch.Tensor, sampler: dict[str, Any], state: BatchState
    ) -> torch.Tensor:
        # The sampled distribution's logprobs (logits / T, top-p renormalised), as vLLM's
        # processed_logprobs mode reports them: what the trainer scores with logits / T.
        logprobs = sampling_logprobs(logits, sampler["temperature"], sampler["top_p"])
        tokens = sample_tokens(logprobs, sampler["greedy"], sampler["generators"], self._shared_gen)
        chosen = logprobs.gather(1, tokens[:, None])[:, 0]
        tops = None
        if sampler["top_k"]:
            values, indices = logprobs.topk(sampler["top_k"], dim=-1)
            pairs = zip(indices.tolist(), values.tolist(), strict=True)
            tops = [list(zip(i, v, strict=True)) for i, v in pairs]
        state.append(tokens.tolist(), chosen.tolist(), tops)
        # Finished rows keep decoding a pad token; their outputs are no longer read.
        done = torch.tensor(state.done, device=tokens.device)
        return torch.where(done, torch.full_like(tokens, self.pad_id), tokens)

    # --- weight updates (vLLM's disk backend) -----------------------------------------------

    def start_weight_update(self) -> None:
        """Open an update session; a second start discards what the first staged."""
        with self._session_lock:
            self._staged, self._failed = {}, None

    def stage_weights(self, tensors: dict[str, torch.Tensor]) -> int:
        """Check, convert and keep `tensors` until `finish_weight_update`; returns how many.

        Raises ConflictError outside a session, WeightLoadError for tensors that do not
        fit (see `check_against`); the latter also fails the session (`fail_weight_update`).
        """
        with self._session_lock:
            if self._staged is None:
                raise ConflictError(self._no_session())
            try:
                checked = check_against(tensors, self.params)
            except WeightLoadError as exc:
                self._fail(str(exc))
                raise
            self._staged.update(checked)
            return len(tensors)

    def fail_weight_update(self, reason: str) -> None:
        """End the open session without committing: its finish answers 409 with `reason`."""
        with self._session_lock:
            if self._staged is not None:
                self._fail(reason)

    def _fail(self, reason: str) -> None:
        self._staged, self._failed = None, reason

    def _no_session(self) -> str:
        if self._failed is not None:
            return (
                f"the weight update failed ({self._failed}); nothing was committed: "
                "call /start_weight_update again"
            )
        return "no weight update in progress: call /start_weight_update first"

    def finish_weight_update(self, version: str | None) -> float:
        """Swap the staged tensors in between two decoding steps; returns seconds held.

        Finishing again with the version the last session committed (a retry whose first
        answer was lost) changes nothing and returns 0.0. Raises ConflictError outside a
        session, after a failed `update_weights`, and when no version is given and the
        current one is not an integer.
        """
        with self._session_lock:
            if self._staged is None:
                if version is not None and version == self._finished == self.weight_version:
                    return 0.0
                raise ConflictError(self._no_session())
            new_version = version if version is not None else self._next_version()
            staged = self._staged
            with self.barrier.exclusive():
                began = time.perf_counter()
                copy_into(staged, self.params)
                self.weight_version = new_version
                self.weight_updates += 1
                held = time.perf_counter() - began
            self._staged, self._finished = None, new_version
        log.info("weights updated to version %s (%d tensors)", new_version, len(staged))
        return held

    def reload_weights(self, tensors: dict[str, torch.Tensor]) -> float:
        """vLLM's in-place reload: check, then swap between two decoding steps, keeping the
        reported version (the caller sets it with `/update_weight_version`). Raises
        WeightLoadError (weights unchanged); a staged session is left as it is."""
        with self._session_lock:
            checked = check_against(tensors, self.params)
            with self.barrier.exclusive():
                began = time.perf_counter()
                copy_into(checked, self.params)
                self.weight_updates += 1
                held = time.perf_counter() - began
        log.info("weights reloaded (%d tensors), version %s", len(checked), self.weight_version)
        return held

    def set_weight_version(self, version: str) -> None:
        """Report `version` from now on (weights unchanged); set between two decoding steps,
        so a response's `weight_version` always names the weights of its steps."""
        with self._session_lock, self.barrier.exclusive():
            self.weight_version = version

    def _next_version(self) -> str:
        current = self.weight_version
        if current is not None and current.lstrip("-").isdigit():
            return str(int(current) + 1)
        raise ConflictError(
            f"current weight_version {current!r} is not an integer: pass weight_version"
        )
