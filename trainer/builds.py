"""Build-if-absent directories, shared by the tiny, SmolLM2 and task builds.

Every build writes into `<cache root>/<name>-<hash>/`, where the hash covers everything
that changes what the build produces, so a changed input never reuses a stale build. A
build is assembled in a temporary sibling directory and renamed into place, and the file
that marks it finished is written last, so an interrupted build never looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress

    from services.common.progress import LineProgress


def cache_root(kind: str) -> Path:
    """`$PILOT_COMMIT_CACHE/<kind>`, else `.cache/<kind>` under the working directory."""
    cache = os.environ.get("PILOT_COMMIT_CACHE")
    return (Path(cache) if cache else Path.cwd() / ".cache") / kind


def digest(payload: dict[str, Any]) -> str:
    """Ten hex digits of the SHA-256 of `payload` as sorted JSON: a build directory's key."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def assemble(final: Path, fill: Callable[[Path], None]) -> None:
    """Run `fill(staging)` in a fresh sibling of `final`, then rename it to `final`
    (replacing an old one). Nothing is left behind if `fill` raises.

    Files are made world-readable: `mkdtemp` makes the directory private, and servers in
    containers (vLLM) read builds too.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        fill(staging)
        for path in (staging, *staging.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def step(progress: Progress | LineProgress | None, what: str) -> Iterator[None]:
    """Show `what` as one line of `progress` (spinner, elapsed time) while it runs."""
    if progress is None:
        yield
        return
    task = progress.add_task(what, total=1)
    yield
    progress.update(task, completed=1)
