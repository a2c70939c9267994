"""Check that pushed weights landed: the server's logprobs must be the trainer's.

A weight push that answers 200 proves nothing about what the server computes with
afterwards. vLLM 0.32 on CPU, for one, reloads a tied model's embedding matrix but keeps
serving the output projection it packed at start-up, and traces its packed linear kernels
into a compiled graph, so an in-place reload can leave a mixture of old and new weights
behind a 200 (docs/generation.md, "Weight sync"). Its `/weight_checker` checksums do not
see that either: on CPU the linear layers' parameters are empty after packing.

So after every push each server samples a few completions of fixed probe prompts, with
logprobs, and the trainer scores the same tokens with the weights it pushed. The mean
absolute difference per completion token must stay within `tolerance` nats; otherwise
the run stops with the step, the server and the largest difference seen, instead of
training on rollouts from weights nobody can vouch for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import torch

from services.common.http import RetryPolicy, bearer, request
from services.generation.client import TOKEN_ENV
from services.generation.models import CompletionRequest, CompletionResponse
from trainer.algos import token_logprobs

# Float32 on both sides agrees to ~1e-5 nats per token (measured: 2.5e-6 mean against
# vLLM-CPU, ~5e-7 against the embedded server); a stale or half-applied update differs by
# nats. bfloat16 kernels differ far more between engines (set tolerance from a measurement).
DEFAULT_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 5e-2}


class WeightLandingError(RuntimeError):
    """A server's logprobs after a push disagree with the pushed weights."""


@dataclass(frozen=True)
class LandingReport:
    """One server's probe after one push: differences in nats per completion token."""

    url: str
    version: int
    mean_abs: float
    max_abs: float
    tokens: int


def default_tolerance(dtype: torch.dtype) -> float:
    return DEFAULT_TOLERANCE.get(dtype, 5e-2)


@torch.no_grad()
def reference_logprobs(
    model: torch.nn.Module,
    prompt: Sequence[int],
    completion: Sequence[int],
    temperature: float = 1.0,
) -> list[float]:
    """log pi(completion[t] | prompt + completion[:t]) under `model` sampled at
    `temperature` (log_softmax(logits / T), trainer.algos.token_logprobs), one per
    completion token.

    One unpadded sequence per call, so no attention mask or padding can change the result.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt) + list(completion)], device=device)
    logits = model(input_ids=ids).logits[:, len(prompt) - 1 : -1]
    targets = torch.tensor([list(completion)], device=device)
    return token_logprobs(logits, targets, temperature)[0].tolist()


class LandingProbe:
    """Samples `prompts` on each server and compares its logprobs with the pushed model's.

    `prompts` are token-id prompts (a few from the training set); `max_tokens` completion
    tokens each, sampled at the run's `temperature` with a fixed seed, so the check costs
    one small call per server per push and covers what rollouts rely on: the pushed
    weights, and logprobs reported for the tempered distribution (a server reporting raw
    logprobs at T != 1 fails it).
    """

    def __init__(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        tolerance: float,
        max_tokens: int = 8,
        seed: int = 20_260_530,
        temperature: float = 1.0,
        timeout: float = 120.0,
        policy: RetryPolicy | None = None,
        token: str | None = None,
    ) -> None:
        """`token`: the servers' bearer token (None: PC_GENERATION_TOKEN)."""
        if not prompts:
            raise ValueError("LandingProbe needs at least one prompt")
        self.prompts = [list(p) for p in prompts]
        if temperature <= 0:
            raise ValueError(
                f"the landing probe samples: temperature must be > 0, not {temperature}"
            )
        self.tolerance, self.max_tokens, self.seed = tolerance, max_tokens, seed
        self.temperature = temperature
        self.timeout, self.policy = timeout, policy or RetryPolicy(attempts=3)
        self._http = httpx.AsyncClient(headers=bearer(token, TOKEN_ENV))

    async def check(
        self, model: torch.nn.Module, urls: Sequence[str], version: int, step: int
    ) -> list[LandingReport]:
        """Probe every server; raise WeightLandingError naming the worst one that fails."""
        reports = await asyncio.gather(*(self._probe(model, url, version) for url in urls))
        failed = [r for r in reports if r.mean_abs > self.tolerance]
        if failed:
            worst = max(failed, key=lambda r: r.mean_abs)
            raise WeightLandingError(
                f"step {step}: weights version {version} did not land on {worst.url}: its "
                f"logprobs differ from the pushed weights by {worst.mean_abs:.3g} nats per "
                f"token on average, {worst.max_abs:.3g} at most (tolerance {self.tolerance:g}"
                f", {worst.tokens} tokens); {len(failed)} of {len(reports)} servers failed"
            )
        return list(reports)

    async def _probe(self, model: torch.nn.Module, url: str, version: int) -> LandingReport:
        name = await self._model_name(url)
        body = CompletionRequest(
            model=name,
            prompt=self.prompts,
            n=1,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=self.seed,
            logprobs=0,
            return_token_ids=True,
        )
        response = await request(
            self._http, "generation", "POST", f"{url}/v1/completions",
            policy=self.policy, timeout=self.timeout,
            json=body.model_dump(exclude_none=True),
        )  # fmt: skip
        parsed = CompletionResponse.model_validate(response.json())
        diffs: list[float] = []
        was_training = model.training
        model.eval()
        try:
            for choice in parsed.choices:
                ids = choice.token_ids or []
                served = choice.logprobs.token_logprobs if choice.logprobs else []
                if not ids:
                    continue
                if len(served) != len(ids):
                    raise WeightLandingError(
                        f"{url} returned {len(ids)} token ids but {len(served)} logprobs: "
                        "the landing check needs `logprobs` and `return_token_ids`"
                    )
                ref = reference_logprobs(model, self.prompts[choice.index], ids, self.temperature)
                diffs += [abs(a - b) for a, b in zip(ref, served, strict=True)]
        finally:
            model.train(was_training)
        if not diffs:
            raise WeightLandingError(f"{url} returned no completion tokens to probe")
        return LandingReport(url, version, sum(diffs) / len(diffs), max(diffs), len(diffs))

    async def _model_name(self, url: str) -> str:
        response = await request(
            self._http, "generation", "GET", f"{url}/v1/models",
            policy=self.policy, timeout=self.timeout,
        )  # fmt: skip
        return str(response.json()["data"][0]["id"])

    async def aclose(self) -> None:
        await self._http.aclose()
