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


# The engine modules the GUI may import: each holds facts both sides need (the protocol, hub ids
# and cache paths, the probe of this PC, the memory plan and verdict, the model-folder check, the
# user folders), so that each fact has one copy. They import only the standard library
# (platformdirs for the user folders) at module level and never load torch, transformers or Qt.
GUI_ENGINE_MODULES = {
    "engine",
    "engine.protocol",
    "engine.hub",
    "engine.hub_cache",
    "engine.machine",
    "engine.hardware",
    "engine.planner",
    "engine.real_config",
    "engine.model_folder",
    "engine.paths",
}
# Pure-Python packages with no dependencies of their own that those modules may use.
GUI_ENGINE_THIRD_PARTY = {"platformdirs"}


def imported_engine_modules(path: Path) -> list[str]:
    """The engine modules a file imports: `from engine import hub` names engine.hub, not engine."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    modules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names if alias.name.split(".")[0] == "engine")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "engine":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (REPO_ROOT.joinpath(*candidate.split(".")).with_suffix(".py")).is_file() or (
                    REPO_ROOT.joinpath(*candidate.split(".")) / "__init__.py"
                ).is_file()
                modules.append(candidate if is_module else node.module)
    return modules


def module_level_imports(path: Path) -> list[str]:
    """Top-level names imported when the module loads (imports inside functions run only when called)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = []
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        else:
            pending.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return names


@pytest.mark.parametrize("path", python_files("app"), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_app_never_imports_model_libraries_nor_engine_internals(path):
    for name in imported_modules(path):
        top = name.split(".")[0]
        assert top not in MODEL_LIBRARIES, f"{path.name} imports {name}: keep model libraries in the worker"
    for module in imported_engine_modules(path):
        assert module in GUI_ENGINE_MODULES, (
            f"{path.relative_to(REPO_ROOT)} imports {module}: the GUI may use only the engine's "
            f"standard-library modules ({', '.join(sorted(GUI_ENGINE_MODULES))})"
        )


@pytest.mark.parametrize("module", sorted(GUI_ENGINE_MODULES - {"engine"}))
def test_engine_modules_the_gui_uses_import_only_the_standard_library(module):
    path = REPO_ROOT.joinpath(*module.split(".")).with_suffix(".py")
    for name in module_level_imports(path):
        top = name.split(".")[0]
        if top == "engine":
            assert name in GUI_ENGINE_MODULES, f"{module} imports {name}, which the GUI may not load"
        else:
            assert top in sys.stdlib_module_names or top == "__future__" or top in GUI_ENGINE_THIRD_PARTY, (
                f"{module} imports {name} at module level: the GUI imports this module, keep it standard library only"
            )


def test_importing_the_engine_modules_the_gui_uses_loads_no_torch_transformers_nor_qt():
    script = (
        "import importlib, sys\n"
        f"for name in {sorted(GUI_ENGINE_MODULES)!r}:\n"
        "    importlib.import_module(name)\n"
        f"heavy = {sorted(MODEL_LIBRARIES | QT_LIBRARIES)!r}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        f"internal = sorted(m for m in sys.modules if m.startswith('engine.') and m not in {sorted(GUI_ENGINE_MODULES)!r})\n"
        "print(','.join(bad + internal))\n"
    )
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=python_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the GUI's engine modules pulled in: {result.stdout.strip()}"


@pytest.mark.parametrize("path", python_files("engine"), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_engine_never_imports_qt_nor_the_app(path):
    for name in imported_modules(path):
        top = name.split(".")[0]
        assert top not in QT_LIBRARIES, f"{path.name} imports {name}: the engine must not import Qt"
        assert top != "app", f"{path.name} imports {name}: the engine must not import the GUI"


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


def test_the_download_child_runs_without_qt():
    # `python -m app.setup.download_child` is a plain program: Qt stays in its supervisor.
    script = (
        "import sys, app.setup.download_child\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(QT_LIBRARIES | MODEL_LIBRARIES)!r})))\n"
    )
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, env=python_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the download child pulled in: {result.stdout.strip()}"
