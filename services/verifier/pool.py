"""Worker processes for symbolic checks, with a hard per-item timeout.

sympy can hang or allocate without bound on hostile LaTeX, and math-verify's own timeout
(`signal.alarm`) only works on a main thread. So every symbolic check runs in a worker
process; the event loop waits for its answer on the pipe without blocking, and a worker
that has not answered by the item's deadline is SIGKILLed and replaced. Only that item
is lost (`timeout`); the other items of the batch go on in the other workers.

Two more guards keep one slow item from starving the rest:
- surge workers: a worker busy on one item for longer than `stuck_after_s` (ordinary
  checks take 10-150 ms) is presumed stuck, and a job waiting for a worker may start an
  extra one in its place (up to `max_workers`); extras retire as soon as they are idle.
  A merely long queue starts none: more processes than cores would not make it shorter;
- workers come from a forkserver that has already imported sympy, so a replacement is
  ready in milliseconds, not the second a cold interpreter needs.
Each worker also runs under an address-space limit, so a hostile item fails with
MemoryError (`too_complex`) instead of taking the machine's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import resource
import time
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from services.verifier.answers import Reason

log = logging.getLogger(__name__)

_PRELOAD = ["services.verifier.preload"]
_READY = "ready"
# How often a job waiting for a worker re-checks whether it may start a surge worker.
_POLL_S = 0.05


def _serve(conn: Connection, memory_mb: int) -> None:
    """Worker main loop: (reference, answer) in, reason out, until the pipe closes."""
    from services.verifier.symbolic import judge, warm_up

    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warm_up()  # instant when forked from the warmed-up forkserver (`preload.py`)
    conn.send(_READY)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        reason: Reason
        try:
            reason = judge(*job)
        except MemoryError:
            reason = "too_complex"
        except Exception:  # sympy raises anything on odd input; it means "unparseable"
            reason = "parse_error"
        conn.send(reason)


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: mp.context.BaseContext, memory_mb: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc: BaseProcess = ctx.Process(  # type: ignore[attr-defined]
            target=_serve, args=(child, memory_mb), daemon=True
        )
        self._child = child

    def start(self, timeout: float = 60.0) -> None:
        """Start the process and wait until it has warmed up (blocking: run in a thread)."""
        self.proc.start()
        self._child.close()
        if not self.conn.poll(timeout) or self.conn.recv() != _READY:
            self.kill()
            raise RuntimeError(f"verifier worker not ready after {timeout}s")

    async def call(self, job: tuple[str, str], timeout: float) -> Reason:
        """Send one job and wait for its answer; raise TimeoutError past `timeout`."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Reason] = loop.create_future()
        fd = self.conn.fileno()

        def readable() -> None:
            loop.remove_reader(fd)
            if answer.done():
                return
            try:
                answer.set_result(self.conn.recv())
            except (EOFError, OSError) as exc:
                answer.set_exception(exc)

        self.conn.send(job)
        loop.add_reader(fd, readable)
        try:
            return await asyncio.wait_for(answer, max(timeout, 0.0))
        finally:
            loop.remove_reader(fd)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class WorkerPool:
    """`size` resident workers, up to `max_size` with surge workers; see module doc."""

    def __init__(
        self, size: int, max_size: int, *, memory_mb: int = 0, stuck_after_s: float = 0.25
    ) -> None:
        self.size, self.max_size = size, max(size, max_size)
        self.memory_mb, self.stuck_after_s = memory_mb, stuck_after_s
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(_PRELOAD)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._busy_since: dict[_Worker, float] = {}
        self._waiters: deque[asyncio.Future[_Worker]] = deque()
        self._count = 0
        self._background: set[asyncio.Task[None]] = set()
        self.kills = 0

    @property
    def workers(self) -> int:
        return self._count

    async def start(self) -> None:
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        for worker in workers:
            self._release(worker)

    async def _spawn(self) -> _Worker:
        self._count += 1
        worker = _Worker(self._ctx, self.memory_mb)
        try:
            await asyncio.to_thread(worker.start)
        except BaseException:
            self._count -= 1
            raise
        self._all.add(worker)
        return worker

    def _release(self, worker: _Worker) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(worker)
                return
        if self._count > self.size:  # a surge worker: retire it
            self._count -= 1
            self._kill(worker)
        else:
            self._idle.append(worker)

    async def _wait_idle(self, timeout: float) -> _Worker | None:
        if self._idle:
            return self._idle.pop()
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=max(timeout, 0.0))
        except asyncio.CancelledError:
            # The request went away: a worker handed to us in the meantime goes back.
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())
            waiter.cancel()
            raise
        if waiter.done():
            return waiter.result()
        waiter.cancel()
        return None

    def _may_surge(self) -> bool:
        now = time.monotonic()
        stuck = sum(now - since > self.stuck_after_s for since in self._busy_since.values())
        return self._count < self.max_size and self._count - self.size < stuck

    async def _acquire(self, deadline: float) -> _Worker | None:
        """An idle worker, a surge worker in place of a stuck one, or None at `deadline`."""
        while (remaining := deadline - time.monotonic()) > 0:
            worker = await self._wait_idle(min(_POLL_S, remaining))
            if worker is not None:
                return worker
            if self._may_surge():
                return await self._spawn()
        return None

    async def judge(self, reference: str, answer: str, timeout: float, deadline: float) -> Reason:
        """Judge one pair within `timeout` seconds of starting and before `deadline`."""
        worker = await self._acquire(deadline)
        if worker is None:
            return "timeout"
        budget = min(timeout, deadline - time.monotonic())
        self._busy_since[worker] = time.monotonic()
        try:
            reason = await worker.call((reference, answer), budget)
        except TimeoutError:
            self._replace(worker)
            return "timeout"
        except (EOFError, OSError):
            self._replace(worker)
            return "worker_error"
        except asyncio.CancelledError:
            # Its answer would arrive later and be read as the next job's: not reusable.
            self._replace(worker)
            raise
        finally:
            self._busy_since.pop(worker, None)
        self._release(worker)
        return reason

    def _replace(self, worker: _Worker) -> None:
        """Kill a hung or dead worker now; start its replacement in the background."""
        self.kills += 1
        self._count -= 1
        self._kill(worker)
        if self._count < self.size:
            task = asyncio.get_running_loop().create_task(self._respawn())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _kill(self, worker: _Worker) -> None:
        self._all.discard(worker)
        worker.kill()

    async def _respawn(self) -> None:
        try:
            self._release(await self._spawn())
        except Exception:
            log.exception("could not start a replacement verifier worker")

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for waiter in self._waiters:
            waiter.cancel()
        for worker in list(self._all):  # busy ones too: a hung worker must not outlive us
            with contextlib.suppress(Exception):
                self._kill(worker)
        self._idle.clear()
        self._count = 0
