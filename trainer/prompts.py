"""How a dataset row becomes the prompt token ids the trainer sends and scores."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of `prompt` as one user turn plus the assistant header (the tokenizer's
    chat template, `add_generation_prompt=True`): what `data.chat_template = true` sends.

    Raises TypeError if the installed transformers returns something other than ids.
    """
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    if not isinstance(ids, list):
        raise TypeError(f"apply_chat_template returned {type(ids).__name__}, not token ids")
    return [int(i) for i in ids]  # type: ignore[arg-type]  # ints once it is a list
