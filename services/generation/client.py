"""Async client for any server that speaks OpenAI `/v1/completions` with token ids.

It lives beside the generation server whose wire models (models.py) it shares; the trainer
and the benchmarks import it.

vLLM, SGLang and the embedded server all qualify. Requests are split into chunks of at
most `max_prompts_per_request` prompts and `max_sequences_per_request` sequences
(prompts x n), each chunk goes to the base URL with the fewest
outstanding requests, and a chunk that fails with a transport error or a 5xx is retried
with backoff, on whichever server is then least loaded. 4xx answers are not retried.

Seeds. A call carries one seed, which the client derives from the batch's seed and the
index of the call's first request (`chunk_seed`). vLLM seeds each prompt of a call from
it alone (child i of every prompt gets seed + i, vllm#50440), so the prompts of one call
would draw the same noise and their samples would be correlated: an evaluation's
accuracy far noisier than its standard error says, and a round's rewards correlated
across prompts. So a seeded request is sent alone, one prompt per call, unless every
server of the fleet reports `seed_scope: "sequence"` in `GET /v1/models` (the embedded
server, which seeds each sequence of a call from its own stream): then seeded prompts
are batched like unseeded ones. The servers are asked once each, at the first seeded
batch; a server that cannot be asked counts as sharing seeds for that batch.

A fleet of servers (one client, several base URLs):
- a server that cannot be reached (refused, reset, killed mid-request) is marked *down*:
  it gets no chunk until a re-probe (`GET /weight_info`, at the next `generate` or
  `refresh` once `reprobe_s` has passed) finds it answering; its failed chunks are re-sent
  to the servers still up, so each request is answered once, by one server;
- with `required_version` set (the trainer sets it to the version it pushed), a server
  that answers with another weight version is *held*: out of rotation until a refresh
  finds it reporting the required version (the trainer pushes to it in between);
- `max_outstanding_per_server` (default: no cap) makes the balancing by outstanding
  requests work within one batch: without a cap every chunk of a batch is sent at once,
  split evenly whatever each server's speed; with a cap, chunks wait in the client for a
  free slot, so a faster server takes more of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, cast

import httpx

from services.common.http import RetryPolicy, ServiceError, ServiceUnavailable, bearer, request
from services.generation.models import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelList,
    Prompt,
)

log = logging.getLogger(__name__)

# Where each server kind reports its weight version: vLLM (and the embedded server), SGLang.
VERSION_PATHS = ("/weight_info", "/model_info")
# The generation servers' bearer token when none is passed: the embedded server's
# PC_GENERATION_TOKEN, which is also vLLM's --api-key (services/generation/cli.py).
TOKEN_ENV = "PC_GENERATION_TOKEN"


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters shared by the prompts of one `/v1/completions` call."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (token ids or text) and how many samples to draw from it."""

    prompt: list[int] | str
    n: int = 1
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass(frozen=True)
class Sample:
    """One sampled completion with what the trainer needs for importance ratios."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str | None


@dataclass(frozen=True)
class Completion:
    """The `n` samples of one request, plus the server's weight version when it reports one."""

    prompt_token_ids: list[int] | None
    samples: list[Sample]
    weight_version: str | None
    base_url: str


def _token_ids(choice: CompletionChoice) -> list[int]:
    """Generated ids from `token_ids`, or from 'token_id:<id>' logprob tokens (SGLang, old vLLM)."""
    if choice.token_ids is not None:
        return choice.token_ids
    tokens = choice.logprobs.tokens if choice.logprobs is not None else []
    if tokens and all(t.startswith("token_id:") for t in tokens):
        return [int(t.split(":", 1)[1]) for t in tokens]
    raise ValueError("the server returned neither token_ids nor token-id logprob tokens")


def _sample(choice: CompletionChoice) -> Sample:
    logprobs = choice.logprobs.token_logprobs if choice.logprobs is not None else []
    return Sample(_token_ids(choice), list(logprobs), choice.text, choice.finish_reason)


def split_completions(
    response: CompletionResponse, n: int, count: int, base_url: str
) -> list[Completion]:
    """Regroup a response's prompt-major choices into `count` completions of `n` samples."""
    choices = sorted(response.choices, key=lambda c: c.index)
    if len(choices) != n * count:
        raise ValueError(f"expected {n * count} choices, got {len(choices)}")
    groups = [choices[i * n : (i + 1) * n] for i in range(count)]
    version = response.weight_version
    return [
        Completion(g[0].prompt_token_ids, [_sample(c) for c in g], version, base_url)
        for g in groups
    ]


