"""A character-level tokenizer and a Llama-architecture model small enough for a CPU.

The tokenizer is built locally with `tokenizers` (nothing is downloaded) and wrapped in
`PreTrainedTokenizerFast`, so the saved directory is an ordinary Hugging Face model
directory that transformers, vLLM or SGLang can load.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
# Everything the arithmetic task writes, plus enough letters for short instructions.
CHARACTERS = list("0123456789+-*/=()?.,:;# \n") + list("abcdefghijklmnopqrstuvwxyz")
CHARACTERS += list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character; unknown characters map to <unk>; decoding concatenates."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=512,
    )


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 352,
    max_positions: int = 128,
) -> LlamaConfig:
    """A Llama config of roughly 0.7M parameters at the defaults."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
    )


def init_model(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised model; the same seed gives the same weights."""
    import torch

    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_random_tiny_model(out_dir: Path, seed: int = 0, **config_kwargs: int) -> Path:
    """Write an untrained tiny model + tokenizer to `out_dir` (for tests and benchmarks)."""
    tokenizer = build_tokenizer()
    model = init_model(tiny_llama_config(tokenizer, **config_kwargs), seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
