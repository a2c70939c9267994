"""The rollout store: entries enter when the allocator buffers a prompt, a commit reads
them, and only the allocator's released list takes them out."""

from __future__ import annotations

import pytest

from services.allocator import models as am
from trainer.policy import Rollout
from trainer.rollouts import RolloutStore, RolloutStoreMismatch


def pilots(prompt_id: int, rewards: list[float]) -> list[Rollout]:
    return [Rollout([prompt_id], [i], [-0.5], r) for i, r in enumerate(rewards)]


def results(
    train: list[tuple[int, str, list[int]]], buffered: list[int], released: list[int]
) -> am.ResultsResponse:
    return am.ResultsResponse(
        plan_id="p",
        step=0,
        gates=[],
        train=[am.TrainGroupOut(prompt_id=p, role=r, reuse=u) for p, r, u in train],
        buffered=buffered,
        released=released,
        committed=len(train),
        train_batch_size=4,
        batch_complete=False,
    )


def test_a_commit_reads_its_reused_pilots_then_releases_them() -> None:
    store = RolloutStore()
    store.add(7, pilots(7, [1.0, 0.0, 1.0]))
    group = store.read(7, [2, 0])
    assert [(r.completion_ids, r.reward) for r in group] == [([2], 1.0), ([0], 1.0)]
    assert 7 in store  # reading keeps the entry
    store.release(results([(7, "commit", [2, 0])], [], released=[7]).released)
    assert 7 not in store and len(store) == 0
    with pytest.raises(KeyError, match="commit of prompt 7: no stored pilot rollouts"):
        store.read(7, [0])


def test_an_answer_releases_before_it_buffers() -> None:
    """A prompt that left the buffer and entered it again within one answer: its old
    entry is released first, so the new pilot rollouts replace it."""
    store = RolloutStore()
    store.add(3, pilots(3, [0.0, 1.0]))
    with pytest.raises(ValueError, match="prompt 3 already has stored pilot rollouts"):
        store.add(3, pilots(3, [1.0, 1.0]))  # a buffered prompt not released first
    answer = results([], buffered=[3], released=[3])
    store.release(answer.released)
    for prompt_id in answer.buffered:
        store.add(prompt_id, pilots(prompt_id, [1.0, 0.0]))
    assert [r.reward for r in store.read(3, [0, 1])] == [1.0, 0.0]


def test_check_raises_when_the_store_and_the_buffer_differ() -> None:
    store = RolloutStore({1: pilots(1, [1.0]), 2: pilots(2, [0.0])})
    store.check([2, 1])
    with pytest.raises(RolloutStoreMismatch, match=r"stored but not buffered \[2\], "
                       r"buffered but not stored \[5\]"):  # fmt: skip
        store.check([1, 5])


def test_step_end_releases_what_the_allocator_released_and_checks_the_rest() -> None:
    store = RolloutStore({p: pilots(p, [1.0]) for p in (1, 2, 3, 4)})
    # expired 1; 2 and 4 were evicted by hand (pending releases drained at the step's end)
    done = am.StepCompleteResponse(
        step_completed=0, step=1, epoch=0, expired=[1], released=[1, 2, 4], buffer=[3]
    )
    store.release(done.released)
    store.check(done.buffer or [])
    assert list(store) == [3]
    # an allocator that released less than it dropped is caught, not trained through
    store = RolloutStore({p: pilots(p, [1.0]) for p in (1, 2, 3, 4)})
    store.release([1])
    with pytest.raises(RolloutStoreMismatch, match=r"stored but not buffered \[2, 4\]"):
        store.check([3])


def test_release_is_the_only_way_out_and_skips_unknown_ids() -> None:
    store = RolloutStore({1: pilots(1, [1.0])})
    store.read(1, [0])
    store.check([1])
    store.release([9])
    assert list(store) == [1]
    plan_drop = am.Plan(
        run_id="r", plan_id="p", step=0, epoch=1, round=0, items=[], rollouts=0,
        group_size=4, dropped_from_buffer=[1], released=[1],
    )  # fmt: skip
    store.release(plan_drop.released)
    assert len(store) == 0 and store.state() == {}