def plan_chunks(
    requests: Sequence[GenerationRequest],
    max_prompts: int,
    max_sequences: int | None = None,
    *,
    seeds_per_sequence: bool = False,
) -> list[list[int]]:
    """Indices of `requests` grouped so each group is one call: same n, same sampling.

    A call holds at most `max_prompts` prompts and, when `max_sequences` is given, at most
    that many sequences (prompts x n; a single prompt whose n exceeds it goes alone). A
    seeded request goes alone unless `seeds_per_sequence` (every server seeds each
    sequence of a call apart; module docstring, "Seeds").
    """
    by_key: dict[tuple[object, ...], list[int]] = {}
    for index, req in enumerate(requests):
        key = (req.n, req.sampling, isinstance(req.prompt, str))
        by_key.setdefault(key, []).append(index)
    chunks = []
    for indices in by_key.values():
        first = requests[indices[0]]
        size = max_prompts if first.sampling.seed is None or seeds_per_sequence else 1
        if max_sequences is not None:
            size = max(1, min(size, max_sequences // max(1, first.n)))
        chunks += [indices[i : i + size] for i in range(0, len(indices), size)]
    return chunks


def chunk_seed(seed: int, first_index: int) -> int:
    """The seed one call carries: derived from the batch's seed and the index of the call's
    first request, so that the calls of one seeded batch draw independent noise.

    Servers seed a call's sequences from the call's seed (the embedded server as
    seed x stride + sequence index, vLLM as seed + sample index), so sending the batch's
    seed with every call would give the calls the same noise: samples of different
    prompts would be correlated and an evaluation's accuracy far noisier than its
    binomial error says. Chunking is deterministic for a given fleet, so a retried or
    resumed batch gets the same seeds. 56 bits: distinct calls' seeds (and vLLM's
    seed + i) do not meet.
    """
    digest = hashlib.blake2b(f"{seed}:{first_index}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big")


class NoServerInRotation(ServiceUnavailable):
    """Every server that answers is held for another weight version, and the others are
    down: waiting cannot help, a push to `held` can (the trainer's `admit_servers`)."""

    def __init__(self, held: list[str], down: list[str]) -> None:
        self.held, self.down = held, down
        super().__init__(
            f"no generation server in rotation: {held} serve another weight version than "
            f"the required one, {down} are down"
        )


class GenerationClient:
    """Balances `/v1/completions` calls over several servers by outstanding requests.

    `token` is sent as `Authorization: Bearer` on every call; None reads
    PC_GENERATION_TOKEN (unset: no header). `max_outstanding_per_server`: most calls in
    flight per server (None: no cap); `reprobe_s`: seconds a server marked down waits
    before it is probed again. Fleet states (module docstring): `down`, `held`, `rotation`.
    """

    def __init__(
        self,
        base_urls: list[str],
        *,
        model: str | None = None,
        token: str | None = None,
        timeout: float = 300.0,
        policy: RetryPolicy | None = None,
        max_prompts_per_request: int = 32,
        max_sequences_per_request: int = 256,
        max_outstanding_per_server: int | None = None,
        reprobe_s: float = 5.0,
    ) -> None:
        if not base_urls:
            raise ValueError("GenerationClient needs at least one base URL")
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self.model, self.timeout = model, timeout
        self.policy = policy or RetryPolicy()
        self.max_prompts = max_prompts_per_request
        # The embedded server's default max_batch_size; vLLM and SGLang take any size.
        self.max_sequences = max_sequences_per_request
        self.outstanding = dict.fromkeys(self.base_urls, 0)
        if max_outstanding_per_server is not None and max_outstanding_per_server < 1:
            raise ValueError("max_outstanding_per_server must be at least 1 (or None)")
        self.max_outstanding = max_outstanding_per_server
        self.reprobe_s = reprobe_s
        self.required_version: str | None = None
        self.down: dict[str, float] = {}  # unreachable server -> when to re-probe it (monotonic)
        self.held: set[str] = set()  # reachable, but not serving `required_version`
        self.served = dict.fromkeys(self.base_urls, 0)  # chunks answered, per server
        self.seed_scopes: dict[str, str | None] = {}  # server -> its /v1/models seed_scope
        self._slot_freed = asyncio.Condition()
        self._tie_break = itertools.count()
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=256), headers=bearer(token, TOKEN_ENV)
        )

    async def __aenter__(self) -> GenerationClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def rotation(self) -> list[str]:
        """The servers chunks may go to: neither down nor held, in base-URL order."""
        return [url for url in self.base_urls if url not in self.down and url not in self.held]

    def _pick(self) -> str | None:
        """The server in rotation with the fewest outstanding requests (ties rotate) that is
        under `max_outstanding_per_server`; None when there is none."""
        rotation = self.rotation
        if self.max_outstanding is not None:
            rotation = [url for url in rotation if self.outstanding[url] < self.max_outstanding]
        if not rotation:
            return None
        turn = next(self._tie_break) % len(rotation)
        order = rotation[turn:] + rotation[:turn]
        return min(order, key=lambda url: self.outstanding[url])

    def mark_down(self, url: str) -> None:
        """Take `url` out of rotation until a re-probe `reprobe_s` from now finds it up."""
        if url not in self.down:
            log.warning("generation server %s is down; re-probing it in %gs", url, self.reprobe_s)
        self.down[url] = time.monotonic() + self.reprobe_s
        self.held.discard(url)

    def mark_current(self, urls: Sequence[str]) -> None:
        """`urls` serve `required_version` now (the caller just pushed it to them): they
        leave the held set and the down list."""
        for url in urls:
            self.held.discard(url)
            self.down.pop(url, None)

    async def refresh(
        self, required_version: str | None = None, *, live: bool = True, force: bool = False
    ) -> list[str]:
        """Re-probe the fleet; returns the servers held for another weight version.

        `required_version` (when given) becomes `self.required_version`. Probed with
        `GET /weight_info` (`weight_version`): the servers down whose re-probe time has
        come (every one with `force`), the held ones and, with `live` and a required
        version, the ones in rotation too (a server restarted between two calls reports its
        initial version). Unreachable or 5xx: marked down. Reporting the required version
        (or any, when none is required): in rotation. Otherwise: held.
        Raises ServiceError for a 4xx (a wrong token, say).
        """
        if required_version is not None:
            self.required_version = required_version
        now = time.monotonic()
        urls = [u for u, due in self.down.items() if force or due <= now] + sorted(self.held)
        if live and self.required_version is not None:
            urls += [url for url in self.rotation if url not in urls]
        if urls:
            await asyncio.gather(*(self._probe(url) for url in urls))
        return sorted(self.held)

    async def _probe(self, url: str) -> None:
        try:
            version = await weight_version(
                self._http, url, policy=RetryPolicy(attempts=1), timeout=self.timeout
            )
        except ServiceUnavailable:
            self.mark_down(url)
            return
        except ServiceError as exc:
            if exc.status < 500:
                raise
            self.mark_down(url)
            return
        if url in self.down:
            log.warning("generation server %s answers again (weight version %s)", url, version)
        self.down.pop(url, None)
        if self.required_version is None or version == self.required_version:
            self.held.discard(url)
        else:
            self.held.add(url)

    async def _models(self, url: str, policy: RetryPolicy) -> ModelList:
        response = await request(
            self._http, "generation", "GET", f"{url}/v1/models",
            policy=policy, timeout=self.timeout,
        )  # fmt: skip
        models = ModelList.model_validate(response.json())
        self.seed_scopes[url] = models.data[0].seed_scope if models.data else None
        return models

    async def model_name(self) -> str:
        """The configured model, or the first one the first reachable server serves."""
        if self.model is None:
            url = self._pick() or self.base_urls[0]
            self.model = (await self._models(url, self.policy)).data[0].id
        return self.model

    async def seeds_per_sequence(self) -> bool:
        """Whether every server seeds each sequence of a call apart (`seed_scope:
        "sequence"` in `GET /v1/models`), so seeded prompts may share a call. Each server
        is asked once; one that cannot be asked now (down, 5xx) makes this False without
        being remembered. Raises ServiceError for a 4xx."""
        unknown = [url for url in self.base_urls if url not in self.seed_scopes]
        results = await asyncio.gather(
            *(self._models(url, RetryPolicy(attempts=1)) for url in unknown),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, ServiceError) and result.status < 500:
                raise result
        scopes = [self.seed_scopes.get(url) for url in self.base_urls]
        return all(scope == "sequence" for scope in scopes)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        """One Completion per request, in order; chunks run concurrently over the servers.

        Starts with a `refresh(live=False)`: servers down whose re-probe time has come are
        probed (no call when none is down). Raises NoServerInRotation at once when every
        server that answers is held for another weight version (only a push can help),
        ServiceUnavailable when a chunk found no server to answer it within
        `policy.attempts` attempts; either way the batch's other calls are cancelled.
        """
        await self.refresh(live=False)
        model = await self.model_name()
        seeded = any(r.sampling.seed is not None for r in requests)
        chunks = plan_chunks(
            requests,
            self.max_prompts,
            self.max_sequences,
            seeds_per_sequence=seeded and await self.seeds_per_sequence(),
        )
        tasks = [
            asyncio.ensure_future(self._run_chunk([requests[i] for i in c], model, c[0]))
            for c in chunks
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # the batch has failed: stop its other calls too
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        ordered: list[Completion | None] = [None] * len(requests)
        for chunk, completions in zip(chunks, results, strict=True):
            for index, completion in zip(chunk, completions, strict=True):
                ordered[index] = completion
        return [c for c in ordered if c is not None]

    def _body(self, chunk: list[GenerationRequest], model: str, first_index: int) -> dict[str, Any]:
        """The chunk's `POST /v1/completions` body, built from the route's own model.

        Constructed without validation: the bounds in CompletionRequest are the embedded
        server's (n <= 256, ...) and vLLM takes more; each server judges its own limits
        and answers 400, which is not retried. The field names are checked by mypy.
        """
        first, seed = chunk[0], chunk[0].sampling.seed
        body = CompletionRequest.model_construct(
            model=model,
            # plan_chunks puts texts and token-id lists in different chunks
            prompt=cast(Prompt, [r.prompt for r in chunk]),
            n=first.n,
            max_tokens=first.sampling.max_tokens,
            temperature=first.sampling.temperature,
            top_p=first.sampling.top_p,
            seed=None if seed is None else chunk_seed(seed, first_index),
            stop=list(first.sampling.stop) or None,
            logprobs=0,
            return_token_ids=True,
        )
        # Only what is set here goes out: the other fields keep each server's own defaults.
        return body.model_dump(exclude_unset=True, exclude_none=True)

    async def _run_chunk(
        self, chunk: list[GenerationRequest], model: str, first_index: int
    ) -> list[Completion]:
        body = self._body(chunk, model, first_index)
        last_error: Exception | None = None
        for attempt in range(self.policy.attempts):
            url = await self._slot()
            if url is None:
                last_error = ServiceUnavailable(
                    f"no generation server in rotation (down: {sorted(self.down)}, "
                    f"held for another weight version: {sorted(self.held)})"
                )
            else:
                try:
                    response = await self._post_once(url, body)
                except ServiceError as exc:
                    if exc.status < 500:
                        raise
                    last_error = exc
                except ServiceUnavailable as exc:
                    # Refused, reset or killed mid-request: nothing came back, so re-sending
                    # the chunk elsewhere cannot answer any request twice.
                    self.mark_down(url)
                    last_error = exc
                else:
                    parsed = CompletionResponse.model_validate(response.json())
                    self.served[url] += 1
                    return split_completions(parsed, chunk[0].n, len(chunk), url)
            if attempt + 1 < self.policy.attempts:
                await asyncio.sleep(self.policy.delay(attempt))
                if not self.rotation:  # every server down or held: see whether one is back
                    await self.refresh(live=False, force=True)
                    if not self.rotation and self.held:
                        raise NoServerInRotation(sorted(self.held), sorted(self.down))
        raise ServiceUnavailable(f"generation failed on every attempt: {last_error}")

    async def _slot(self) -> str | None:
        """A server for the next call, waiting while every server in rotation is at
        `max_outstanding_per_server`; None when none is in rotation."""
        async with self._slot_freed:
            while True:
                url = self._pick()
                if url is not None or not self.rotation:
                    if url is not None:
                        self.outstanding[url] += 1  # taken before another waiter can see it
                    return url
                await self._slot_freed.wait()

    async def _post_once(self, url: str, body: dict[str, Any]) -> httpx.Response:
        """One attempt on one server (its slot already taken by `_slot`); the retry loop
        above may move to another server."""
        try:
            return await request(
                self._http, "generation", "POST", f"{url}/v1/completions",
                policy=RetryPolicy(attempts=1), timeout=self.timeout, json=body,
            )  # fmt: skip
        finally:
            self.outstanding[url] -= 1
            async with self._slot_freed:
                self._slot_freed.notify_all()

    async def weight_versions(self, urls: Sequence[str] | None = None) -> dict[str, str | None]:
        """Each server's committed weight version (of `urls`, default every base URL):
        `GET /weight_info` (vLLM, embedded), falling back to `GET /model_info` (SGLang)."""
        urls = list(self.base_urls if urls is None else urls)
        versions = await asyncio.gather(*(self._version(url) for url in urls))
        return dict(zip(urls, versions, strict=True))

    async def _version(self, url: str) -> str | None:
        return await weight_version(self._http, url, policy=self.policy, timeout=self.timeout)


async def weight_version(
    http: httpx.AsyncClient, url: str, *, policy: RetryPolicy, timeout: float
) -> str | None:
    """One server's committed weight version: `GET /weight_info` (vLLM, embedded), falling
    back to `GET /model_info` (SGLang, whose body holds other fields too); None when the
    server reports none. Raises ServiceError for any other 4xx/5xx."""
    for path in VERSION_PATHS:
        try:
            response = await request(
                http, "generation", "GET", f"{url}{path}", policy=policy, timeout=timeout
            )
        except ServiceError as exc:
            if exc.status == 404:
                continue
            raise
        # Read leniently: SGLang's /model_info is not our model, and versions may be ints.
        version = response.json().get("weight_version")
        return None if version is None else str(version)
    return None
