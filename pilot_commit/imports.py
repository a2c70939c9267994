"""The project's import graph, read from the source with `ast` (nothing is imported).

Every `import` and `from ... import` counts: at module level, inside functions and under
`if TYPE_CHECKING:`, because a lazy import is still a dependency of whoever runs that
code. So does a string constant that names one of the project's modules exactly (the
dispatch tables of `pilot-commit` and `pilot-commit bench` hold `importlib` targets).
tests/test_layers.py checks the layer rules on these edges; `python -m pilot_commit.imports
[ROOT]` prints the package-level graph of a checkout
(ROOT: the repository root, default the current directory).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("services", "trainer", "pilot_commit")
# Third-party imports that make an image heavy; shown in the graph as their own nodes.
HEAVY = ("torch", "transformers", "safetensors", "vllm")


@dataclass(frozen=True)
class Import:
    """One imported module name as written in `path` at `line` (1-based)."""

    path: Path  # relative to the repository root
    line: int
    importer: str  # dotted module name of `path`
    imported: str  # dotted module name, relative imports resolved


def module_name(path: Path) -> str:
    """`services/generation/app.py` -> `services.generation.app` (a package: its `__init__`
    is dropped)."""
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_names(node: ast.Import | ast.ImportFrom, importer: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = importer.split(".")
        package = package if is_pkg else package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    # `from pkg import mod` imports pkg.mod when mod is a module; counting both
    # `pkg` and `pkg.mod` keeps the rules right whichever it is.
    return [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]


def imports_of(root: Path, path: Path) -> list[Import]:
    """Every import statement of one file, wherever it sits in the file."""
    rel = path.relative_to(root)
    importer = module_name(rel)
    tree = ast.parse(path.read_text(), filename=str(rel))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in _imported_names(node, importer, rel.name == "__init__.py"):
                found.append(Import(rel, node.lineno, importer, name))
        elif isinstance(node, ast.Constant) and _names_module(root, node.value):
            found.append(Import(rel, node.lineno, importer, node.value))
    return found


def _names_module(root: Path, value: object) -> bool:
    """Whether `value` is the dotted name of a module file of the project under `root`."""
    if not isinstance(value, str) or value.split(".")[0] not in PACKAGES or " " in value:
        return False
    path = root.joinpath(*value.split("."))
    return "." in value and (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file())


def project_files(root: Path) -> list[Path]:
    """Every .py file of the project's packages under `root` (tests excluded)."""
    files: list[Path] = []
    for package in PACKAGES:
        if (root / package).is_dir():
            files += sorted(
                p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts
            )
    return files


def all_imports(root: Path) -> list[Import]:
    return [imp for path in project_files(root) for imp in imports_of(root, path)]


def node_of(module: str, root: Path) -> str | None:
    """The graph node of a module: `pkg.sub` for a module inside a subpackage of one of
    PACKAGES, `pkg` for a top-level module, the heavy library's name, or None (stdlib and
    light third-party packages are left out)."""
    parts = module.split(".")
    if parts[0] in HEAVY:
        return parts[0]
    if parts[0] not in PACKAGES:
        return None
    if len(parts) > 1 and (root / parts[0] / parts[1]).is_dir():
        return ".".join(parts[:2])
    return parts[0]


def graph(root: Path) -> dict[tuple[str, str], int]:
    """(importer node, imported node) -> number of import statements; self-edges dropped."""
    edges: dict[tuple[str, str], set[tuple[Path, int]]] = defaultdict(set)
    for imp in all_imports(root):
        source, target = node_of(imp.importer, root), node_of(imp.imported, root)
        if source is not None and target is not None and source != target:
            edges[source, target].add((imp.path, imp.line))
    return {edge: len(sites) for edge, sites in sorted(edges.items())}


def render(edges: dict[tuple[str, str], int]) -> str:
    by_source: dict[str, list[str]] = defaultdict(list)
    for (source, target), count in edges.items():
        by_source[source].append(f"{target} ({count})")
    width = max((len(s) for s in by_source), default=0)
    return "\n".join(f"{s:<{width}} -> {', '.join(t)}" for s, t in sorted(by_source.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pilot_commit.imports",
        description="Print the package-level import graph: importer -> imported (number of "
        "import statements, lazy ones included).",
    )
    parser.add_argument("root", nargs="?", type=Path, default=Path("."))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(render(graph(args.root.resolve())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
