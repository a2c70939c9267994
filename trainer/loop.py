"""The RL loop. It executes the allocator's plans and knows no strategy by name.

Per optimiser step:
1. plan: ask the allocator for a round (pilot, commit and full items under one plan id);
2. generate: send every item of the round to the generation servers in one batch
   (one-step binding), with a per-round seed so a resumed run samples the same tokens;
3. score: the verifier turns each completion into a reward;
4. report: the allocator gates pilots, and answers which groups join the train batch;
   pilot rollouts of prompts that entered the buffer are kept here until committed,
   expired or flushed (the allocator knows rewards only, never tokens);
5. repeat 1-4 until the batch is complete; then train on the groups (stored pilot
   rollouts + fresh commit rollouts, or full groups): group advantages
   (r - mean) / (std + eps) and the clipped token-level policy loss (trainer.algos);
6. complete the step at the allocator, push the new weights to every generation server,
   log, evaluate every k steps, checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.allocator import models as am
from services.allocator.client import AllocatorClient
from services.allocator.core import rewards_constant
from services.generation.client import (
    Completion,
    GenerationClient,
    GenerationRequest,
    SamplingParams,
)
from services.verifier.client import VerifierClient
from services.verifier.models import ScoreItem
from trainer.config import TrainerConfig
from trainer.generation.landing import LandingProbe, LandingReport
from trainer.generation.weight_sync import WeightSync
from trainer.logbook import Logbook
from trainer.policy import Policy, Rollout


@dataclass
class Dataset:
    """Prompts (already formatted and tokenised) and reference answers, by prompt id."""

    prompt_tokens: list[list[int]]
    answers: list[str]


@dataclass
class Services:
    allocator: AllocatorClient
    verifier: VerifierClient
    generation: GenerationClient
    weights: WeightSync
    landing: LandingProbe | None = None  # None: pushes are not checked (not recommended)


@dataclass
class Tally:
    """Cumulative rollout counts, checkpointed with the run."""

    rollouts_total: int = 0
    rollouts_pilot: int = 0
    rollouts_commit: int = 0
    rollouts_full: int = 0
    rollouts_zero_variance: int = 0
    groups_trained: int = 0


@dataclass
class StepResult:
    groups: list[list[Rollout]]
    rounds: int
    phase_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))


def round_seed(seed: int, step: int, round_: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{step}:{round_}".encode(), digest_size=6).digest()
    return int.from_bytes(digest, "little")


class Trainer:
    def __init__(
        self,
        config: TrainerConfig,
        run_id: str,
        policy: Policy,
        data: Dataset,
        eval_data: Dataset,
        services: Services,
        logbook: Logbook,
    ) -> None:
        self.cfg, self.run_id, self.policy = config, run_id, policy
        self.data, self.eval_data, self.services, self.log = data, eval_data, services, logbook
        self.pilots: dict[int, list[Rollout]] = {}  # buffered prompts' pilot rollouts
        self.tally = Tally()
        self.step = 0
        self.weight_version = 0
        self.stale_repushes = 0  # pushes made because a server answered with old weights
        self.wall_s = 0.0

    # ---- one round ----

    def _requests(self, plan: am.Plan) -> list[GenerationRequest]:
        s = self.cfg.sampling
        params = SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=round_seed(self.cfg.run.seed, plan.step, plan.round),
            stop=tuple(s.stop),
        )
        return [
            GenerationRequest(self.data.prompt_tokens[i.prompt_id], i.n, params) for i in plan.items
        ]

    async def _generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        """Generate; if a server answered with stale weights (it restarted), push and redo.

        A server that labels its answers (the embedded one) is checked answer by answer;
        one that does not (vLLM) is asked for its `/weight_info` once the batch is back:
        a server that restarted during the call reports its initial version there.
        """
        for _ in range(3):
            completions = await self.services.generation.generate(requests)
            expected = str(self.weight_version)
            stale = {c.base_url for c in completions if c.weight_version not in (None, expected)}
            if any(c.weight_version is None for c in completions):
                versions = await self.services.generation.weight_versions()
                stale |= {url for url, v in versions.items() if v != expected}
            if not stale:
                return completions
            self.log.note(
                f"stale weights on {sorted(stale)}; pushing version {self.weight_version + 1}"
            )
            self.stale_repushes += 1
            await self.push_weights()
        raise RuntimeError("generation servers keep answering with stale weights")

    async def _score(self, plan: am.Plan, completions: list[Completion]) -> list[list[float]]:
        task = self.cfg.data.task
        items = [
            ScoreItem(response=s.text, reference=self.data.answers[item.prompt_id], task=task)
            for item, completion in zip(plan.items, completions, strict=True)
            for s in completion.samples
        ]
        results = await self.services.verifier.score(items)
        rewards, cursor = [], 0
        for item in plan.items:
            rewards.append([r.reward for r in results[cursor : cursor + item.n]])
            cursor += item.n
        return rewards

    def _collect(
        self,
        plan: am.Plan,
        completions: list[Completion],
        rewards: list[list[float]],
        result: am.ResultsResponse,
    ) -> list[list[Rollout]]:
        """Keep buffered pilots; assemble this round's train groups; count rollouts."""
        fresh: dict[int, list[Rollout]] = {}
        for item, completion, group in zip(plan.items, completions, rewards, strict=True):
            prompt = self.data.prompt_tokens[item.prompt_id]
            fresh[item.prompt_id] = [
                Rollout(prompt, s.token_ids, s.logprobs, r)
                for s, r in zip(completion.samples, group, strict=True)
            ]
            setattr(
                self.tally,
                f"rollouts_{item.role.value}",
                getattr(self.tally, f"rollouts_{item.role.value}") + item.n,
            )
            if item.role != "commit" and rewards_constant(group):
                self.tally.rollouts_zero_variance += item.n
        self.tally.rollouts_total += plan.rollouts
        for prompt_id in result.buffered:
            self.pilots[prompt_id] = fresh[prompt_id]
        groups = []
        for train in result.train:
            rollouts = fresh[train.prompt_id]
            if train.role == "commit":
                stored = self.pilots.pop(train.prompt_id)
                rollouts = [stored[i] for i in train.reuse] + rollouts
                if rewards_constant([r.reward for r in rollouts]):
                    self.tally.rollouts_zero_variance += len(fresh[train.prompt_id])
            groups.append(rollouts)
        return groups

    def _release(self, done: am.StepCompleteResponse) -> None:
        """Drop the stored pilot rollouts of every prompt that is no longer in the
        allocator's buffer at the end of a step, whatever took it out: expiry, or a call
        the trainer never saw (a manual eviction, an external epoch end). Afterwards the
        stored prompts are exactly the allocator's buffer."""
        if done.buffer is None:  # an older allocator: only what expired is known
            for prompt_id in done.expired:
                self.pilots.pop(prompt_id, None)
            return
        keep = set(done.buffer)
        for prompt_id in [p for p in self.pilots if p not in keep]:
            del self.pilots[prompt_id]

    # ---- one step ----

    async def collect_batch(self) -> StepResult:
        alloc = self.services.allocator
        out = StepResult(groups=[], rounds=0)
        while True:
            t = time.perf_counter()
            plan = await alloc.plan(
                self.run_id, request_id=f"{self.run_id}:{self.step}:{out.rounds}"
            )
            for prompt_id in plan.dropped_from_buffer:
                self.pilots.pop(prompt_id, None)
            out.phase_s["allocate"] += time.perf_counter() - t
            t = time.perf_counter()
            completions = await self._generate(self._requests(plan))
            out.phase_s["generate"] += time.perf_counter() - t
            t = time.perf_counter()
            rewards = await self._score(plan, completions)
            out.phase_s["score"] += time.perf_counter() - t
            t = time.perf_counter()
            result = await alloc.report(self.run_id, plan.plan_id, rewards)
            out.phase_s["allocate"] += time.perf_counter() - t
            out.groups += self._collect(plan, completions, rewards, result)
            out.rounds += 1
            if result.batch_complete:
                return out

    async def train_step(self) -> dict[str, Any]:
        start = time.perf_counter()
        batch = await self.collect_batch()
        t = time.perf_counter()
        rollouts = [r for g in batch.groups for r in g]
        mismatch = self.policy.mismatch(rollouts) if self.cfg.optim.tis_cap else None
        losses = self.policy.train_step(batch.groups)
        batch.phase_s["train"] += time.perf_counter() - t
        t = time.perf_counter()
        done = await self.services.allocator.complete_step(self.run_id, self.step)
        self._release(done)
        batch.phase_s["allocate"] += time.perf_counter() - t
        t = time.perf_counter()
        landing = await self.push_weights()
        batch.phase_s["sync"] += time.perf_counter() - t
        self.tally.groups_trained += len(batch.groups)
        self.step += 1
        elapsed = time.perf_counter() - start
        self.wall_s += elapsed
        rewards = [r.reward for r in rollouts]
        row: dict[str, Any] = {
            "kind": "train",
            "step": self.step,
            **self.tally.__dict__,
            "train_reward_mean": sum(rewards) / len(rewards),
            "rounds": batch.rounds,
            "buffer_size": len(self.pilots),
            "stale_repushes": self.stale_repushes,
            "wall_s": self.wall_s,
            "step_s": elapsed,
            **{f"time_{k}_s": v for k, v in batch.phase_s.items()},
            **losses,
        }
        if mismatch is not None:
            row["logprob_mismatch"] = mismatch
        if landing:
            row["landing_max_abs"] = max(r.max_abs for r in landing)
        return row

    async def push_weights(self) -> list[LandingReport]:
        """Push the policy to every server as the next version, then check it landed.

        Raises WeightLandingError (step, server, largest difference) when a server's
        logprobs disagree with the pushed weights: no rollout is drawn from them.
        """
        self.weight_version += 1
        await self.services.weights.push(self.policy.model, self.weight_version)
        if self.services.landing is None:
            return []
        urls = self.services.generation.base_urls
        return await self.services.landing.check(
            self.policy.model, urls, self.weight_version, self.step
        )

    # ---- evaluation ----

    async def evaluate(self) -> dict[str, Any]:
        """Accuracy of answers sampled at temperature 1.0 (and greedy) on held-out prompts."""
        cfg = self.cfg
        count = min(cfg.eval.prompts, len(self.eval_data.answers))
        sampled, stderr = clustered_mean_stderr(
            await self._eval_correct(count, cfg.eval.samples, 1.0)
        )
        row: dict[str, Any] = {
            "kind": "eval",
            "step": self.step,
            "eval_accuracy": sampled,
            "eval_prompts": count,
            "eval_samples": cfg.eval.samples,
            "rollouts_total": self.tally.rollouts_total,
            "wall_s": self.wall_s,
        }
        row["eval_accuracy_stderr"] = stderr
        if cfg.eval.greedy:
            greedy, _ = clustered_mean_stderr(await self._eval_correct(count, 1, 0.0))
            row["eval_accuracy_greedy"] = greedy
        return row

    async def _eval_correct(self, count: int, samples: int, temperature: float) -> list[list[bool]]:
        """Whether each answer was right: `samples` answers for each of the first `count`
        held-out prompts, grouped by prompt."""
        s = self.cfg.sampling
        params = SamplingParams(
            max_tokens=s.max_tokens,
            temperature=temperature,
            top_p=1.0,
            seed=round_seed(self.cfg.run.seed, -1, self.step),
            stop=tuple(s.stop),
        )
        requests = [
            GenerationRequest(self.eval_data.prompt_tokens[i], samples, params)
            for i in range(count)
        ]
        completions = await self._generate(requests)
        items = [
            ScoreItem(
                response=smp.text, reference=self.eval_data.answers[i], task=self.cfg.data.task
            )
            for i, c in enumerate(completions)
            for smp in c.samples
        ]
        results = await self.services.verifier.score(items)
        correct = [r.correct for r in results]
        sizes = [len(c.samples) for c in completions]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [correct[start : start + size] for start, size in zip(starts, sizes, strict=True)]

    # ---- checkpoints ----

    def checkpoint(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        state = {
            "policy": self.policy.state(),
            "pilots": self.pilots,
            "tally": self.tally.__dict__,
            "step": self.step,
            "weight_version": self.weight_version,
            "wall_s": self.wall_s,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }
        torch.save(state, path / "trainer.pt")

    def restore(self, path: Path) -> None:
        state = torch.load(path / "trainer.pt", weights_only=False)
        self.policy.load_state(state["policy"])
        self.pilots = state["pilots"]
        self.tally = Tally(**state["tally"])
        self.step, self.weight_version = state["step"], state["weight_version"]
        self.wall_s = state["wall_s"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])


def clustered_mean_stderr(correct: Sequence[Sequence[bool]]) -> tuple[float, float]:
    """Accuracy and its standard error over prompts, each with one or more answers.

    The accuracy is the mean over prompts of each prompt's share of right answers; the
    standard error is the sample standard deviation (ddof 1) of those per-prompt shares
    over sqrt(number of prompts). Answers to one prompt are correlated, so this clustered
    error is the right one with several answers per prompt; with one answer each it
    equals the binomial sqrt(p (1 - p) / (n - 1)). Both are in [0, 1]; the error is NaN
    with fewer than two prompts. Raises ValueError when `correct` or a prompt's list is
    empty.
    """
    if not correct or any(len(answers) == 0 for answers in correct):
        raise ValueError("every prompt needs at least one answer")
    shares = [sum(answers) / len(answers) for answers in correct]
    n = len(shares)
    mean = sum(shares) / n
    if n < 2:
        return mean, math.nan
    variance = sum((x - mean) ** 2 for x in shares) / (n - 1)
    return mean, math.sqrt(variance / n)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2))
