"""The RL loop. It executes the allocator's plans and knows no strategy by name.

Per optimiser step (`train_steps`, one loop that reads top to bottom):
1. plan: ask the allocator for a round (pilot, commit and full items under one plan id);
2. generate: send every item of the round to the generation servers in one batch
   (one-step binding), with a per-round seed so a resumed run samples the same tokens;
3. score: the verifier turns each completion into a reward;
4. report: the allocator gates pilots and answers which groups join the train batch;
   the pilot rollouts of prompts that entered its buffer go to the rollout store
   (trainer/rollouts.py) until the allocator releases them (the allocator knows rewards
   only, never tokens);
5. repeat 1-4 until the batch is complete; then train on the groups (stored pilot
   rollouts + fresh commit rollouts, or full groups): group advantages
   (r - mean) / (std + eps) and the clipped token-level policy loss (trainer.algos);
6. complete the step at the allocator (the store must then equal its buffer), push the
   new weights to every generation server and check they landed, log the train row,
   evaluate when due, checkpoint when due (trainer/run_checkpoint.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.allocator import models as am
from services.allocator.client import AllocatorClient
from services.common.rewards import rewards_constant
from services.generation.client import (
    Completion,
    GenerationClient,
    GenerationRequest,
    NoServerInRotation,
    SamplingParams,
)
from services.verifier.client import VerifierClient
from services.verifier.models import ScoreItem, ScoreResult, Task
from trainer import run_checkpoint
from trainer.algos import clustered_mean_stderr
from trainer.config import TrainerConfig
from trainer.generation.checkpoint import Weights
from trainer.generation.landing import LandingProbe, LandingReport
from trainer.generation.weight_sync import ServersUnreachable, WeightSync
from trainer.logbook import Logbook
from trainer.policy import Policy, Rollout
from trainer.rollouts import RolloutStore


@dataclass
class Dataset:
    """Prompts (already formatted and tokenised), reference answers, and each prompt's
    verifier kind and source task (when its row names one), by prompt id."""

    prompt_tokens: list[list[int]]
    answers: list[str]
    tasks: list[Task] | None = None  # None: data.task for every prompt
    sources: list[str | None] | None = None

    def task(self, prompt_id: int, default: Task) -> Task:
        """The verifier kind of prompt `prompt_id`; `default` when prompts carry none."""
        return default if self.tasks is None else self.tasks[prompt_id]


@dataclass
class Services:
    allocator: AllocatorClient
    verifier: VerifierClient
    generation: GenerationClient
    weights: WeightSync
    landing: LandingProbe | None = None  # None: pushes are not checked (not recommended)


@dataclass
class AllocatorCounts:
    """Cumulative counts the allocator keeps for the run (its summary's `counters`); the
    trainer reads them after each step instead of counting the same things again."""

    rollouts_pilot: int = 0
    rollouts_commit: int = 0
    rollouts_full: int = 0
    groups_trained: int = 0

    @property
    def rollouts_total(self) -> int:
        return self.rollouts_pilot + self.rollouts_commit + self.rollouts_full


@dataclass
class TrainerCounts:
    """Cumulative counts the allocator does not keep, checkpointed with the run.

    rollouts_zero_variance: rollouts spent on groups whose rewards were all equal (a
    pilot or full group, or the fresh rollouts of a commit whose whole train group was);
    the allocator counts zero-variance trained groups, not rollouts. stale_repushes:
    pushes made because a generation server answered with old weights; only the trainer
    sees weight versions.
    """

    rollouts_zero_variance: int = 0
    stale_repushes: int = 0


class Trainer:
    """One run's parts (config, policy, data, service clients, logbook, output folder)
    and its state; the module's functions drive it."""

    def __init__(
        self,
        config: TrainerConfig,
        run_id: str,
        policy: Policy,
        data: Dataset,
        eval_data: Dataset,
        services: Services,
        logbook: Logbook,
        output: Path,
    ) -> None:
        self.cfg, self.run_id, self.policy = config, run_id, policy
        self.data, self.eval_data, self.services, self.log = data, eval_data, services, logbook
        self.output = output
        self.pilots = RolloutStore()  # pilot rollouts of the allocator's buffered prompts
        self.counts = TrainerCounts()
        self.allocator_counts = AllocatorCounts()
        self.step = 0
        self.weight_version = 0
        self.wall_s = 0.0
        # Servers that got a whole push from this process and every push since: they hold
        # the frozen parameters, so the next push may send the trained ones alone.
        self.in_sync: set[str] = set()


# ---- the run ----


async def run(t: Trainer) -> None:
    """The whole run: start (or resume), evaluate step 0 on a fresh run, then train."""
    await start(t)
    if t.step == 0:
        await evaluate_and_log(t)
    await train_steps(t)


async def start(t: Trainer) -> None:
    """Create the allocator run or resume the checkpoint, then push our weights: the
    servers may hold another run's (a shared stack) or a restarted server's initial ones."""
    await run_checkpoint.resume_or_create(t)
    await read_allocator_counts(t)
    await push_weights(t)


async def train_steps(t: Trainer, until: int | None = None) -> list[dict[str, Any]]:
    """Train until the run is finished (or until step `until`); returns the train rows."""
    rows = []
    while not finished(t) and (until is None or t.step < until):
        started, clock = time.perf_counter(), PhaseClock()
        rollouts_before = t.allocator_counts.rollouts_total
        groups: list[list[Rollout]] = []
        table: list[dict[str, Any]] = []
        rounds, batch_complete = 0, False
        while not batch_complete:
            with clock("allocate"):
                plan = await plan_round(t, rounds)
            with clock("generate"):
                completions = await generate(t, round_requests(t, plan))
            with clock("score"):
                rewards = await score(t, plan, completions)
            with clock("allocate"):
                result = await t.services.allocator.report(t.run_id, plan.plan_id, rewards)
            groups += collect(t, plan, completions, rewards, result)
            table += allocation_rows(t.step + 1, plan, rewards, result)
            rounds, batch_complete = rounds + 1, result.batch_complete
        with clock("train"):
            losses = train(t, groups)
        with clock("allocate"):
            await complete_step(t)
        with clock("sync"):
            landing = await push_weights(t)
        t.step += 1
        step_s = time.perf_counter() - started
        t.wall_s += step_s
        row = train_row(t, groups, rounds, clock, step_s, losses, landing)
        t.log.write(row)
        t.log.table(t.step, table)
        rows.append(row)
        if finished(t) or eval_due(t, rollouts_before):
            await evaluate_and_log(t)
        if finished(t) or checkpoint_due(t.cfg, t.step):
            with t.log.phase(f"checkpoint step {t.step}"):
                await run_checkpoint.save_run(t)
    return rows


def allocation_rows(
    step: int, plan: am.Plan, rewards: list[list[float]], result: am.ResultsResponse
) -> list[dict[str, Any]]:
    """One row per plan item of a round, for allocation.jsonl and the trackers: the
    prompt, its role, rollouts generated, the pass rate of those rollouts (a pilot's
    estimate), the gate's outcome (services/allocator/models.py `GateOut`) and the stored
    pilot rollouts a commit reuses."""
    return [
        {
            "step": step,
            "round": plan.round,
            "prompt_id": item.prompt_id,
            "role": item.role,
            "n": item.n,
            "pass_rate": sum(item_rewards) / len(item_rewards) if item_rewards else None,
            "outcome": gate.outcome,
            "reused": len(item.reuse),
        }
        for item, item_rewards, gate in zip(plan.items, rewards, result.gates, strict=True)
    ]


def finished(t: Trainer) -> bool:
    """`run.steps` steps done, or `run.max_rollouts` rollouts spent."""
    cap = t.cfg.run.max_rollouts
    return t.step >= t.cfg.run.steps or (
        cap is not None and t.allocator_counts.rollouts_total >= cap
    )


def eval_due(t: Trainer, rollouts_before: int) -> bool:
    """Every `eval.every` steps, and each time the rollouts pass a multiple of
    `eval.every_rollouts` (`rollouts_before`: the total before this step)."""
    every, per = t.cfg.eval.every, t.cfg.eval.every_rollouts
    by_step = every > 0 and t.step % every == 0
    by_rollouts = per > 0 and t.allocator_counts.rollouts_total // per > rollouts_before // per
    return by_step or by_rollouts


def checkpoint_due(config: TrainerConfig, step: int) -> bool:
    every = config.run.checkpoint_every
    return bool(every) and step % every == 0


class PhaseClock:
    """Seconds one step spends per phase (allocate, generate, score, train, sync)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - started


# ---- plan, generate, score, report ----


async def plan_round(t: Trainer, round_: int) -> am.Plan:
    """The allocator's next round; the buffer entries it released leave the rollout store."""
    plan = await t.services.allocator.plan(t.run_id, request_id=f"{t.run_id}:{t.step}:{round_}")
    t.pilots.release(plan.released)
    return plan


def round_seed(seed: int, step: int, round_: int) -> int:
    """The sampling seed of one round (evaluations use step -1 and the train step as the
    round): a 48-bit hash of the run's seed, so a resumed run samples the same tokens."""
    digest = hashlib.blake2b(f"{seed}:{step}:{round_}".encode(), digest_size=6).digest()
    return int.from_bytes(digest, "little")


def round_requests(t: Trainer, plan: am.Plan) -> list[GenerationRequest]:
    s = t.cfg.sampling
    params = SamplingParams(
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        seed=round_seed(t.cfg.run.seed, plan.step, plan.round),
        stop=tuple(s.stop),
    )
    return [GenerationRequest(t.data.prompt_tokens[i.prompt_id], i.n, params) for i in plan.items]


async def generate(t: Trainer, requests: list[GenerationRequest]) -> list[Completion]:
    """Generate; if a server answered with stale weights (it restarted), push and redo.

    First `admit_servers`: no server is sampled from before it reports the current weight
    version. A server that labels its answers (the embedded one) is checked answer by
    answer; one that does not (vLLM) is asked for its `/weight_info` once the batch is
    back: a server that restarted during the call reports its initial version there.
    A server that dies during the call is marked down by the client, which re-sends its
    chunks to the others; when every server left is one that came back with other weights
    (NoServerInRotation), they are admitted and the call redone. Raises RuntimeError
    after three stale answers (or such redos) in a row.
    """
    for _ in range(3):
        await admit_servers(t)
        gen = t.services.generation
        try:
            completions = await gen.generate(requests)
        except NoServerInRotation as exc:  # restarted during the call: admit, then redo
            t.log.note(f"{exc}; pushing version {t.weight_version} to them and redoing")
            continue
        expected = str(t.weight_version)
        stale = {c.base_url for c in completions if c.weight_version not in (None, expected)}
        if any(c.weight_version is None for c in completions):
            versions = await gen.weight_versions(gen.rotation)
            stale |= {url for url, v in versions.items() if v != expected}
        if not stale:
            return completions
        t.log.note(f"stale weights on {sorted(stale)}; pushing version {t.weight_version + 1}")
        t.in_sync -= stale  # they get the whole model
        t.counts.stale_repushes += 1
        await push_weights(t)
    raise RuntimeError("generation servers keep answering with stale weights")


async def admit_servers(t: Trainer) -> None:
    """Before a round, every server the client may pick serves the current weights.

    The client re-probes its fleet (`GenerationClient.refresh`): the servers in rotation,
    and those marked down whose re-probe time has come. One that reports another weight
    version (restarted on the same address, or back from down) is held out of rotation,
    gets the current weights pushed to it alone (same version, checked by the landing
    probe), and only then joins the rotation. Not counted in `stale_repushes` (no stale
    answer was drawn, and the version does not move); the log notes it.
    """
    gen = t.services.generation
    held = await gen.refresh(str(t.weight_version))
    if not held:
        return
    t.log.note(f"{held} serve another weight version; pushing version {t.weight_version} first")
    t.in_sync -= set(held)  # restarted or back from down: the whole model
    await update_servers(t, held)


async def score(t: Trainer, plan: am.Plan, completions: list[Completion]) -> list[list[float]]:
    """Rewards in [0, 1], one list per plan item with its `n` rewards, in plan order."""
    default = t.cfg.data.task
    items = [
        ScoreItem(
            response=s.text,
            reference=t.data.answers[item.prompt_id],
            task=t.data.task(item.prompt_id, default),
        )
        for item, completion in zip(plan.items, completions, strict=True)
        for s in completion.samples
    ]
    results = await t.services.verifier.score(items)
    rewards, cursor = [], 0
    for item in plan.items:
        rewards.append([r.reward for r in results[cursor : cursor + item.n]])
        cursor += item.n
    return rewards


def collect(
    t: Trainer,
    plan: am.Plan,
    completions: list[Completion],
    rewards: list[list[float]],
    result: am.ResultsResponse,
) -> list[list[Rollout]]:
    """This round's train groups (a commit's: its reused stored pilots, then its fresh
    rollouts); then the answer's released entries leave the store and its buffered
    prompts' pilot rollouts enter it. Counts the zero-variance rollouts."""
    fresh: dict[int, list[Rollout]] = {}
    for item, completion, group in zip(plan.items, completions, rewards, strict=True):
        prompt = t.data.prompt_tokens[item.prompt_id]
        fresh[item.prompt_id] = [
            Rollout(prompt, s.token_ids, s.logprobs, r)
            for s, r in zip(completion.samples, group, strict=True)
        ]
        if item.role != "commit" and rewards_constant(group):
            t.counts.rollouts_zero_variance += item.n
    groups = []
    for train_group in result.train:
        rollouts = fresh[train_group.prompt_id]
        if train_group.role == "commit":
            rollouts = t.pilots.read(train_group.prompt_id, train_group.reuse) + rollouts
            if rewards_constant([r.reward for r in rollouts]):
                t.counts.rollouts_zero_variance += len(fresh[train_group.prompt_id])
        groups.append(rollouts)
    t.pilots.release(result.released)
    for prompt_id in result.buffered:
        t.pilots.add(prompt_id, fresh[prompt_id])
    return groups


# ---- train, complete, push, log ----


def train(t: Trainer, groups: list[list[Rollout]]) -> dict[str, float]:
    """One optimiser step on the groups: the policy's losses and statistics, with the
    trainer/generator logprob mismatch before the update (`logprob_mismatch`)."""
    return t.policy.train_step(groups)


async def complete_step(t: Trainer) -> None:
    """Complete the step at the allocator, release what left its buffer, check the store
    against the buffer (RolloutStoreMismatch when they differ) and read its counts."""
    done = await t.services.allocator.complete_step(t.run_id, t.step)
    t.pilots.release(done.released)
    if done.buffer is not None:  # None: an answer stored by an older allocator
        t.pilots.check(done.buffer)
    await read_allocator_counts(t)


async def read_allocator_counts(t: Trainer) -> None:
    """The allocator's cumulative counts (a strategy omits the roles it never plans)."""
    counters = (await t.services.allocator.summary(t.run_id)).counters
    t.allocator_counts = AllocatorCounts(
        rollouts_pilot=counters.get("rollouts_pilot", 0),
        rollouts_commit=counters.get("rollouts_commit", 0),
        rollouts_full=counters.get("rollouts_full", 0),
        groups_trained=counters.get("groups_trained", 0),
    )


async def push_weights(t: Trainer) -> list[LandingReport]:
    """Push the policy to every server not marked down as the next version, then check it
    landed; from now on the client samples only from servers reporting that version.

    A server unreachable during the push is marked down; it gets the weights when it is
    back, before it is used (`admit_servers`). Raises WeightLandingError (step, server,
    largest difference) when a server's logprobs disagree with the pushed weights: no
    rollout is drawn from them.
    """
    t.weight_version += 1
    gen = t.services.generation
    gen.required_version = str(t.weight_version)
    return await update_servers(t, [url for url in gen.base_urls if url not in gen.down])


async def update_servers(t: Trainer, urls: list[str]) -> list[LandingReport]:
    """Push the current weights (`t.weight_version`) to `urls`, let those reached into the
    client's rotation and check it landed on them; the unreachable ones are marked down."""
    gen = t.services.generation
    reached = list(urls)
    model = t.policy.weights_for_push()  # several ranks: the gathered full state dict
    try:
        await t.services.weights.push(push_payload(t, model, urls), t.weight_version, urls)
    except ServersUnreachable as exc:
        t.log.note(f"weight push: {exc}; marked down until they answer again")
        for url in exc.urls:
            gen.mark_down(url)
        reached = [url for url in urls if url not in exc.urls]
    t.in_sync = (t.in_sync - set(urls)) | set(reached)
    gen.mark_current(reached)
    if t.services.landing is None or not reached:
        return []
    return await t.services.landing.check(model, reached, t.weight_version, t.step)


def push_payload(t: Trainer, model: torch.nn.Module, urls: list[str]) -> Weights:
    """What a push to `urls` sends: the trained parameters alone when layers are frozen
    (`[model] train_top_layers`), the weight sync accepts a subset, and every target is in
    sync (holds this process's frozen parameters); else the whole model. A server new to
    this process, restarted, back from down or caught serving stale weights gets the
    whole model, and the landing check then verifies every push."""
    trained = t.policy.trainable
    if trained is None or not t.services.weights.partial or not set(urls) <= t.in_sync:
        return model
    return {name: tensor for name, tensor in model.state_dict().items() if name in trained}


def count_fields(t: Trainer) -> dict[str, int]:
    """The cumulative counts of a train row: the allocator's, and the trainer's own."""
    a = t.allocator_counts
    return {
        "rollouts_total": a.rollouts_total,
        "rollouts_pilot": a.rollouts_pilot,
        "rollouts_commit": a.rollouts_commit,
        "rollouts_full": a.rollouts_full,
        "rollouts_zero_variance": t.counts.rollouts_zero_variance,
        "groups_trained": a.groups_trained,
    }


def train_row(
    t: Trainer,
    groups: list[list[Rollout]],
    rounds: int,
    clock: PhaseClock,
    step_s: float,
    losses: dict[str, float],
    landing: list[LandingReport],
) -> dict[str, Any]:
    """The step's metrics.jsonl row (fields: docs and trainer/logbook.py)."""
    rewards = [r.reward for g in groups for r in g]
    row: dict[str, Any] = {
        "kind": "train",
        "step": t.step,
        **count_fields(t),
        "train_reward_mean": sum(rewards) / len(rewards),
        "rounds": rounds,
        "buffer_size": len(t.pilots),
        "stale_repushes": t.counts.stale_repushes,
        "wall_s": t.wall_s,
        "step_s": step_s,
        **{f"time_{k}_s": v for k, v in clock.seconds.items()},
        **losses,
    }
    if landing:
        row["landing_max_abs"] = max(r.max_abs for r in landing)
    return row


# ---- evaluation ----


async def evaluate_and_log(t: Trainer) -> None:
    with t.log.phase(f"evaluate step {t.step}"):
        row = await evaluate(t)
    t.log.write(row)


async def evaluate(t: Trainer) -> dict[str, Any]:
    """Accuracy of answers sampled at temperature 1.0 (and greedy) on held-out prompts,
    with its clustered standard error (trainer.algos.clustered_mean_stderr).

    Besides accuracy, the row says how much of it is format: `eval_answered` is the share
    of sampled answers the verifier could read an answer from (reason `match` or
    `mismatch`), `eval_accuracy_answered` the accuracy among those (null when none), and
    `eval_answered_by_source` the share per task source. A gain in accuracy that is only
    the model learning the answer format raises `eval_answered` and leaves
    `eval_accuracy_answered` where it was.
    """
    cfg = t.cfg
    count = min(cfg.eval.prompts, len(t.eval_data.answers))
    results = await eval_results(t, count, cfg.eval.samples, 1.0)
    correct = [[r.correct for r in prompt] for prompt in results]
    answered = [[r.reason in ("match", "mismatch") for r in prompt] for prompt in results]
    sampled, stderr = clustered_mean_stderr(correct)
    n_answered = sum(map(sum, answered))
    row: dict[str, Any] = {
        "kind": "eval",
        "step": t.step,
        "eval_accuracy": sampled,
        "eval_accuracy_stderr": stderr,
        "eval_answered": n_answered / max(1, sum(map(len, answered))),
        "eval_accuracy_answered": (sum(map(sum, correct)) / n_answered if n_answered else None),
        "eval_prompts": count,
        "eval_samples": cfg.eval.samples,
        "rollouts_total": t.allocator_counts.rollouts_total,
        "wall_s": t.wall_s,
    }
    if t.eval_data.sources is not None:
        sources = t.eval_data.sources[:count]
        by_source = accuracy_by_source(correct, sources)
        if by_source:
            row["eval_accuracy_by_source"] = by_source
            row["eval_answered_by_source"] = accuracy_by_source(answered, sources)
    if cfg.eval.greedy:
        greedy = await eval_results(t, count, 1, 0.0)
        row["eval_accuracy_greedy"] = clustered_mean_stderr(
            [[r.correct for r in prompt] for prompt in greedy]
        )[0]
    return row


def accuracy_by_source(correct: list[list[bool]], sources: list[str | None]) -> dict[str, float]:
    """Mean share of true values over the prompts of each source (prompts without one are
    left out), sources in name order; `correct[i]` are prompt i's answers."""
    shares: dict[str, list[float]] = defaultdict(list)
    for answers, source in zip(correct, sources, strict=True):
        if source is not None:
            shares[source].append(sum(answers) / len(answers))
    return {source: sum(v) / len(v) for source, v in sorted(shares.items())}


async def eval_results(
    t: Trainer, count: int, samples: int, temperature: float
) -> list[list[ScoreResult]]:
    """The verifier's verdict on `samples` answers for each of the first `count` held-out
    prompts, grouped by prompt."""
    s = t.cfg.sampling
    params = SamplingParams(
        max_tokens=s.max_tokens,
        temperature=temperature,
        top_p=1.0,
        seed=round_seed(t.cfg.run.seed, -1, t.step),
        stop=tuple(s.stop),
    )
    requests = [
        GenerationRequest(t.eval_data.prompt_tokens[i], samples, params) for i in range(count)
    ]
    completions = await generate(t, requests)
    default = t.cfg.data.task
    items = [
        ScoreItem(
            response=smp.text,
            reference=t.eval_data.answers[i],
            task=t.eval_data.task(i, default),
        )
        for i, c in enumerate(completions)
        for smp in c.samples
    ]
    results = await t.services.verifier.score(items)
    sizes = [len(c.samples) for c in completions]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [results[start : start + size] for start, size in zip(starts, sizes, strict=True)]
