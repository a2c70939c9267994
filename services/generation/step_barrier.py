"""The step barrier: it orders the decode thread's steps against weight updates and pauses.

Weights must change only between decoding steps, and `/pause` must hold, drain or cut
the running batch as vLLM's pause modes say. Every such rule is one condition on a few
flags kept here, under one lock, so the decode loop and the routes stay simple.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from services.generation.models import PauseMode


class StepBarrier:
    """Flags shared by the decode thread (step, batch) and control calls (pause, exclusive):
    a weight update or a `keep` pause waits for the running step, and the next step waits
    for them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._paused = False
        self._mode: PauseMode = "abort"
        self._abort = False
        self._exclusive = 0
        self._in_step = False
        self._batch_running = False

    # --- decode thread ---------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run one batch; no batch starts while generation is paused."""
        with self._cond:
            self._cond.wait_for(lambda: not self._paused)
            self._batch_running = True
        try:
            yield
        finally:
            with self._cond:
                self._batch_running = False
                self._cond.notify_all()

    @contextmanager
    def step(self) -> Iterator[None]:
        """Run one forward pass; waits while a weight update or a `keep` pause holds the barrier."""
        with self._cond:
            self._cond.wait_for(self._may_step)
            self._in_step = True
        try:
            yield
        finally:
            with self._cond:
                self._in_step = False
                self._cond.notify_all()

    def should_abort(self) -> bool:
        """Whether `/pause?mode=abort` asked the running batch to stop now."""
        with self._cond:
            return self._abort

    def _may_step(self) -> bool:
        frozen = self._paused and self._mode == "keep"
        return not self._exclusive and not frozen

    # --- control calls (blocking: routes run them in a worker thread) ------------------------

    def pause(self, mode: PauseMode) -> None:
        """Stop new batches; then freeze (keep), drain (wait) or cut (abort) the running one."""
        with self._cond:
            self._paused, self._mode, self._abort = True, mode, mode == "abort"
            self._cond.notify_all()
            if mode == "keep":
                self._cond.wait_for(lambda: not self._in_step)
            else:
                self._cond.wait_for(lambda: not self._batch_running)

    def resume(self) -> None:
        with self._cond:
            self._paused, self._abort = False, False
            self._cond.notify_all()

    @property
    def is_paused(self) -> bool:
        with self._cond:
            return self._paused

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model between two decoding steps (for a weight swap)."""
        with self._cond:
            self._exclusive += 1
            self._cond.wait_for(lambda: not self._in_step)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive -= 1
                self._cond.notify_all()
