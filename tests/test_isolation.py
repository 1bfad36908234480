"""The suite never touches the user's folders: every per-user variable points into the session's
temporary folder before any fixture starts, and a run leaves a given HF_HUB_CACHE unchanged."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests import conftest
from tests.conftest import PYTHON, REPO_ROOT, TIMEOUT_SCALE


@pytest.fixture(scope="module")
def environment_seen_by_a_module_fixture() -> dict[str, str | None]:
    # Module-scoped fixtures (shared workers, bench results) start before function-scoped ones.
    return {name: os.environ.get(name) for name in [*conftest.USER_FOLDER_VARIABLES, "CUDA_VISIBLE_DEVICES"]}


def test_module_fixtures_already_see_isolated_user_folders(environment_seen_by_a_module_fixture):
    base = conftest.ISOLATED_BASE
    assert base is not None and base.is_dir()
    for name in conftest.USER_FOLDER_VARIABLES:
        value = environment_seen_by_a_module_fixture[name]
        assert value and Path(value).is_relative_to(base), f"{name}={value} is outside {base}"
        assert value != conftest.ORIGINAL_ENVIRONMENT[name]
    if not conftest.USE_GPU:
        assert environment_seen_by_a_module_fixture["CUDA_VISIBLE_DEVICES"] == ""
    for name in conftest.CREDENTIAL_VARIABLES:
        assert name not in os.environ


def test_each_test_gets_its_own_hugging_face_cache(isolated_home):
    # The hub cache variables win over HF_HOME: all three must point at this test's folder.
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        assert Path(os.environ[name]) == isolated_home / "hf" / "hub"


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.slow
def test_a_run_leaves_the_users_hub_cache_and_home_unchanged(tmp_path):
    """The tests that download into, and load from, a Hugging Face cache, run with the user's
    HF_HUB_CACHE, HOME and MPLCONFIGDIR pointing at folders of ours: nothing in them changes."""
    user = {name: tmp_path / name.lower() for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HOME", "MPLCONFIGDIR")}
    for folder in user.values():
        (folder / "models--someone--kept").mkdir(parents=True)
        (folder / "models--someone--kept" / "note").write_text("the user's own file")
    before = {name: _tree(folder) for name, folder in user.items()}
    env = {k: v for k, v in os.environ.items() if k not in conftest.USER_FOLDER_VARIABLES}
    env.update({name: str(folder) for name, folder in user.items()})
    env["PYTHONPATH"] = str(REPO_ROOT)
    tests = [
        "tests/setup/test_model_download.py::test_download_reports_progress_and_lands_in_the_hf_cache",
        "tests/setup/test_model_download.py::test_files_already_in_the_cache_are_reused",
        "tests/test_engine_worker.py::test_model_loads_by_hub_id_from_the_local_hugging_face_cache",
    ]
    proc = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600 * TIMEOUT_SCALE,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 passed" in proc.stdout, proc.stdout[-2000:]
    assert {name: _tree(folder) for name, folder in user.items()} == before
