"""The tiny model end to end at toy scale: tokenizer, a few warm-start steps, the cache."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.tiny.build import ModelShape, TinyConfig, build, build_dir, is_built
from trainer.tiny.model import build_tokenizer, save_random_tiny_model
from trainer.tiny.sampling import complete
from trainer.tiny.task import TaskConfig
from trainer.tiny.warmstart import WarmStartConfig, encode_batch

TOY = TinyConfig(
    seed=1,
    task=TaskConfig(train_prompts=400, test_prompts=60),
    model=ModelShape(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    warm_start=WarmStartConfig(steps=8, batch_size=8, warmup_steps=2, eval_samples=2),
)


@pytest.mark.parametrize("text", ["12+345=", "99999*9=449991", "70-8=62"])
def test_tokenizer_round_trip_one_token_per_character(text):
    tokenizer = build_tokenizer()
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


def test_answer_loss_labels_cover_answer_and_eos_only():
    tokenizer = build_tokenizer()
    ids, mask, labels = encode_batch(tokenizer, [("1+2=", "3"), ("10+20=", "30")])
    assert ids.shape == (2, 9)
    assert mask[0].tolist() == [1] * 6 + [0] * 3
    scored = [tokenizer.convert_ids_to_tokens(row[row != -100].tolist()) for row in labels]
    assert scored == [["3", "</s>"], ["3", "0", "</s>"]]


def test_random_tiny_model_loads_and_generates(tmp_path):
    model_dir = save_random_tiny_model(tmp_path / "m", hidden_size=32, num_layers=1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert len(complete(model, tokenizer, ["1+1=", "22+33="], temperature=1.0)) == 2


@pytest.fixture(scope="module")
def toy_build(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tiny"), TOY)


def test_build_writes_an_hf_directory_data_and_calibration(toy_build):
    assert (toy_build.model_dir / "config.json").is_file()
    assert (toy_build.model_dir / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(toy_build.model_dir)
    model = AutoModelForCausalLM.from_pretrained(toy_build.model_dir)
    assert model.config.model_type == "llama"
    assert tokenizer.eos_token_id == model.config.eos_token_id
    config = json.loads((toy_build.model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    rows = [json.loads(line) for line in toy_build.test_path.read_text().splitlines()]
    assert set(rows[0]) == {"prompt", "answer", "difficulty"}
    cal = toy_build.calibration
    assert 0.0 <= cal["greedy_accuracy"] <= 1.0 and 0.0 <= cal["sampled_accuracy"] <= 1.0
    assert cal["parameters"] == sum(p.numel() for p in model.parameters())


def test_build_is_cached_and_deterministic(toy_build, tmp_path):
    assert build(toy_build.root.parent, TOY).calibration == toy_build.calibration
    again = build(tmp_path, TOY)
    assert again.root.name == toy_build.root.name
    first = AutoModelForCausalLM.from_pretrained(toy_build.model_dir).state_dict()
    second = AutoModelForCausalLM.from_pretrained(again.model_dir).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert again.train_path.read_text() == toy_build.train_path.read_text()


def test_build_dir_is_keyed_by_seed_and_config(tmp_path):
    other = TinyConfig(seed=1, task=TOY.task, model=TOY.model)
    assert build_dir(tmp_path, TOY) != build_dir(tmp_path, other)
    assert build_dir(tmp_path, TOY).name.startswith("seed1-")
    assert not is_built(build_dir(tmp_path, TOY))
