"""One RL run, start to finish, once its config is valid: `pilot-commit train`
(trainer/cli.py parses and validates the command line first, before torch loads, and
hands the config to `execute`).

With `--nproc N` the command runs again under torchrun (`launch`): rank 0 starts or
reaches the services and runs the loop, the others join each training step (`follow`).
Services come from `[services]`; where none are given, the embedded stack (Redis,
allocator, verifier, generation server) is started for the run and stopped at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from rich.console import Console
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from services.allocator.client import AllocatorClient
from services.common.http import RetryPolicy, ServiceError, ServiceUnavailable
from services.common.progress import make_console, say
from services.generation.client import GenerationClient
from services.generation.vllm import VLLMNotFound, find_vllm_python
from services.stack import EmbeddedStack, StackUrls
from services.verifier.client import VerifierClient
from trainer import distributed, loop, run_checkpoint
from trainer.config import TrainerConfig, save_config
from trainer.data import DataError, Row, read_rows
from trainer.distributed import Ranks
from trainer.generation.landing import LandingProbe, WeightLandingError, default_tolerance
from trainer.generation.weight_sync import build_weight_sync
from trainer.logbook import Logbook
from trainer.loop import Dataset, Services, Trainer
from trainer.policy import Policy, torch_dtype
from trainer.prompts import chat_prompt_ids
from trainer.summary import PLOT_NAME, plot_accuracy, read_summary
from trainer.trackers import Tracker, open_trackers

if TYPE_CHECKING:
    from trainer.smollm2.build import SmolLM2Artifacts
    from trainer.tiny.build import TinyArtifacts


def resolve_data(config: TrainerConfig) -> TrainerConfig:
    """Fill in unset data and model paths from the tiny, SmolLM2 or task-set build,
    building it if absent; a config without any of them must name all three."""
    if config.data.tasks:
        return _resolve_tasks(config)
    if config.data.smollm2:
        from trainer.smollm2.build import ensure_smollm2

        built: TinyArtifacts | SmolLM2Artifacts = ensure_smollm2(seed=0)
    elif config.data.tiny:
        from trainer.tiny.build import ensure_tiny

        built = ensure_tiny(seed=0)
    else:
        if not (config.data.train_path and config.data.test_path and config.model.path):
            raise SystemExit(
                "config needs data.train_path, data.test_path and model.path "
                "(or data.tiny / data.smollm2 = true, or data.tasks)"
            )
        return config
    data = config.data.model_copy(
        update={
            "train_path": config.data.train_path or built.train_path,
            "test_path": config.data.test_path or built.test_path,
        }
    )
    model = config.model.model_copy(update={"path": config.model.path or built.model_dir})
    return config.model_copy(update={"data": data, "model": model})


def _resolve_tasks(config: TrainerConfig) -> TrainerConfig:
    """`data.tasks`: the set's build (train, and `eval_split` as the held-out prompts),
    per-row verifier kinds from its `task` field, and the SmolLM2 model unless one is set."""
    from trainer.tasks.build import ensure_tasks

    assert config.data.tasks is not None
    built = ensure_tasks(config.data.tasks, seed=0)
    model_path = config.model.path
    if model_path is None:
        from trainer.smollm2.build import ensure_smollm2

        model_path = ensure_smollm2(seed=0).model_dir
    data = config.data.model_copy(
        update={
            "train_path": config.data.train_path or built.train_path,
            "test_path": config.data.test_path or built.path(config.data.eval_split),
            "task_field": config.data.task_field or "task",
        }
    )
    model = config.model.model_copy(update={"path": model_path})
    return config.model_copy(update={"data": data, "model": model})


def check_data(config: TrainerConfig) -> tuple[list[Row], list[Row]]:
    """Read and check both dataset files (trainer/data.py) before anything starts: their
    (train, test) rows, which `train` then tokenises without reading the files again.
    Raises `DataError` naming the file, line and field of the first bad row."""
    assert config.data.train_path and config.data.test_path
    return (
        read_rows(config.data.train_path, config.data, **split_of(config, "train")),
        read_rows(config.data.test_path, config.data, **split_of(config, "test")),
    )


def split_of(config: TrainerConfig, which: Literal["train", "test"]) -> dict[str, Any]:
    """read_rows' `split` and `seed` for the train or test file."""
    split = config.data.train_split if which == "train" else config.data.test_split
    return {"split": split, "seed": config.run.seed}


def load_dataset(
    path: Path,
    config: TrainerConfig,
    tokenizer: PreTrainedTokenizerBase,
    which: Literal["train", "test"] = "train",
    rows: list[Row] | None = None,
) -> Dataset:
    """The rows of `path` (checked, trainer/data.py; `which` picks the split of a saved
    DatasetDict), or `rows` already read from it, tokenised as the run sends them."""
    if rows is None:
        rows = read_rows(path, config.data, **split_of(config, which))
    prompts = [row.prompt for row in rows]
    if config.data.chat_template:
        tokens = [chat_prompt_ids(tokenizer, prompt) for prompt in prompts]
    else:
        tokens = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return Dataset(
        tokens,
        [row.answer for row in rows],
        tasks=[row.task for row in rows],
        sources=[row.source for row in rows],
    )


