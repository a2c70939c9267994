"""The stored pilot rollouts of the prompts in the allocator's buffer.

The allocator keeps a buffered prompt's pilot rewards; the tokens stay here, until a
commit trains on them or the entry leaves the buffer otherwise (expiry, a flush at an
epoch end, a manual eviction). The allocator lists, in every answer that drops buffer
entries, the prompts it dropped; `release` with that list is the only way an entry
leaves the store, so no pilot rollout is kept forever, and `check` compares the store
with the allocator's buffer at each step's end.

Order within one allocator answer: a commit reads its stored rollouts (`read`), then the
answer's released entries leave (`release`), then its buffered prompts are stored (`add`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.policy import Rollout


class RolloutStoreMismatch(RuntimeError):
    """The stored pilot rollouts are not those of the allocator's buffer."""


class RolloutStore:
    """Pilot rollouts by prompt id, for the prompts the allocator has in its buffer."""

    def __init__(self, entries: dict[int, list[Rollout]] | None = None) -> None:
        self._entries: dict[int, list[Rollout]] = dict(entries or {})

    def add(self, prompt_id: int, rollouts: list[Rollout]) -> None:
        """Store the pilot rollouts of a prompt the allocator says it buffered.

        Raises ValueError when the prompt is stored already: the allocator releases an
        entry before it buffers the prompt again, so a second `add` means an answer's
        `released` was not applied."""
        if prompt_id in self._entries:
            raise ValueError(f"prompt {prompt_id} already has stored pilot rollouts")
        self._entries[prompt_id] = rollouts

    def read(self, prompt_id: int, reuse: Sequence[int]) -> list[Rollout]:
        """The stored rollouts at indices `reuse` (a commit's train group takes these);
        the entry stays until released. Raises KeyError naming the prompt when none are
        stored."""
        stored = self._entries.get(prompt_id)
        if stored is None:
            raise KeyError(f"commit of prompt {prompt_id}: no stored pilot rollouts")
        return [stored[i] for i in reuse]

    def release(self, prompt_ids: Iterable[int]) -> None:
        """Drop the entries of `prompt_ids` (the allocator's `released` list). Ids not
        stored are skipped: an entry released by two answers is dropped once."""
        for prompt_id in prompt_ids:
            self._entries.pop(prompt_id, None)

    def check(self, buffer: Iterable[int]) -> None:
        """Raise RolloutStoreMismatch (listing both differences) unless the stored prompts
        are exactly `buffer`, the allocator's buffer (`StepCompleteResponse.buffer`): a
        step never trains on rollouts the store cannot vouch for."""
        expected, stored = set(buffer), set(self._entries)
        if expected != stored:
            raise RolloutStoreMismatch(
                "stored pilot rollouts differ from the allocator's buffer: stored but not "
                f"buffered {sorted(stored - expected)}, buffered but not stored "
                f"{sorted(expected - stored)}"
            )

    def state(self) -> dict[int, list[Rollout]]:
        """The entries, for a checkpoint (`RolloutStore(state)` restores them)."""
        return dict(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self._entries

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(self._entries))
