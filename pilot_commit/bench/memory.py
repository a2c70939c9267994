"""`pilot-commit bench memory`: per-GPU training memory on paper, FSDP2 over N ranks.

Not a measurement: the formula of docs/deploy.md ("Scaling out") evaluated for Qwen2.5
1.5B / 7B / 14B, so its table can be re-derived and its assumptions changed. Bytes:

- model state `16 P / N`: sharded fp32 parameter, fp32 gradient, AdamW exp_avg and
  exp_avg_sq (4 bytes each);
- working copies: the root unit (embeddings, head) all-gathered in bf16, two decoder-layer
  units gathered in bf16 (current and prefetched), one layer's gradient in bf16 plus its
  fp32 copy for the float32 reduce-scatter;
- activations for T tokens per micro-batch and rank: per layer the bf16 tensors a
  Llama/Qwen block keeps for backward, `2 (8h + 3kv + 4i)` bytes per token, plus `12 V`
  bytes per token for the float32 log-softmax over the vocabulary, its gradient and the
  bf16 cast; with gradient checkpointing each layer keeps only its bf16 input (`2h`) and
  one layer is recomputed at a time.

Assumptions: flash/SDPA attention (no T x T matrix), no KL reference model (`kl_coef > 0`
adds `4 P / N`), CUDA context and allocator fragmentation not counted (a few GB).
"""

from __future__ import annotations

import argparse

GB = 1e9
# Qwen2.5 shapes: layers, hidden, intermediate, heads, kv heads, vocabulary, tied embeddings.
MODELS = {
    "1.5B": (28, 1536, 8960, 12, 2, 151936, True),
    "7B": (28, 3584, 18944, 28, 4, 152064, False),
    "14B": (48, 5120, 13824, 40, 8, 152064, False),
}


def per_gpu_bytes(
    shape: tuple[int, int, int, int, int, int, bool], ranks: int, tokens: int
) -> dict[str, float]:
    """Parameters and per-GPU bytes of each term for one model shape (see the module doc)."""
    layers, h, i, heads, kv_heads, vocab, tied = shape
    kv = h // heads * kv_heads
    p_layer = h * (h + 2 * kv) + (h + 2 * kv) + h * h + 3 * h * i + 2 * h  # qkv+bias, o, mlp, norms
    p_root = vocab * h * (1 if tied else 2) + h
    params = layers * p_layer + p_root
    a_layer = 2 * (8 * h + 3 * kv + 4 * i)
    logits = 12 * vocab
    return {
        "params": params,
        "state": 16 * params / ranks,
        "working": 2 * p_root + 2 * 2 * p_layer + (4 + 2) * p_layer,
        "activations": tokens * (layers * a_layer + logits),
        "activations_ckpt": tokens * (layers * 2 * h + 2 * a_layer + logits),
        "logits": tokens * logits,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="pilot-commit bench memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ranks", type=int, default=8, help="GPUs sharding the policy (8)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per micro-batch and rank")
    args = parser.parse_args(argv)
    print(f"per-GPU GB, FSDP2 over {args.ranks} ranks, {args.tokens} tokens per micro-batch")
    print("| model | P (B) | state | working | activations | total | act. ckpt | total ckpt "
          "| logits |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, shape in MODELS.items():
        b = per_gpu_bytes(shape, args.ranks, args.tokens)
        base = b["state"] + b["working"]
        print(
            f"| {name} | {b['params'] / 1e9:.2f} | {b['state'] / GB:.1f} | {b['working'] / GB:.1f} "
            f"| {b['activations'] / GB:.1f} | {(base + b['activations']) / GB:.1f} "
            f"| {b['activations_ckpt'] / GB:.1f} | {(base + b['activations_ckpt']) / GB:.1f} "
            f"| {b['logits'] / GB:.1f} |"
        )
    return 0