@contextlib.contextmanager
def services_for(config: TrainerConfig, output: Path, console: Console) -> Iterator[StackUrls]:
    s = config.services
    if s.allocator_url and s.verifier_url and s.generation_urls:
        yield StackUrls("", s.allocator_url, s.verifier_url, list(s.generation_urls))
        return
    if s.allocator_url or s.verifier_url:
        raise SystemExit(
            "give all of allocator_url, verifier_url and generation_urls, only "
            "generation_urls (the rest is started locally), or none"
        )
    assert config.model.path is not None
    generation = None if s.generation_urls else s.embedded_generation
    if generation == "vllm":
        find_vllm_python()  # fail before anything starts
    stack = EmbeddedStack(
        output / "stack", config.model.path, console=console, generation=generation
    )
    with stack as urls:
        say(console, f"embedded stack up (logs in {output / 'stack' / 'logs'})")
        if s.generation_urls:
            urls.generation_urls = list(s.generation_urls)
        yield urls


def landing_probe(config: TrainerConfig, data: Dataset) -> LandingProbe | None:
    """The post-push check of `[services] landing_*`, on the first training prompts."""
    s = config.services
    if not s.landing_check:
        return None
    dtype = torch_dtype(config.model.dtype)
    return LandingProbe(
        data.prompt_tokens[: s.landing_prompts],
        tolerance=s.landing_tolerance or default_tolerance(dtype),
        max_tokens=min(config.sampling.max_tokens, 16),
        temperature=config.sampling.temperature,
        timeout=s.request_timeout_s,
    )


@contextlib.asynccontextmanager
async def clients(
    config: TrainerConfig, urls: StackUrls, output: Path, data: Dataset
) -> AsyncIterator[Services]:
    s = config.services
    policy = RetryPolicy(attempts=s.retries)
    weights_dir = s.weights_dir or (output / "weights").resolve()
    allocator = AllocatorClient(urls.allocator_url, token=s.allocator_token, policy=policy)
    verifier = VerifierClient(urls.verifier_url, timeout=s.request_timeout_s, policy=policy)
    generation = GenerationClient(urls.generation_urls, timeout=s.request_timeout_s, policy=policy)
    sync = build_weight_sync(
        s.weight_sync,
        urls.generation_urls,
        weights_dir=weights_dir,
        model_files_from=config.model.path,
        nccl_master_address=s.nccl_master_address,
        nccl_master_port=s.nccl_master_port,
        timeout=s.request_timeout_s,
        policy=policy,
    )
    landing = landing_probe(config, data)
    try:
        yield Services(allocator, verifier, generation, sync, landing)
    finally:
        for client in (allocator, verifier, generation, sync, landing):
            if client is not None:
                await client.aclose()


def build_policy(config: TrainerConfig, ranks: Ranks | None = None) -> Policy:
    """The run's policy from `[model]` and `[optim]`, sharded over `ranks` if given."""
    assert config.model.path
    return Policy(
        config.model.path,
        config.optim,
        config.model.device,
        config.model.dtype,
        total_steps=config.run.steps,
        gradient_checkpointing=config.model.gradient_checkpointing,
        ranks=ranks,
        mixed_precision=config.model.mixed_precision,
        temperature=config.sampling.temperature,
        train_top_layers=config.model.train_top_layers,
    )


async def train(
    config: TrainerConfig,
    output: Path,
    urls: StackUrls,
    logbook: Logbook,
    ranks: Ranks | None = None,
    rows: tuple[list[Row], list[Row]] | None = None,
) -> None:
    """Build the run's parts (data, policy, service clients) and run the loop
    (trainer/loop.py: `run`); `rows` are `check_data`'s, when it was called. With several
    ranks this is rank 0's part; the others follow (`follow`), and are released when the
    run ends."""
    assert config.model.path and config.data.train_path and config.data.test_path
    if config.model.threads:
        torch.set_num_threads(config.model.threads)
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.model.path)
    train_rows, test_rows = rows or (None, None)
    data = load_dataset(config.data.train_path, config, tokenizer, "train", train_rows)
    eval_data = load_dataset(config.data.test_path, config, tokenizer, "test", test_rows)
    policy = build_policy(config, ranks)
    run_id = run_id_of(config, output)
    async with clients(config, urls, output, data) as services:
        trainer = Trainer(config, run_id, policy, data, eval_data, services, logbook, output)
        await loop.run(trainer)
    policy.stop()


