"""Small models and data the end-to-end tiers share (built in seconds, nothing downloaded)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from trainer.tiny.model import build_tokenizer, init_model, tiny_llama_config
from trainer.tiny.task import TaskConfig, generate_splits, write_jsonl
from trainer.tiny.warmstart import answer_loss, encode_batch


def fitted_tiny_assets(root: Path) -> Path:
    """A small Llama fitted for a few seconds to one-digit arithmetic: right on some
    problems some of the time, so groups have reward spread to learn from.

    Writes `root/model` (tied embeddings, float32), `root/train.jsonl`, `root/test.jsonl`.
    """
    train_rows, _ = generate_splits(0, TaskConfig())
    easy = [r for r in train_rows if r["difficulty"] == 1]
    write_jsonl(root / "train.jsonl", easy)
    write_jsonl(root / "test.jsonl", easy[:64])
    tokenizer = build_tokenizer()
    model = init_model(
        tiny_llama_config(
            tokenizer, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128
        ),
        seed=0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(300):
        batch = [(r["prompt"], r["answer"]) for r in rng.sample(easy, 64)]
        answer_loss(model, encode_batch(tokenizer, batch), 0.0).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root
