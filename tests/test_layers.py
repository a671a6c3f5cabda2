"""The package's imports point one way: each module imports only from its own layer or the layers below.

Function-level imports count too; a new module must be given its layer here (the test says so).
"""

from __future__ import annotations

import ast
from pathlib import Path

import graftune

PACKAGE = Path(graftune.__file__).parent

# Bottom first. A module may import from its own layer and any layer before it.
LAYERS: list[set[str]] = [
    {"errors", "safe_files", "generation", "batching", "preprocessing", "loop", "grafted", "hardware", "progress",
     "plots", "weights", "faults", "transferability", "probe", "tasks", "pages", "calibration"},  # tasks: registry
    {"config", "rundir", "datasets", "sampling", "checkpoint", "data", "data.images", "data.videos", "data.readers",
     "data.motion_clips"},
    {"backbones", "backbones.base", "backbones.surgery", "backbones.hf", "backbones.module", "backbones.presets",
     "backbones.vision_libs", "backbones.sources", "backbones.inflate", "data.inputs", "data.splits", "freezing",
     "optim", "strategies", "regularize", "lora", "features", "data.record", "data.corpus"},
    {"staging", "settings", "lr_find", "tasks.base", "tasks.heads", "tasks.lm_batches", "tasks.temporal",
     "tasks.pooled"},
    {"tasks.classification", "tasks.image_classification", "tasks.text_classification", "tasks.causal_lm",
     "tasks.video_classification", "tasks.classification_report", "tasks.regression", "tasks.regression_report",
     "tasks.multilabel", "loaders", "fit", "space"},
    {"artifacts", "forgetting", "report"},
    {"run", "exporting", "exporting.batches", "exporting.check", "exporting.bundle", "exporting.onnx_file",
     "exporting.torchscript_file", "exporting.hf_folder"},
    {"api", "demo", "tune"},
    {"plan", "serve"},
    {"cli", ""},  # "" is the package's __init__, which imports the API lazily
]
LAYER = {module: level for level, modules in enumerate(LAYERS) for module in modules}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """graftune modules a file imports when it runs, anywhere in it (not under `if TYPE_CHECKING:`), without
    the 'graftune.' prefix."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found.update(name.removeprefix("graftune").lstrip(".") for name in names
                     if name == "graftune" or name.startswith("graftune."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_every_module_has_a_layer() -> None:
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    assert modules - set(LAYER) == set(), "give the new modules a layer in tests/test_layers.py"
    assert set(LAYER) - modules == set(), "these modules are gone: remove them from LAYERS"


def test_imports_point_down() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        for target in imported(path):
            if target == name:
                continue
            if LAYER[target] > LAYER[name]:
                upward.append(f"{name} (layer {LAYER[name]}) imports {target} (layer {LAYER[target]})")
    assert upward == []


def test_only_tasks_know_the_built_in_tasks() -> None:
    """Classification is one task among others: the path reaches it only through the task registry."""
    task_modules = {"tasks.classification", "tasks.image_classification", "tasks.text_classification",
                    "tasks.heads", "tasks.causal_lm", "tasks.lm_batches"}
    users = {module_name(p) for p in PACKAGE.rglob("*.py") if imported(p) & task_modules}
    assert {user for user in users if not user.startswith("tasks.")} == set()
