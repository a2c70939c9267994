"""Per-prompt statistics and buffer entries, and their compact binary form in Redis.

A run may hold millions of prompts, so a prompt's statistics are one fixed 40-byte record
(`struct` layout below) stored as a field of a small Redis hash bucket holding 64
prompts. Small hashes use Redis's compact listpack encoding, which keeps memory near
100-150 bytes per prompt seen even when prompts are scattered across buckets.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field, replace
from enum import IntEnum


class Status(IntEnum):
    """Where a prompt stands. Only EVICTED changes which prompts are planned; BUFFERED and
    EVICT_PENDING mirror the buffer and the pending-eviction set."""

    ACTIVE = 0  # will be piloted when the epoch order reaches it
    DEFERRED = 1  # last pilot below the band (too hard); stays for later epochs
    EASY = 2  # last pilot above the band (too easy), not evicted
    BUFFERED = 3  # passed the gate; waits in the replay buffer to be committed
    EVICT_PENDING = 5  # at or above exclude_threshold; evicted when the epoch ends
    EVICTED = 6  # never planned again (until restored)


class Outcome(IntEnum):
    """What happened to the prompt's latest group."""

    NONE = 0
    PASS = 1  # pilot inside the band (Pilot-Commit) or informative group (DAPO)
    TOO_EASY = 2
    TOO_HARD = 3
    TRAINED = 4  # group went into a train batch
    SURPLUS = 5  # informative, but the batch was already full (DAPO)
    EXPIRED = 6  # left the buffer unused after buffer_max_off_steps
    FLUSHED = 7  # left the buffer at an epoch end
    EVICTED = 8
    RESTORED = 9  # restored by hand
    # Posterior-driven decisions (posterior_gate); see docs/strategies.md.
    SKIPPED_CONFIDENT_EASY = 10  # not piloted: the posterior is confidently above the band
    SKIPPED_CONFIDENT_HARD = 11  # not piloted: the posterior is confidently below the band
    DIRECT_COMMIT = 12  # trained as a full group without a pilot: confidently inside the band
    EVICTED_POSTERIOR = 13  # evict-pending, then evicted: confidently solved
    RESTORED_EVIDENCE = 14  # restored from eviction by external evidence
    EVIDENCE = 15  # external evidence (e.g. an evaluation) folded into the statistics


_RECORD = struct.Struct("<IIfffiBBBB12s")
RECORD_SIZE = _RECORD.size  # 40 bytes
STRATEGY_STATE_SIZE = 12  # bytes of a record the run's strategy owns
# How a record holds "no strategy state" (what records written before strategies had their
# own codecs hold there too); a strategy's codec never encodes its state to these bytes.
_NO_STATE = struct.pack("<ffi", 0.0, 0.0, -1)


@dataclass(frozen=True)
class PromptStats:
    """Everything the allocator remembers about one prompt.

    `strategy_state` belongs to the run's strategy: at most `STRATEGY_STATE_SIZE` bytes
    that only its own codec reads and writes (b"": none, e.g. before its first group).
    """

    rollouts: int = 0
    successes: int = 0
    reward_sum: float = 0.0
    pilot_pass_rate: float = math.nan
    pilot_std: float = math.nan
    last_step: int = -1
    status: Status = Status.ACTIVE
    last_outcome: Outcome = Outcome.NONE
    all_correct_streak: int = 0
    all_wrong_streak: int = 0
    strategy_state: bytes = b""

    def pack(self) -> bytes:
        return _RECORD.pack(
            self.rollouts,
            self.successes,
            self.reward_sum,
            self.pilot_pass_rate,
            self.pilot_std,
            self.last_step,
            int(self.status),
            int(self.last_outcome),
            min(self.all_correct_streak, 255),
            min(self.all_wrong_streak, 255),
            self.strategy_state.ljust(STRATEGY_STATE_SIZE, b"\0")
            if self.strategy_state
            else _NO_STATE,
        )

    def __post_init__(self) -> None:
        if len(self.strategy_state) > STRATEGY_STATE_SIZE:
            raise ValueError(f"strategy state of {len(self.strategy_state)} bytes; at most 12")

    @classmethod
    def unpack(cls, raw: bytes | None) -> PromptStats:
        if not raw:
            return cls()
        (
            rollouts,
            successes,
            reward_sum,
            pass_rate,
            std,
            last_step,
            status,
            outcome,
            correct,
            wrong,
            state,
        ) = _RECORD.unpack(raw)
        return cls(
            rollouts,
            successes,
            reward_sum,
            pass_rate,
            std,
            last_step,
            Status(status),
            Outcome(outcome),
            correct,
            wrong,
            b"" if state == _NO_STATE else state,
        )

    def with_status(self, status: Status, outcome: Outcome | None = None) -> PromptStats:
        """A copy with `status`, and `outcome` unless it is None (Outcome.NONE is set)."""
        last = self.last_outcome if outcome is None else outcome
        return replace(self, status=status, last_outcome=last)


@dataclass(frozen=True)
class BufferEntry:
    """A prompt that passed the gate, with the pilot rewards the trainer is keeping."""

    prompt_id: int
    step: int  # step at which it passed the gate
    seq: int  # run-wide arrival order; larger is more recent
    pass_rate: float
    std: float
    rewards: tuple[float, ...] = field(default=())

    def pack(self) -> bytes:
        head = struct.pack("<qiIff", self.prompt_id, self.step, self.seq, self.pass_rate, self.std)
        return head + struct.pack(f"<{len(self.rewards)}f", *self.rewards)

    @classmethod
    def unpack(cls, raw: bytes) -> BufferEntry:
        prompt_id, step, seq, pass_rate, std = struct.unpack_from("<qiIff", raw)
        count = (len(raw) - 24) // 4
        rewards = struct.unpack_from(f"<{count}f", raw, 24)
        return cls(prompt_id, step, seq, pass_rate, std, tuple(rewards))
