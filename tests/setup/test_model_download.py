"""The model download against a local fake Hub: progress, cancel, resume, retries, verification, disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from app.setup.download import ModelDownload
from app.setup.download_child import TEST_RETRY_WAIT_ENV, RateMeter
from app.setup.download_events import DownloadProgress, format_bytes, format_duration
from app.setup.download_plan import TEST_DISK_FREE_ENV
from tests.conftest import timeout_ms
from tests.setup.conftest import REAL_MODEL_ID
from tests.setup.hub_server import COMMIT

WEIGHTS = "model.safetensors"


@pytest.fixture
def downloads(fake_hub):
    """Makes ModelDownloads against the fake Hub; stops any still running at the end."""
    made: list[ModelDownload] = []

    def make(**extra_env: str) -> ModelDownload:
        env = {TEST_RETRY_WAIT_ENV: "0.05", **extra_env}
        download = ModelDownload(REAL_MODEL_ID, endpoint=fake_hub.url, extra_env=env)
        made.append(download)
        return download

    yield make
    for download in made:
        download.shutdown()


def _storage(isolated_home) -> Path:
    return isolated_home / "hf" / "hub" / ("models--" + REAL_MODEL_ID.replace("/", "--"))


def _assert_same_files(snapshot: Path, source: Path) -> None:
    names = sorted(p.name for p in source.iterdir() if p.is_file())
    assert sorted(p.name for p in snapshot.iterdir()) == names
    for name in names:
        assert hashlib.sha256((snapshot / name).read_bytes()).digest() == hashlib.sha256((source / name).read_bytes()).digest()


def _partials(isolated_home) -> list[Path]:
    return sorted(_storage(isolated_home).rglob("*.incomplete"))


def _wait_for_bytes_of(qtbot, download: ModelDownload, name: str, at_least: int) -> DownloadProgress:
    seen: list[DownloadProgress] = []

    def check(progress: DownloadProgress) -> bool:
        seen.append(progress)
        return progress.file == name and progress.done_bytes >= at_least

    with qtbot.waitSignal(download.progressed, check_params_cb=check, timeout=timeout_ms(60)):
        pass
    return seen[-1]


def test_download_reports_progress_and_lands_in_the_hf_cache(fake_hub, downloads, tiny_model_dir, qtbot, isolated_home):
    fake_hub.faults.chunk_delay_s = 0.002
    download = downloads()
    progress: list[DownloadProgress] = []
    download.progressed.connect(progress.append)
    with qtbot.waitSignal(download.finished, timeout=timeout_ms(60)) as finished:
        download.start()
    snapshot = Path(finished.args[0])
    assert snapshot == _storage(isolated_home) / "snapshots" / COMMIT
    _assert_same_files(snapshot, tiny_model_dir)
    assert download.state == "done"

    done = [p.done_bytes for p in progress if p.stage == "downloading"]
    assert len(done) >= 3 and done == sorted(done)
    assert done[-1] == progress[-1].total_bytes == fake_hub.total_bytes
    assert any(p.rate_bps > 0 and p.eta_s is not None for p in progress)

    # huggingface_hub (and so the engine) finds it offline, as a normal cache entry.
    from huggingface_hub import snapshot_download

    cache = _storage(isolated_home).parent
    assert Path(snapshot_download(REAL_MODEL_ID, local_files_only=True, cache_dir=cache)) == snapshot
    assert (_storage(isolated_home) / "refs" / "main").read_text() == COMMIT
    # Nothing but the file list and the files themselves was asked for: no telemetry.
    assert {path.split("/")[1] for _, path, _ in fake_hub.requests} <= {"api", "google"}
    assert [p for _, p, _ in fake_hub.requests if p.startswith("/api/")] == [f"/api/models/{REAL_MODEL_ID}/revision/main"]


def test_files_already_in_the_cache_are_reused(fake_hub, downloads, qtbot):
    first = downloads()
    with qtbot.waitSignal(first.finished, timeout=timeout_ms(60)):
        first.start()
    fake_hub.requests.clear()
    again = downloads()
    with qtbot.waitSignal(again.planned, timeout=timeout_ms(60)) as planned, qtbot.waitSignal(
        again.finished, timeout=timeout_ms(60)
    ):
        again.start()
    assert planned.args[0].needed_bytes == 0
    assert planned.args[0].reused_files == len(fake_hub.files)
    assert fake_hub.gets_of(WEIGHTS) == []


def test_cancel_stops_the_download_and_removes_the_partial_file(fake_hub, downloads, qtbot, isolated_home):
    fake_hub.faults.chunk_delay_s = 0.02
    download = downloads()
    download.start()
    _wait_for_bytes_of(qtbot, download, WEIGHTS, 200_000)
    assert _partials(isolated_home)
    with qtbot.waitSignal(download.cancelled, timeout=timeout_ms(30)):
        download.cancel()
    assert download.state == "cancelled" and not download.is_running
    assert _partials(isolated_home) == []
    assert not (_storage(isolated_home) / "snapshots").exists()


def test_pause_then_resume_continues_with_a_range_request(fake_hub, downloads, tiny_model_dir, qtbot):
    fake_hub.faults.chunk_delay_s = 0.02
    download = downloads()
    download.start()
    _wait_for_bytes_of(qtbot, download, WEIGHTS, 200_000)
    with qtbot.waitSignal(download.paused, timeout=timeout_ms(30)):
        download.pause()
    assert download.state == "paused"
    fake_hub.faults.chunk_delay_s = 0.0
    with qtbot.waitSignal(download.finished, timeout=timeout_ms(60)) as finished:
        download.resume()
    _assert_same_files(Path(finished.args[0]), tiny_model_dir)
    first, second = fake_hub.gets_of(WEIGHTS)
    assert first is None and second.startswith("bytes=") and int(second[6:-1]) >= 200_000


def test_a_partial_file_is_resumed_after_the_app_restarts(fake_hub, downloads, tiny_model_dir, qtbot, isolated_home):
    fake_hub.faults.chunk_delay_s = 0.02
    before = downloads()
    before.start()
    _wait_for_bytes_of(qtbot, before, WEIGHTS, 300_000)
    # The app dies without a word to the download process: it is killed mid-file.
    with qtbot.waitSignal(before.failed, timeout=timeout_ms(30)):
        before._process.kill()
    (partial,) = _partials(isolated_home)
    kept = partial.stat().st_size
    assert kept >= 300_000

    fake_hub.faults.chunk_delay_s = 0.0
    after = downloads()  # a new app session
    with qtbot.waitSignal(after.planned, timeout=timeout_ms(60)) as planned, qtbot.waitSignal(
        after.finished, timeout=timeout_ms(60)
    ) as finished:
        after.start()
    assert planned.args[0].present_bytes >= kept
    _assert_same_files(Path(finished.args[0]), tiny_model_dir)
    assert fake_hub.gets_of(WEIGHTS)[-1] == f"bytes={kept}-"
    assert _partials(isolated_home) == []


def test_a_dropped_connection_is_retried_from_where_it_stopped(fake_hub, downloads, tiny_model_dir, qtbot):
    fake_hub.faults.drop_once[WEIGHTS] = 1_000_000
    download = downloads()
    stages: list[str] = []
    download.stage_changed.connect(lambda stage, message: stages.append(message))
    with qtbot.waitSignal(download.finished, timeout=timeout_ms(60)) as finished:
        download.start()
    _assert_same_files(Path(finished.args[0]), tiny_model_dir)
    assert fake_hub.gets_of(WEIGHTS) == [None, "bytes=1000000-"]
    assert any(message.startswith("Connection lost, retrying") for message in stages)


def test_a_server_that_ignores_range_still_gives_a_correct_file(fake_hub, downloads, tiny_model_dir, qtbot):
    fake_hub.faults.drop_once[WEIGHTS] = 500_000
    fake_hub.faults.ignore_range = True
    download = downloads()
    with qtbot.waitSignal(download.finished, timeout=timeout_ms(60)) as finished:
        download.start()
    _assert_same_files(Path(finished.args[0]), tiny_model_dir)


def test_a_corrupted_file_is_caught_by_verification(fake_hub, downloads, qtbot, isolated_home):
    fake_hub.faults.corrupt.add(WEIGHTS)
    download = downloads()
    with qtbot.waitSignal(download.failed, timeout=timeout_ms(60)) as failed:
        download.start()
    code, message = failed.args
    assert code == "corrupted"
    assert message.startswith("model.safetensors arrived damaged (its checksum does not match")
    blob = _storage(isolated_home) / "blobs" / fake_hub.files[WEIGHTS].sha256
    assert not blob.exists() and _partials(isolated_home) == []
    assert not (_storage(isolated_home) / "snapshots").exists()


def test_a_damaged_file_already_in_the_cache_is_caught(fake_hub, downloads, qtbot, isolated_home):
    first = downloads()
    with qtbot.waitSignal(first.finished, timeout=timeout_ms(60)):
        first.start()
    blob = _storage(isolated_home) / "blobs" / fake_hub.files[WEIGHTS].sha256
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))  # same size, new mtime: the record of the first check no longer holds
    again = downloads()
    with qtbot.waitSignal(again.failed, timeout=timeout_ms(60)) as failed:
        again.start()
    assert failed.args[0] == "corrupted" and "in the Hugging Face cache is damaged" in failed.args[1]
    assert not blob.exists()


def test_not_enough_disk_is_refused_before_anything_is_fetched(fake_hub, downloads, qtbot, isolated_home):
    download = downloads(**{TEST_DISK_FREE_ENV: "1000000"})
    with qtbot.waitSignal(download.failed, timeout=timeout_ms(60)) as failed:
        download.start()
    code, message = failed.args
    assert code == "not_enough_disk"
    assert message.startswith("Not enough free disk space: the download needs 2.3 MB more, but only 977 KB is free")
    assert [path for _, path, _ in fake_hub.requests if "/resolve/" in path] == []
    assert not (_storage(isolated_home) / "blobs").exists() or not any((_storage(isolated_home) / "blobs").iterdir())


def test_a_gated_model_asks_for_a_token(fake_hub, downloads, tiny_model_dir, qtbot):
    fake_hub.faults.token = "hf_secret"
    download = downloads()
    with qtbot.waitSignal(download.failed, timeout=timeout_ms(60)) as failed:
        download.start()
    assert failed.args[0] == "gated" and "access token" in failed.args[1]
    with qtbot.waitSignal(download.finished, timeout=timeout_ms(60)) as finished:
        download.start(token="hf_secret")
    _assert_same_files(Path(finished.args[0]), tiny_model_dir)


def test_gated_files_with_public_metadata_ask_for_a_token(fake_hub, downloads, qtbot):
    fake_hub.faults.token = "hf_secret"
    fake_hub.faults.gate_files_only = True
    download = downloads()
    with qtbot.waitSignal(download.failed, timeout=timeout_ms(60)) as failed:
        download.start(token="hf_wrong")
    assert failed.args[0] == "gated"


def test_other_weight_formats_are_not_fetched(tiny_model_dir, tmp_path, qtbot):
    import shutil

    from tests.setup.hub_server import FakeHub

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "repo"))
    (folder / "pytorch_model.bin").write_bytes(b"x" * 1000)
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.pt").write_bytes(b"y" * 1000)
    with FakeHub(REAL_MODEL_ID, folder, lifetime_s=60) as hub:
        download = ModelDownload(REAL_MODEL_ID, endpoint=hub.url)
        with qtbot.waitSignal(download.finished, timeout=timeout_ms(60)) as finished:
            download.start()
        download.shutdown()
    names = sorted(p.name for p in Path(finished.args[0]).iterdir())
    assert "pytorch_model.bin" not in names and "original" not in names
    assert "model.safetensors" in names


def test_one_download_at_a_time(fake_hub, downloads, qtbot):
    fake_hub.faults.chunk_delay_s = 0.02
    first = downloads()
    first.start()
    _wait_for_bytes_of(qtbot, first, WEIGHTS, 100_000)
    second = downloads()
    with qtbot.waitSignal(second.failed, timeout=timeout_ms(60)) as failed:
        second.start()
    assert failed.args[0] == "busy"
    with qtbot.waitSignal(first.paused, timeout=timeout_ms(30)):
        first.pause()


def test_no_hub_at_all_is_a_plain_network_error(qtbot):
    download = ModelDownload(REAL_MODEL_ID, endpoint="http://127.0.0.1:9")
    with qtbot.waitSignal(download.failed, timeout=timeout_ms(60)) as failed:
        download.start()
    assert failed.args[0] == "network"
    assert failed.args[1].startswith("Cannot reach Hugging Face")


def test_rate_meter_and_formatting():
    now = [0.0]
    meter = RateMeter(window_s=5, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 1
        meter.add(1_000_000)
    assert meter.rate() == pytest.approx(1_000_000)
    assert format_bytes(0) == "0 bytes"
    assert format_bytes(1536) == "1.5 KB"
    assert format_bytes(48.4 * 1024**3) == "48.4 GB"
    assert format_duration(59) == "59 s"
    assert format_duration(3 * 3600 + 120) == "3 h 02 min"
    progress = DownloadProgress("downloading", WEIGHTS, 1024**3, 48 * 1024**3, 30 * 1024**2, 1600.0)
    assert progress.describe() == "1.0 GB of 48.0 GB · 30.0 MB/s · 26 min 40 s left"
