"""Imports run one way: cli -> orchestration -> deploy -> generations -> (losses, tasks) -> models -> bottom modules.

The test reads every module of the package with `ast` (no import is run), so
it sees every import: at module level, inside functions (lazy imports) and
under `if TYPE_CHECKING:`. An edge from a layer to one it may not import fails
the test, named with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mgkd

PACKAGE = Path(mgkd.__file__).parent
# Small modules everyone may import: the config, the one error type, special tokens, output types and the
# batch protocol, atomic files, a Hugging Face folder read as files; and the package root (its version).
BOTTOM = frozenset({"mgkd", "config", "errors", "vocabulary", "outputs", "files", "hf_folder"})
# What each layer may import besides itself (a package imports its own modules freely).
LAYERS: dict[str, frozenset[str]] = {
    "cli": frozenset({"orchestration", "deploy", "generations", "lineage", "losses", "tasks", "models"}) | BOTTOM,
    # Ray, the controller over generations, sweeps, submission; with deploy, the user of lineage (MLflow).
    # It may log a generation's deployable model (deploy.pyfunc) beside its checkpoint.
    "orchestration": frozenset({"deploy", "generations", "lineage", "losses", "tasks", "models"}) | BOTTOM,
    # Inference and export of a lineage's models: reads checkpoints and the lineage, runs models.
    "deploy": frozenset({"generations", "lineage", "tasks", "models"}) | BOTTOM,
    # One generation: teacher signal, the training recipe, checkpoints.
    "generations": frozenset({"losses", "tasks", "models"}) | BOTTOM,
    # Loss plugins read model declarations (features, layers), outputs and batches; never task code.
    "losses": frozenset({"models"}) | BOTTOM,
    # A task may run a model (decoding for its metric); it never reads losses.
    "tasks": frozenset({"models"}) | BOTTOM,
    "models": BOTTOM,
    # MLflow: called by orchestration, imports no mgkd layer above the bottom.
    "lineage": BOTTOM,
    **{name: BOTTOM for name in BOTTOM},
}


def _layer(module: str) -> str:
    """`mgkd.losses.internal` -> `losses`; `mgkd.config` -> `config`; `mgkd` -> `mgkd`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The mgkd modules an import statement names (a `from X import y` names X.y when y is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "mgkd"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: resolve against this module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "mgkd":
        return []
    if target == "mgkd":  # `from mgkd import losses`: the names are the layers
        return [f"mgkd.{a.name}" for a in node.names]
    return [target]


def import_edges(package: Path = PACKAGE) -> list[tuple[str, int, str, str]]:
    """(file, line, importing module, imported module) for every import of an mgkd module in the package."""
    edges = []
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for target in _imported(node, module, path.name == "__init__.py"):
                edges.append((str(path.relative_to(package.parent)), node.lineno, module, target))
    return edges


def upward_edges(edges: list[tuple[str, int, str, str]]) -> list[str]:
    """Each edge a layer may not take, as `file:line: a -> b (a may import: ...)`."""
    bad = []
    for file, line, source, target in edges:
        src, dst = _layer(source), _layer(target)
        if src == dst:
            continue
        if src not in LAYERS:
            bad.append(f"{file}:{line}: {source} is in no layer: add `{src}` to LAYERS in this test")
        elif dst not in LAYERS[src]:
            allowed = ", ".join(sorted(LAYERS[src] - {"mgkd"}))
            bad.append(f"{file}:{line}: {source} -> {target} goes upward ({src} may import: {allowed})")
    return bad


def test_every_layer_imports_only_the_layers_below_it():
    edges = import_edges()
    assert len(edges) > 50, "the walk found almost no imports: is PACKAGE the mgkd folder?"
    bad = upward_edges(edges)
    assert not bad, "imports that run upward:\n" + "\n".join(bad)


def test_nothing_imports_the_cli():
    importers = [f"{f}:{line}: {s}" for f, line, s, t in import_edges() if _layer(t) == "cli" and _layer(s) != "cli"]
    assert not importers, "the CLI is the top: nothing may import it:\n" + "\n".join(importers)


def test_the_walk_sees_lazy_and_relative_imports(tmp_path):
    """The checker itself: a function-level import and a relative one are edges; an upward one is named."""
    pkg = tmp_path / "mgkd"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("from . import net\n")
    (pkg / "models" / "net.py").write_text(
        "from ..errors import MgkdError\n\ndef f():\n    from mgkd.tasks.translation import PAD\n    return PAD\n"
    )
    edges = import_edges(pkg)
    assert ("mgkd/models/net.py", 1, "mgkd.models.net", "mgkd.errors") in edges
    assert ("mgkd/models/__init__.py", 1, "mgkd.models", "mgkd.models") in edges  # `from . import net`: its package
    assert ("mgkd/models/net.py", 4, "mgkd.models.net", "mgkd.tasks.translation") in edges
    assert upward_edges(edges) == [
        "mgkd/models/net.py:4: mgkd.models.net -> mgkd.tasks.translation goes upward "
        "(models may import: config, errors, files, hf_folder, outputs, vocabulary)"
    ]


def test_every_package_is_installed():
    """A sub-package missing from pyproject's explicit package list imports from a checkout but is absent from a
    wheel (and from a non-editable install): every folder of mgkd with an __init__.py must be listed."""
    import tomllib

    listed = set(
        tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]["packages"]
    )
    found = {_module_name(p, PACKAGE) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
