"""The layers point one way: pilot_commit -> trainer -> services, and services stay light.

Rules, checked on every import statement of every module (at module level, inside
functions, under `if TYPE_CHECKING:`) and on module names held in strings (importlib
targets, `python -m` commands), as `pilot_commit.imports` reads them:

- `services` imports neither `trainer` nor `pilot_commit` (a service image has neither
  the trainer nor torch unless the service needs it);
- `trainer` does not import `pilot_commit` (the console script and the benchmarks are the
  top layer);
- `services.allocator` and `services.verifier` reach neither torch nor transformers, also
  through what they import (their images install neither);
- a service package imports from other service packages only their `client` and `models`
  modules, and `services.common` imports no service package;
- `trainer` imports from a service package only its `client`, `models` and `configs`
  modules, and the few shared helpers in `TRAINER_MAY_ALSO`, each with its reason.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from pilot_commit.imports import Import, all_imports, is_module

ROOT = Path(__file__).resolve().parents[1]
SERVICE_PACKAGES = ("allocator", "verifier", "generation")
LIGHT = ("services.allocator", "services.verifier")
HEAVY = ("torch", "transformers")
SHARED = ("client", "models")
TRAINER_SHARED = (*SHARED, "configs")
# Service modules the trainer may import besides clients, wire models and configs.
TRAINER_MAY_ALSO = {
    # the tied-embedding layout that the generation server's served copy and the trainer's
    # checkpoint writer must agree on
    "services.generation.weights",
    # locating vLLM's own venv when `train` starts vLLM as its embedded generation server
    "services.generation.vllm",
    # calibration (trainer/calibration.py) judges answers exactly as the verifier does
    "services.verifier.answers",
}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _service(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "services" else None


def direct_violations(imports: list[Import]) -> list[str]:
    """'path:line: importer imports imported (rule)' for each import a rule forbids."""
    out = []
    for imp in imports:
        src, dst = imp.importer, imp.imported
        rule = None
        if _within(src, "services") and (_within(dst, "trainer") or _within(dst, "pilot_commit")):
            rule = "services never import trainer or pilot_commit"
        elif _within(src, "trainer") and _within(dst, "pilot_commit"):
            rule = "trainer never imports pilot_commit"
        elif (
            _within(src, "trainer")
            and _service(dst) in SERVICE_PACKAGES
            and dst.split(".")[2:3] not in ([name] for name in TRAINER_SHARED)
            and dst not in TRAINER_MAY_ALSO
        ):
            rule = "trainer imports a service's client, models and configs only"
        elif _service(src) == "common" and _service(dst) in SERVICE_PACKAGES:
            rule = "services.common imports no service package"
        elif (
            _service(src) in SERVICE_PACKAGES
            and _service(dst) in SERVICE_PACKAGES
            and _service(dst) != _service(src)
            and dst.split(".")[2:3] not in ([name] for name in SHARED)
        ):
            rule = "a service imports only the client and models modules of another service"
        if rule:
            out.append(f"{imp.path}:{imp.line}: {src} imports {dst} ({rule})")
    return out


def heavy_violations(imports: list[Import], root: Path) -> list[str]:
    """For the allocator and the verifier, the shortest chain of imports (breadth first
    from all their modules) to torch and to transformers, if there is one."""
    edges: dict[str, list[Import]] = {}
    for imp in imports:
        edges.setdefault(imp.importer, []).append(imp)
    out = []
    for package in LIGHT:
        starts = sorted(m for m in edges if _within(m, package))
        seen, queue = set(starts), deque((m, [m]) for m in starts)
        reached: set[str] = set()
        while queue:
            module, chain = queue.popleft()
            for imp in edges.get(module, []):
                library = imp.imported.split(".")[0]
                if library in HEAVY and library not in reached:
                    reached.add(library)
                    path = " -> ".join([*chain, imp.imported])
                    out.append(
                        f"{imp.path}:{imp.line}: {path} (the allocator and verifier "
                        "never reach torch or transformers)"
                    )
                for target in _with_parents(imp.imported, root):
                    if target not in seen:
                        seen.add(target)
                        queue.append((target, [*chain, target]))
    return out


def _with_parents(module: str, root: Path) -> list[str]:
    """A project module and the packages whose `__init__` importing it runs."""
    parts = module.split(".")
    return [m for i in range(1, len(parts) + 1) if is_module(root, m := ".".join(parts[:i]))]


def violations(root: Path) -> list[str]:
    imports = all_imports(root)
    return direct_violations(imports) + heavy_violations(imports, root)


def test_the_layers_point_one_way() -> None:
    found = violations(ROOT)
    assert not found, "layer rules broken:\n" + "\n".join(found)


def test_the_walk_sees_the_known_edges() -> None:
    """The checker is not vacuous: edges the code is known to have are found."""
    edges = {(imp.importer, imp.imported, imp.eager) for imp in all_imports(ROOT)}
    assert ("trainer.loop", "services.generation.client", True) in edges
    assert ("services.common.devices", "torch", False) in edges  # lazy, inside the function
    assert ("pilot_commit.cli", "pilot_commit.up", False) in edges  # an importlib target


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for parent in path.relative_to(root).parents:
            if str(parent) != ".":
                (root / parent / "__init__.py").touch()


# fmt: off
BROKEN = [
    (
        {"services/generation/bench.py": "def f():\n    from trainer.tiny import model\n",
         "trainer/tiny/model.py": ""},
        "services/generation/bench.py:2: services.generation.bench imports "
        "trainer.tiny.model (services never import trainer or pilot_commit)",
    ),
    (
        {"trainer/x.py": "import typing\nif typing.TYPE_CHECKING:\n"
         "    import pilot_commit.cli\n", "pilot_commit/cli.py": ""},
        "trainer/x.py:3: trainer.x imports pilot_commit.cli (trainer never imports "
        "pilot_commit)",
    ),
    (
        {"services/allocator/app.py": "from services.verifier import pool\n",
         "services/verifier/pool.py": ""},
        "services/allocator/app.py:1: services.allocator.app imports "
        "services.verifier.pool (a service imports only the client and models "
        "modules of another service)",
    ),
    (
        {"services/verifier/app.py": "from services.common import devices\n",
         "services/common/devices.py": "def f():\n    import torch.nn\n"},
        "services/common/devices.py:2: services.verifier.app -> services.common.devices "
        "-> torch.nn (the allocator and verifier never reach torch or transformers)",
    ),
    (
        {"services/common/procs.py": "CMD = 'services.allocator.cli'\n",
         "services/allocator/cli.py": ""},
        "services/common/procs.py:1: services.common.procs imports services.allocator.cli "
        "(services.common imports no service package)",
    ),
    (
        {"trainer/algos.py": "from services.allocator.core import rewards_constant\n",
         "services/allocator/core.py": ""},
        "trainer/algos.py:1: trainer.algos imports services.allocator.core (trainer "
        "imports a service's client, models and configs only)",
    ),
]
# fmt: on


@pytest.mark.parametrize(("files", "expected"), BROKEN)
def test_a_broken_rule_names_file_line_and_rule(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    write(tmp_path, files)
    assert violations(tmp_path) == [expected]


def test_allowed_imports_pass(tmp_path: Path) -> None:
    write(tmp_path, {
        "services/allocator/app.py": "from services.verifier.models import ScoreItem\n"
                                     "from services.common import http\n",
        "services/verifier/models.py": "", "services/common/http.py": "",
        "trainer/loop.py": "import torch\nfrom services.generation.client import X\n",
        "services/generation/client.py": "", "pilot_commit/cli.py": "import trainer.loop\n",
    })  # fmt: skip
    assert violations(tmp_path) == []