def follow(config: TrainerConfig, ranks: Ranks) -> int:
    """A rank other than 0: rank 0's resolved config, then the policy's share of each
    collective step until rank 0 ends the run."""
    distributed.init(ranks, config.model.device)
    config = distributed.broadcast()
    if config.model.threads:
        torch.set_num_threads(config.model.threads)
    torch.manual_seed(config.run.seed)
    random.seed(config.run.seed)
    build_policy(config, ranks).follow()
    distributed.close()
    return 0


def launch(nproc: int, argv: list[str], output: Path) -> int:
    """`--nproc N`: run this command again under torchrun (`torch.distributed.run
    --standalone`, N ranks on this node) and return its exit status. A stop signal
    reaches torchrun, which stops the ranks; a rank that fails makes torchrun stop the
    others, and this says which checkpoint the same command resumes from."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={nproc}", "-m", "trainer.cli", *rest]
    proc = subprocess.Popen(command)
    try:
        status = proc.wait()
        if status != 0:
            checkpoint = run_checkpoint.latest(output)
            resume = f"from {checkpoint}" if checkpoint else "from the start (no checkpoint yet)"
            print(
                f"pilot-commit train: a trainer rank failed (torchrun exit status {status}; "
                f"its report above names the rank); the same command resumes {resume}",
                file=sys.stderr,
            )
        return status
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def execute(config: TrainerConfig, output: Path, argv: list[str], nproc: int = 1) -> int:
    """Run `config` with its outputs in `output` (the command line's `argv` is what
    `launch` re-runs under torchrun when `nproc` > 1). Returns the exit status: 1 for
    bad data or a service error, each reported in one line."""
    ranks = distributed.from_env()
    if nproc > 1 and ranks is None:
        return launch(nproc, argv, output)
    if ranks is not None and not ranks.driver:
        return follow(config, ranks)
    config = resolve_data(config)
    try:
        rows = check_data(config)
    except DataError as exc:
        print(f"pilot-commit train: {exc}", file=sys.stderr)
        return 1
    if ranks is not None:
        distributed.init(ranks, config.model.device)
        distributed.broadcast(config)
    started = time.monotonic()
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.json")
    console = make_console()
    if not console.is_terminal:  # no carriage-return bars in a log file
        hf_logging.disable_progress_bar()
    try:
        with (
            services_for(config, output, console) as urls,
            Logbook(
                output, config.run.steps, console, trackers_for(config, output, console)
            ) as logbook,
        ):
            logbook.config(config.model_dump(mode="json"))
            write_services(output, run_id_of(config, output), urls)
            say(console, f"live view: pilot-commit dashboard {output}")
            asyncio.run(train(config, output, urls, logbook, ranks, rows))
    except (ServiceError, ServiceUnavailable, WeightLandingError, VLLMNotFound) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    finally:
        if ranks is not None:
            distributed.close()
    report(config, output, console, time.monotonic() - started)
    return 0


def run_id_of(config: TrainerConfig, output: Path) -> str:
    """The allocator run id: `[run] run_id`, else the output folder's name."""
    return config.run.run_id or output.resolve().name


SERVICES_FILE = "services.json"


def write_services(output: Path, run_id: str, urls: StackUrls) -> None:
    """`<output>/services.json`: where this run's services answer and its allocator run id
    (no token), for `pilot-commit dashboard` and for people; rewritten by every start."""
    found = {
        "run_id": run_id,
        "allocator_url": urls.allocator_url,
        "verifier_url": urls.verifier_url,
        "generation_urls": list(urls.generation_urls),
    }
    (output / SERVICES_FILE).write_text(json.dumps(found, indent=2) + "\n")


def trackers_for(config: TrainerConfig, output: Path, console: Console) -> list[Tracker]:
    """The trackers `[log]` asks for that start (trainer/trackers.py)."""
    log = config.log
    return open_trackers(
        log.trackers,
        output,
        console,
        project=log.project,
        run_name=log.run_name,
        wandb_mode=log.wandb_mode,
        mlflow_tracking_uri=log.mlflow_tracking_uri,
    )


def report(config: TrainerConfig, output: Path, console: Console, command_s: float) -> None:
    """The run's summary lines (trainer/summary.py) and its accuracy-against-rollouts PNG
    beside metrics.jsonl."""
    metrics = output / "metrics.jsonl"
    try:
        summary = read_summary(metrics)
    except ValueError as exc:  # the run is over: say what cannot be read, and stop
        console.print(f"no summary: {exc}", markup=False, highlight=False)
        return
    for line in summary.lines(command_s):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    title = f"{output.name}: {config.allocation.strategy}"
    try:
        plotted = plot_accuracy(summary, output / PLOT_NAME, title)
    except ImportError:
        console.print("no plot: matplotlib is not installed (pip install matplotlib)")
        plotted = False
    plot = f", accuracy against rollouts in {output / PLOT_NAME}" if plotted else ""
    console.print(
        f"done: metrics in {metrics}{plot}", markup=False, highlight=False, soft_wrap=True
    )
