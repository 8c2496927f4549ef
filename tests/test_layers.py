"""The architecture as a test (docs/architecture.md): layers import one way, no import cycles,
argparse only in the CLI, imports at module top, no giant files or functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "readtalk"

# bottom to top; a module may import its own layer and the ones below it
LAYERS = {
    "foundations": ("readtalk", "readtalk.errors", "readtalk.config", "readtalk.media",
                    "readtalk.release", "readtalk.device", "readtalk.profiling"),
    "models": ("readtalk.layers", "readtalk.vae", "readtalk.speech", "readtalk.dit",
               "readtalk.diffusion"),
    "data": ("readtalk.data",),
    "inference": ("readtalk.settings", "readtalk.session", "readtalk.pipeline",
                  "readtalk.onnx_runtime"),
    "eval": ("readtalk.eval",),
    "train": ("readtalk.train",),
    "tools": ("readtalk.bench", "readtalk.bench_profile", "readtalk.bench_gpu",
              "readtalk.bench_gpu_report", "readtalk.export", "readtalk.demo", "readtalk.live",
              "readtalk.finetune"),
    "interfaces": ("readtalk.cli", "readtalk.serve"),
}  # fmt: skip
RANK = {prefix: i for i, prefixes in enumerate(LAYERS.values()) for prefix in prefixes}
# an optional or heavy dependency that stays imported inside the function that needs it
LAZY_OK = ("dlib", "matplotlib", "scipy", "diffusers", "torch.distributed.", "espeakng_loader",
           "importlib")  # fmt: skip
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
# the training loops (readable top to bottom, as nanoGPT's) may be longer
LONG_FUNCTIONS_OK = {
    "train_vae", "train_dit", "train_packer", "train_speech", "train_syncnet", "fit",
}  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    best = max((p for p in RANK if module == p or module.startswith(p + ".")), key=len)
    return RANK[best]


def _imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported readtalk module, line, at module top) of every import in ``path``."""
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*pkg.split(".")[: len(pkg.split(".")) - node.level + 1], base])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in MODULES:
                n = n.rpartition(".")[0]
            if n and n != module:
                out.append((n, node.lineno, id(node) in top))
    return out


def test_every_module_has_a_layer():
    for m in MODULES:
        assert any(m == p or m.startswith(p + ".") for p in RANK), f"{m}: add it to a layer"


def test_layers_import_one_way():
    bad = [
        f"{m} ({list(LAYERS)[_layer(m)]}) imports {t} ({list(LAYERS)[_layer(t)]}), line {line}"
        for m, p in MODULES.items()
        for t, line, _ in _imports(p, m)
        if _layer(t) > _layer(m)
    ]
    assert not bad, "\n".join(bad)


def test_networks_and_diffusion_stay_apart():
    """Networks know nothing of diffusion; diffusion knows nothing of architectures."""
    nets = ("readtalk.vae", "readtalk.speech", "readtalk.dit.model", "readtalk.dit.rope")
    for m, p in MODULES.items():
        targets = {t for t, _, _ in _imports(p, m)}
        if m.startswith(nets):
            assert not any(t.startswith("readtalk.diffusion") for t in targets), m
        if m.startswith("readtalk.diffusion"):
            assert not any(t.startswith(nets) for t in targets), m


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in _imports(p, m)} for m, p in MODULES.items()}
    for m in graph:  # a package's __init__ re-exporting its submodules is not a cycle
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}

    def visit(v, stack):
        state[v] = 1
        for w in graph[v]:
            if state.get(w) == 1:
                pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(w) :], w]))
            if w not in state:
                visit(w, [*stack, w])
        state[v] = 2

    for v in graph:
        if v not in state:
            visit(v, [v])


def test_argparse_only_in_the_cli():
    for m, p in MODULES.items():
        if not m.startswith("readtalk.cli"):
            assert "argparse" not in p.read_text(), f"{m} uses argparse: it belongs in cli/"


def test_imports_at_module_top():
    """Inside functions only in the CLI (keeps `readtalk --help` instant), the package's lazy
    top-level names, and optional heavy dependencies (LAZY_OK)."""
    bad = []
    for m, p in MODULES.items():
        if m.startswith("readtalk.cli") or m == "readtalk":
            continue
        tree = ast.parse(p.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    if not (name or "").startswith(LAZY_OK):
                        bad.append(f"{p.relative_to(ROOT)}:{node.lineno} {fn.name}: {name}")
    assert not bad, "\n".join(bad)


def test_no_giant_files_or_functions():
    big = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    ]
    long = []
    for p in MODULES.values():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name not in LONG_FUNCTIONS_OK:
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(ROOT)}: {node.name} {n} lines")
    assert not big and not long, "\n".join(big + long)


def test_cli_spells_the_library_constants_alike():
    """The CLI repeats a few choices so that `readtalk --help` needs no torch; they agree."""
    from readtalk.cli import bench, train
    from readtalk.eval import results, syncnet

    assert train.SYNCNET_CROPS == syncnet.CROPS
    assert set(train.SYNCNET_SIZES) == set(syncnet.SYNCNET_SIZES)
    assert bench.RESULT_TABLES == results.TABLES
