"""The house's rules, read from the source: imports point down the data path, and only public names cross packages.

depgraph <- pruners <- recovery <- learned: ``depgraph`` never imports ``pruners`` (or what comes
after it), ``pruners`` never imports ``recovery`` or ``learned``, ``recovery`` never imports ``learned``.  Benchmarks use the public API: ``pruners`` top-level
names (``pruners/__init__.py``) and ``depgraph``'s public modules.  Nothing outside a package
imports a private (``_``-prefixed) name from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pruners

from zoo import REPO


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` for every import in ``path``; relative imports resolved against its package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append((base, [a.name for a in node.names]))
    return out


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("folder,forbidden", [
    ("depgraph", ("pruners", "recovery", "learned")), ("pruners", ("recovery", "learned")), ("recovery", ("learned",)),
])
def test_imports_point_down_the_data_path(folder, forbidden):
    bad = [(p.relative_to(REPO), m) for p in sources(folder) for m, _ in imports(p) if m.split(".")[0] in forbidden]
    assert not bad, bad


def test_benchmarks_use_the_public_api_only():
    public = set(pruners.__all__)
    bad = []
    for p in sources("benchmarks"):
        for module, names in imports(p):
            if module.startswith("pruners.") or (module == "pruners" and not set(names) <= public):
                bad.append((p.relative_to(REPO), module, names))
    assert not bad, bad


# what a plugin package (recovery, or any other) may import from pruners besides its top-level API:
# the errors it raises and the command-line plumbing a command is made of
PLUGIN_MODULES = {"pruners.errors", "pruners.cli.registry", "pruners.cli.arguments"}


def plugin_violations(folder: str, internal: tuple[str, ...]) -> list:
    """Imports in ``folder`` of pruners names outside its top-level API, or of modules starting with
    ``internal`` that are not :data:`PLUGIN_MODULES`."""
    public = set(pruners.__all__)
    bad = []
    for p in sources(folder):
        for module, names in imports(p):
            if module == "pruners" and not set(names) <= public:
                bad.append((p.relative_to(REPO), module, sorted(set(names) - public)))
            elif module.startswith(internal) and module not in PLUGIN_MODULES:
                bad.append((p.relative_to(REPO), module, names))
    return bad


def test_recovery_uses_the_public_api_only():
    bad = plugin_violations("recovery", ("pruners.", "depgraph"))
    assert sources("recovery") and not bad, bad


def test_learned_uses_public_apis_only():
    """learned/ (gates trained after recovery's fashion) may use pruners' top-level API and plugin modules,
    recovery, and depgraph's public modules (the groups it gates)."""
    bad = plugin_violations("learned", ("pruners.",))
    assert sources("learned") and not bad, bad


def test_no_private_name_is_imported_across_packages():
    bad = []
    for folder in ("benchmarks", "tests", "pruners", "depgraph", "recovery", "learned"):
        for p in sources(folder):
            own = p.relative_to(REPO).parts[0]
            for module, names in imports(p):
                if module.split(".")[0] in ("pruners", "depgraph", "recovery", "learned") and module.split(".")[0] != own:
                    bad += [(p.relative_to(REPO), module, n) for n in names if n.startswith("_")]
    assert not bad, bad


def test_relative_imports_are_resolved_to_their_package():
    assert imports(REPO / "pruners" / "cli" / "main.py")[:3] == [
        ("__future__", ["annotations"]), ("gc", []), ("json", []),
    ]
    assert ("pruners.errors", ["DeppruneError", "UsageError", "first_line"]) in imports(REPO / "pruners" / "cli" / "main.py")
