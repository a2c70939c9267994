"""One `lm_head.weight` for a tied model: the served copy (vllm.py) and the trainer's
checkpoints (trainer/generation/checkpoint.py) both get it from `untie_lm_head`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from services.generation.vllm import served_model_dir
from services.generation.weights import untie_lm_head
from trainer.generation.checkpoint import write_checkpoint


def tied_tensors() -> dict[str, torch.Tensor]:
    embedding = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    return {"model.embed_tokens.weight": embedding, "model.norm.weight": torch.ones(3)}


def test_untie_adds_a_copy_only_when_the_head_is_missing() -> None:
    tensors = untie_lm_head(tied_tensors())
    head, embedding = tensors["lm_head.weight"], tensors["model.embed_tokens.weight"]
    assert torch.equal(head, embedding) and head.data_ptr() != embedding.data_ptr()
    own_head = {**tied_tensors(), "lm_head.weight": torch.zeros(4, 3)}
    assert untie_lm_head(own_head)["lm_head.weight"].abs().sum() == 0
    assert "lm_head.weight" not in untie_lm_head({"model.norm.weight": torch.ones(3)})


def test_checkpoint_names_the_head_only_when_asked(tmp_path: Path) -> None:
    untied = write_checkpoint(tied_tensors(), tmp_path, 1, untie_embeddings=True)
    tensors = load_file(str(untied / "model.safetensors"))
    assert torch.equal(tensors["lm_head.weight"], tensors["model.embed_tokens.weight"])
    tied = write_checkpoint(tied_tensors(), tmp_path, 2)
    assert "lm_head.weight" not in load_file(str(tied / "model.safetensors"))


def test_served_copy_of_a_tied_model_is_untied(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"tie_word_embeddings": True}))
    save_file(tied_tensors(), str(model / "model.safetensors"))
    served = served_model_dir(model, tmp_path / "served")
    assert served == tmp_path / "served"
    assert json.loads((served / "config.json").read_text())["tie_word_embeddings"] is False
    tensors = load_file(str(served / "model.safetensors"))
    assert torch.equal(tensors["lm_head.weight"], tied_tensors()["model.embed_tokens.weight"])
    (model / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    assert served_model_dir(model, tmp_path / "other") == model
