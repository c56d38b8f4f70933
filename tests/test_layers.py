"""The package's shape: every import points down the layers, no cycles, short functions."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "bt_jax"

# Bottom to top (README "Layout"); a module may import its own layer or any lower one.
LAYERS = [
    ("bt_jax.errors", "bt_jax.io", "bt_jax.compilation", "bt_jax.hugepages", "bt_jax.stages",
     "bt_jax.console"),
    ("bt_jax.porting",),
    ("bt_jax.models",),
    ("bt_jax.config",),         # above models: its allowed names are the registry's
    ("bt_jax.data",),
    ("bt_jax.weights",),
    ("bt_jax.sharding", "bt_jax.features"),
    ("bt_jax.train",),
    ("bt_jax.tuning",),
    ("bt_jax.reporting",),
    ("bt_jax.model_card",),
    ("bt_jax.inference",),
    ("bt_jax.method_a", "bt_jax.serving"),
    ("bt_jax.pipelines",),
]


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(mod: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(mod == p or mod.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{mod} is in no layer: add it to LAYERS and README's layout")


def _imports(path: Path) -> set[str]:
    """bt_jax modules imported anywhere in the file (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("bt_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bt_jax"):
            for a in node.names:  # `from bt_jax.x import y`: y may be a module itself
                sub = f"{node.module}.{a.name}"
                is_mod = (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists() or \
                    (PKG.parent / sub.replace(".", "/")).is_dir()
                out.add(sub if is_mod else node.module)
    return out


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) - {_module(p)} for p in PKG.rglob("*.py")}


def test_every_import_points_down():
    up = [f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
          for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m)]
    assert not up, "\n".join(up)


def test_no_import_cycles():
    graph = _graph()
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if d not in graph:
                continue
            if state.get(d) == "open" and not m.startswith(d + "."):  # a package's __init__
                cycles.append(" -> ".join(stack + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_functions_are_short_or_say_why():
    long = []
    for p in PKG.rglob("*.py"):
        src = p.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(src))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = src[node.lineno - 1:node.end_lineno]
                if len(body) > 60 and not any("# long:" in line for line in body[:4]):
                    long.append(f"{p.relative_to(PKG)}:{node.lineno} {node.name} ({len(body)} lines)")
    assert not long, long


def test_tests_import_helpers_as_ci_runs_them():
    """CI runs plain `pytest` (rootdir-relative imports): a helper imported as `tests.x` only
    resolves when the repository root happens to be on sys.path, as it is under `python -m`."""
    bad = []
    for path in (PKG.parent / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.name}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert not bad, "import test helpers by module name (`from fast_init import ...`):\n" + \
        "\n".join(bad)
