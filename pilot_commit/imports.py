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
    # Run when the module is imported: a statement of the module body, not one inside a
    # function or under `if TYPE_CHECKING:`, and not a module named in a string.
    eager: bool = True


def module_name(path: Path) -> str:
    """`services/generation/app.py` -> `services.generation.app` (a package: its `__init__`
    is dropped)."""
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_names(
    root: Path, node: ast.Import | ast.ImportFrom, importer: str, is_pkg: bool
) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = importer.split(".")
        package = package if is_pkg else package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod itself.
    names = [f"{base}.{alias.name}" for alias in node.names]
    return sorted({name if is_module(root, name) else base for name in names})


def is_module(root: Path, name: str) -> bool:
    """Whether the dotted `name` is a module or package of the project under `root`."""
    if name.split(".")[0] not in PACKAGES:
        return False
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(root: Path, path: Path) -> list[Import]:
    """Every import statement of one file, wherever it sits in the file."""
    rel = path.relative_to(root)
    importer = module_name(rel)
    tree = ast.parse(path.read_text(), filename=str(rel))
    eager = {id(node) for node in _module_level(tree.body)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in _imported_names(root, node, importer, rel.name == "__init__.py"):
                found.append(Import(rel, node.lineno, importer, name, id(node) in eager))
        elif isinstance(node, ast.Constant) and _names_module(root, node.value):
            found.append(Import(rel, node.lineno, importer, str(node.value), eager=False))
    return found


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements that run on import: the body, and `try`/`with` blocks in it (an
    `if` is left out: at module level here it is `if TYPE_CHECKING:`)."""
    out: list[ast.stmt] = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, ast.Try):
            out += _module_level(stmt.body + stmt.orelse + stmt.finalbody)
            for handler in stmt.handlers:
                out += _module_level(handler.body)
        elif isinstance(stmt, ast.With):
            out += _module_level(stmt.body)
    return out


def _names_module(root: Path, value: object) -> bool:
    """Whether `value` is the dotted name of a module of the project (a package's own
    name alone, a single word, is too common a string to count)."""
    return isinstance(value, str) and "." in value and " " not in value and is_module(root, value)


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


def graph(root: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(importer node, imported node) -> (import statements, how many of them are lazy:
    inside a function, under TYPE_CHECKING or a module named in a string); self-edges
    dropped."""
    edges: dict[tuple[str, str], dict[tuple[Path, int], bool]] = defaultdict(dict)
    for imp in all_imports(root):
        source, target = node_of(imp.importer, root), node_of(imp.imported, root)
        if source is not None and target is not None and source != target:
            site = (imp.path, imp.line)
            edges[source, target][site] = edges[source, target].get(site, False) or imp.eager
    return {
        edge: (len(sites), sum(not eager for eager in sites.values()))
        for edge, sites in sorted(edges.items())
    }


def render(edges: dict[tuple[str, str], tuple[int, int]]) -> str:
    by_source: dict[str, list[str]] = defaultdict(list)
    for (source, target), (count, lazy) in edges.items():
        by_source[source].append(f"{target} ({count}{f', {lazy} lazy' if lazy else ''})")
    width = max((len(s) for s in by_source), default=0)
    return "\n".join(f"{s:<{width}} -> {', '.join(t)}" for s, t in sorted(by_source.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pilot_commit.imports",
        description="Print the package-level import graph: importer -> imported (number of "
        "import statements, and how many of them are lazy).",
    )
    parser.add_argument("root", nargs="?", type=Path, default=Path("."))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(render(graph(args.root.resolve())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
