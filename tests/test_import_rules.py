"""The wall between the GUI and the model: enforced on every file, and at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO_ROOT, python_env

MODEL_LIBRARIES = {"torch", "transformers", "bitsandbytes", "accelerate", "safetensors", "huggingface_hub_torch"}
QT_LIBRARIES = {"PySide6", "shiboken6", "PyQt5", "PyQt6", "pytestqt"}
# The engine modules the GUI may import: each holds one copy of a fact and needs only the stdlib.
STDLIB_ONLY_ENGINE_MODULES = {"engine.protocol", "engine.hub_cache"}


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", python_files("app"), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_app_never_imports_model_libraries_nor_engine_internals(path):
    for name in imported_modules(path):
        top = name.split(".")[0]
        assert top not in MODEL_LIBRARIES, f"{path.name} imports {name}: keep model libraries in the worker"
        if top == "engine":
            module = ".".join(name.split(".")[:2])
            assert name == "engine" or module in STDLIB_ONLY_ENGINE_MODULES, (
                f"{path.name} imports {name}: the GUI may use only {', '.join(sorted(STDLIB_ONLY_ENGINE_MODULES))}"
            )


@pytest.mark.parametrize("path", python_files("engine"), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_engine_never_imports_qt_nor_the_app(path):
    for name in imported_modules(path):
        top = name.split(".")[0]
        assert top not in QT_LIBRARIES, f"{path.name} imports {name}: the engine must not import Qt"
        assert top != "app", f"{path.name} imports {name}: the engine must not import the GUI"


@pytest.mark.parametrize("module", sorted(STDLIB_ONLY_ENGINE_MODULES))
def test_engine_modules_the_gui_uses_import_only_the_standard_library(module):
    path = REPO_ROOT / (module.replace(".", "/") + ".py")
    for name in imported_modules(path):
        top = name.split(".")[0]
        assert top in sys.stdlib_module_names or top == "__future__", f"{path.name} imports {name}"


def test_importing_every_app_module_loads_no_model_library():
    modules = sorted(
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in python_files("app")
        if path.name != "__main__.py"
    )
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(MODEL_LIBRARIES)!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [PYTHON, "-c", script], capture_output=True, text=True, env=python_env(QT_QPA_PLATFORM="offscreen"), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"app modules pulled in: {result.stdout.strip()}"


def test_the_engine_never_runs_code_from_a_model_folder():
    for path in python_files("engine"):
        source = path.read_text(encoding="utf-8")
        assert "trust_remote_code=True" not in source, f"{path.name} trusts remote code"
