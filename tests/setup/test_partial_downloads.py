"""Partial downloads left in the Hugging Face cache: found with their size, cleaned on request,
and a download in progress (it holds its lock) is never touched."""

from __future__ import annotations

import os

import pytest
from filelock import FileLock
from PySide6.QtWidgets import QMessageBox

from app.setup.download import ModelDownload
from app.setup.dialog import ModelSetupDialog
from engine.hub_cache import find_partial_downloads, remove_partial_downloads
from tests.setup.conftest import REAL_MODEL_ID
from tests.setup.test_model_setup import _report

GIB = 1024**3
OTHER_REPO = "models--someone--other-model"


def _partial(cache, repo_folder: str, name: str, size: int):
    path = cache / repo_folder / "blobs" / f"{name}.incomplete"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(size)  # sparse: the size a user would see, no disk used
    return path


@pytest.fixture
def cache(isolated_home):
    """The cache the app uses (HF_HOME points into the test home): two orphaned partials, a
    finished blob, a partial of a running huggingface_hub download and one of our running downloader."""
    cache = isolated_home / "hf" / "hub"
    ours = "models--" + REAL_MODEL_ID.replace("/", "--")
    orphans = [_partial(cache, ours, "aaa", GIB), _partial(cache, OTHER_REPO, "bbb", GIB // 2)]
    (cache / ours / "blobs" / "done-blob").write_bytes(b"complete file")
    hub_running = _partial(cache, OTHER_REPO, "ccc", 3 * GIB)
    ours_running = _partial(cache, "models--someone--downloading-now", "ddd", 5 * GIB)
    (cache / ".locks" / OTHER_REPO).mkdir(parents=True)
    (cache / ".locks" / "models--someone--downloading-now").mkdir(parents=True)
    # The locks a running download holds: huggingface_hub's per file, ours per repository.
    locks = [
        FileLock(str(cache / ".locks" / OTHER_REPO / "ccc.lock")),
        FileLock(str(cache / ".locks" / "models--someone--downloading-now" / "canvas-chat-download.lock")),
    ]
    for lock in locks:
        lock.acquire(timeout=0)
    yield cache, orphans, [hub_running, ours_running]
    for lock in locks:
        lock.release()


def test_orphaned_partials_are_found_and_removed_but_running_downloads_are_left_alone(cache):
    cache_dir, orphans, running = cache
    found = find_partial_downloads(cache_dir)
    assert sorted(p.path for p in found) == sorted(orphans)
    assert sum(p.size for p in found) == GIB + GIB // 2
    cleanup = remove_partial_downloads(cache_dir)
    assert (cleanup.removed, cleanup.freed_bytes, cleanup.failed) == (2, GIB + GIB // 2, [])
    assert not any(path.exists() for path in orphans)
    assert all(path.exists() for path in running)
    assert (cache_dir / ("models--" + REAL_MODEL_ID.replace("/", "--")) / "blobs" / "done-blob").exists()
    assert find_partial_downloads(cache_dir) == []


def test_an_empty_or_missing_cache_has_no_partials(tmp_path):
    assert find_partial_downloads(tmp_path / "nowhere") == []
    assert remove_partial_downloads(tmp_path / "nowhere").removed == 0


def test_the_setup_screen_shows_the_partials_and_cleans_them_after_a_confirmation(qtbot, cache, monkeypatch):
    cache_dir, orphans, running = cache
    dialog = ModelSetupDialog(report=_report(24), download=ModelDownload(REAL_MODEL_ID))
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.partials_label.isVisible() and dialog.clean_partials_button.isEnabled()
    assert dialog.partials_label.text().startswith("2 partial downloads, 1.5 GB")
    asked = []

    def answer(choice):
        def question(parent, title, text, *args):
            asked.append(text)
            return choice

        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Cancel))
    dialog.clean_partials_button.click()
    assert "Delete 2 partial download files (1.5 GB)" in asked[-1]
    assert all(path.exists() for path in orphans), "cleaned without the user's yes"
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.Yes))
    dialog.clean_partials_button.click()
    assert not any(path.exists() for path in orphans)
    assert all(path.exists() for path in running)
    assert dialog.download_status.text() == "Removed 2 partial download files, freeing 1.5 GB."
    assert not dialog.partials_label.isVisible() and not dialog.clean_partials_button.isVisible()
    dialog.shutdown()
