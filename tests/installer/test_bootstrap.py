"""installer/bootstrap.py run for real, with the real uv, against tiny stand-in wheels and stand-ins
for nvidia-smi and the network: the install, the upgrade, the repair and every failure's exit code."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TIMEOUT_SCALE, tool_missing
from tests.installer import standins

BOOTSTRAP = REPO_ROOT / "installer" / "bootstrap.py"


def _find_uv() -> str | None:
    # The `test` extra installs uv into the environment that runs the tests, activated or not.
    try:
        from uv import find_uv_bin
    except ImportError:
        return shutil.which("uv")
    try:
        return find_uv_bin()
    except FileNotFoundError:
        return shutil.which("uv")


UV = _find_uv()


def _load_bootstrap():
    # installer/ is not a package: the installer runs bootstrap.py as a file, so load it as one.
    spec = importlib.util.spec_from_file_location("canvas_chat_installer_bootstrap", BOOTSTRAP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


bootstrap = _load_bootstrap()

# nvidia-smi rows in the order the engine asks for: index, name, compute_cap, driver, total and free MiB.
RTX_4090 = "0, NVIDIA GeForce RTX 4090, 8.9, 576.02, 24564, 23012"
GIB = 1024**3


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheelhouse")
    standins.build_wheelhouse(folder)
    return folder


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("payloads")
    return {
        "0.1.0": standins.build_payload(base / "v1", "0.1.0", ["tinydep==1.0", "oldlib==1.0"]),
        "0.2.0": standins.build_payload(base / "v2", "0.2.0", ["tinydep==1.1"]),
    }


@pytest.fixture
def install_root(tmp_path_factory) -> Path:
    # A short base keeps the folder under the Windows path limit the bootstrap enforces.
    return tmp_path_factory.mktemp("i")


class Bootstrap:
    """Runs bootstrap.py the way the installer does, with stand-ins swapped in."""

    def __init__(self, wheelhouse: Path, bin_dir: Path) -> None:
        self.wheelhouse = wheelhouse
        self.bin_dir = bin_dir
        self.env = dict(os.environ)
        self.env["PATH"] = os.pathsep.join([str(bin_dir), self.env.get("PATH", "")])
        self.env["CANVAS_CHAT_FAKE_CUDA"] = "1"
        self.env.pop("CANVAS_CHAT_SETUP_TEST_SKIP_DEPS", None)

    def gpu(self, *rows: str, exit_code: int = 0, stderr: str = "") -> None:
        standins.write_nvidia_smi(self.bin_dir, list(rows), exit_code, stderr)

    def run(self, install_dir: Path, payload: Path, *extra: str, network: str | None = None) -> subprocess.CompletedProcess:
        args = [
            sys.executable, str(BOOTSTRAP),
            "--install-dir", str(install_dir),
            "--payload-dir", str(payload),
            "--uv", UV,
            "--no-index", "--offline", "--find-links", str(self.wheelhouse),
            "--assume-free-bytes", str(50 * GIB),
        ]
        if network:
            args += ["--network-check", network]
        proc = subprocess.run(
            [*args, *extra],
            env=self.env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=180 * TIMEOUT_SCALE,
        )
        print(proc.stdout, proc.stderr)
        return proc


@pytest.fixture
def boot(wheelhouse, tmp_path) -> Bootstrap:
    """Every test that runs the bootstrap needs the real uv; the others do not."""
    if UV is None:
        tool_missing('uv missing: pip install -e ".[test]" installs it')
    runner = Bootstrap(wheelhouse, tmp_path / "bin")
    runner.gpu(RTX_4090)
    return runner


def env_python(install_dir: Path) -> Path:
    return install_dir / "env" / "bin" / "python"


def installed_versions(install_dir: Path) -> dict[str, str]:
    code = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    out = subprocess.run([str(env_python(install_dir)), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def state(install_dir: Path) -> dict:
    return json.loads((install_dir / "install-state.json").read_text(encoding="utf-8"))


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def assert_failed_before_downloading(proc, install_dir: Path, kind: str) -> None:
    assert proc.returncode == bootstrap.FAILURES[kind].code, proc.stdout
    assert bootstrap.FAILURES[kind].message in proc.stdout
    assert not (install_dir / "env").exists(), "a pre-check failure must stop before the environment is built"


def test_installs_into_a_folder_with_spaces_and_non_ascii(boot, install_root, payloads):
    install_dir = install_root / "Canvas Chät 測試 ünï"
    with standins.reachable_index() as index:
        proc = boot.run(install_dir, payloads["0.1.0"], network=index)
    assert proc.returncode == 0, proc.stdout
    # Live progress: every step numbered, in order, then the closing line.
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert [s.split("]")[0] + "]" for s in steps] == [f"[{n}/8]" for n in range(1, 9)]
    assert "Canvas Chat 0.1.0 is installed." in proc.stdout
    assert "NVIDIA GeForce RTX 4090" in proc.stdout
    versions = installed_versions(install_dir)
    assert versions["torch"] == "2.13.0+cu128"
    assert versions["canvas-chat"] == "0.1.0"
    assert (install_dir / "env" / "bin" / "canvas-chat").exists()
    assert (install_dir / "cache").is_dir(), "uv's cache lives in the install folder"
    recorded = state(install_dir)
    assert recorded["torch_variant"] == "cu128" and recorded["cuda_available"] is True
    assert not (install_dir / "finish-note.txt").exists()
    (log,) = (install_dir / "logs").glob("bootstrap-*.log")
    text = log.read_text(encoding="utf-8")
    assert "Canvas Chät 測試 ünï" in text and "[8/8] Verifying PyTorch and CUDA" in text
    assert "uv" in text and "torch==2.13.0+cu128" in text  # uv's own output is in the log too


def test_upgrade_in_place_keeps_user_data_and_drops_unpinned_packages(boot, install_root, payloads, isolated_home):
    install_dir = install_root / "CanvasChat"
    assert boot.run(install_dir, payloads["0.1.0"]).returncode == 0
    assert installed_versions(install_dir)["oldlib"] == "1.0"
    # User data lives in the platformdirs folders (CANVAS_CHAT_HOME in tests), never the install folder.
    user_data = isolated_home / "data"
    user_data.mkdir()
    (user_data / "chats.sqlite3").write_bytes(b"SQLite format 3\x00 chats")
    (user_data / "settings.json").write_text('{"schema": 1}', encoding="utf-8")
    before = tree_digest(isolated_home)

    proc = boot.run(install_dir, payloads["0.2.0"])
    assert proc.returncode == 0, proc.stdout
    assert "(upgrade)" in proc.stdout and "reusing" in proc.stdout
    versions = installed_versions(install_dir)
    assert versions["canvas-chat"] == "0.2.0"
    assert versions["tinydep"] == "1.1"
    assert "oldlib" not in versions, "a package the new pins dropped must leave the environment"
    assert state(install_dir)["app_version"] == "0.2.0"
    assert tree_digest(isolated_home) == before
    assert not any(install_dir.rglob("chats.sqlite3"))


def test_repair_rebuilds_the_environment(boot, install_root, payloads):
    install_dir = install_root / "CanvasChat"
    assert boot.run(install_dir, payloads["0.1.0"]).returncode == 0
    # Damage the install: the app's package is gone.
    shutil.rmtree(next((install_dir / "env").rglob("site-packages")) / "app")
    proc = boot.run(install_dir, payloads["0.1.0"], "--repair")
    assert proc.returncode == 0, proc.stdout
    assert "(repair)" in proc.stdout
    assert next((install_dir / "env").rglob("site-packages/app/__main__.py")).exists()


def test_no_nvidia_gpu_installs_the_cpu_build_and_says_the_demo_model_runs_on_the_cpu(boot, install_root, payloads):
    install_dir = install_root / "CanvasChat"
    proc = boot.run(install_dir, payloads["0.1.0"], "--nvidia-smi", str(install_root / "no-such-nvidia-smi"))
    assert proc.returncode == 0, proc.stdout
    assert "No NVIDIA RTX GPU found" in proc.stdout
    assert "demo model on the CPU" in proc.stdout
    assert installed_versions(install_dir)["torch"] == "2.13.0+cpu"
    assert state(install_dir)["torch_variant"] == "cpu"
    assert "demo model on the CPU" in (install_dir / "finish-note.txt").read_text(encoding="ascii")


def test_driver_that_cannot_talk_to_the_gpu_counts_as_no_gpu(boot, install_root, payloads):
    boot.gpu(exit_code=9, stderr="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    proc = boot.run(install_root / "CanvasChat", payloads["0.1.0"])
    assert proc.returncode == 0, proc.stdout
    assert "couldn't communicate with the NVIDIA driver" in proc.stdout and "on the CPU" in proc.stdout


def test_gpu_older_than_rtx_20_installs_the_cpu_build(boot, install_root, payloads):
    boot.gpu("0, NVIDIA GeForce GTX 1080, 6.1, 576.02, 8192, 8000")
    proc = boot.run(install_root / "CanvasChat", payloads["0.1.0"])
    assert proc.returncode == 0, proc.stdout
    assert "GTX 1080) is older than the RTX 20 series" in proc.stdout
    assert state(install_root / "CanvasChat")["torch_variant"] == "cpu"


def test_driver_too_old_for_cuda_12_8_stops_with_its_own_exit_code(boot, install_root, payloads):
    boot.gpu("0, NVIDIA GeForce RTX 3060, 8.6, 546.33, 12288, 12000")
    install_dir = install_root / "CanvasChat"
    proc = boot.run(install_dir, payloads["0.1.0"])
    assert_failed_before_downloading(proc, install_dir, "DRIVER_TOO_OLD")
    assert "546.33" in proc.stdout


def test_driver_too_old_to_report_compute_capability(boot, install_root, payloads):
    # nvidia-smi before 510 rejects the compute_cap field; the bootstrap asks again without it.
    script = boot.bin_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\ncase \"$*\" in *compute_cap*) echo 'Field \"compute_cap\" is not a valid field to query.'; exit 2;; esac\n"
        "echo '0, NVIDIA GeForce RTX 2080, 472.12, 8192, 7800'\n",
        encoding="utf-8",
    )
    install_dir = install_root / "CanvasChat"
    assert_failed_before_downloading(boot.run(install_dir, payloads["0.1.0"]), install_dir, "DRIVER_TOO_OLD")


def test_not_enough_disk_stops_with_its_own_exit_code(boot, install_root, payloads):
    install_dir = install_root / "CanvasChat"
    proc = boot.run(install_dir, payloads["0.1.0"], "--assume-free-bytes", str(3 * GIB))
    assert_failed_before_downloading(proc, install_dir, "NOT_ENOUGH_DISK")
    assert "3.0 GB free" in proc.stdout and "10.0 GB needed" in proc.stdout


def test_offline_stops_with_its_own_exit_code(boot, install_root, payloads):
    install_dir = install_root / "CanvasChat"
    proc = boot.run(install_dir, payloads["0.1.0"], network=standins.unreachable_url())
    assert_failed_before_downloading(proc, install_dir, "OFFLINE")


def test_install_folder_too_long_for_windows_is_refused(boot, install_root, payloads):
    install_dir = install_root / ("d" * (bootstrap.MAX_INSTALL_DIR_LENGTH + 1))
    proc = boot.run(install_dir, payloads["0.1.0"])
    assert proc.returncode == bootstrap.FAILURES["PATH_TOO_LONG"].code, proc.stdout
    assert "too long" in proc.stdout and not (install_dir / "env").exists()


def test_cuda_not_usable_after_install_has_its_own_exit_code(boot, install_root, payloads):
    boot.env["CANVAS_CHAT_FAKE_CUDA"] = "0"
    proc = boot.run(install_root / "CanvasChat", payloads["0.1.0"])
    assert proc.returncode == bootstrap.FAILURES["CUDA_UNAVAILABLE"].code, proc.stdout


def test_gpu_install_adds_triton_windows_and_goes_on_without_it(boot, install_root, payloads, tmp_path):
    payload = tmp_path / "payload"
    shutil.copytree(payloads["0.1.0"], payload)
    (payload / "requirements-triton-cu128.txt").write_text("triton-windows==3.7.1.post27\n", encoding="utf-8")
    # not downloadable: the app still installs, without the fused kernels, and says so
    proc = boot.run(install_root / "NoTriton", payload)
    assert proc.returncode == 0, proc.stdout
    assert "Triton was not installed" in proc.stdout
    assert "triton-windows" not in installed_versions(install_root / "NoTriton")
    wheelhouse = tmp_path / "wheelhouse"
    shutil.copytree(boot.wheelhouse, wheelhouse)
    standins.build_wheel(wheelhouse, "triton-windows", "3.7.1.post27", {"triton/__init__.py": ""})
    boot.wheelhouse = wheelhouse
    proc = boot.run(install_root / "WithTriton", payload)
    assert proc.returncode == 0, proc.stdout
    assert "Triton was not installed" not in proc.stdout
    assert installed_versions(install_root / "WithTriton")["triton-windows"] == "3.7.1.post27"


def test_torch_that_does_not_import_has_its_own_exit_code(boot, install_root, payloads):
    boot.env["CANVAS_CHAT_FAKE_TORCH"] = "broken"
    proc = boot.run(install_root / "CanvasChat", payloads["0.1.0"])
    assert proc.returncode == bootstrap.FAILURES["TORCH_BROKEN"].code, proc.stdout
    assert "DLL load failed" in proc.stdout


def test_torch_download_failure_has_its_own_exit_code(boot, install_root, payloads, tmp_path):
    empty = tmp_path / "empty-index"
    empty.mkdir()
    boot.wheelhouse = empty
    proc = boot.run(install_root / "CanvasChat", payloads["0.1.0"])
    assert proc.returncode == bootstrap.FAILURES["TORCH_INSTALL_FAILED"].code, proc.stdout


def test_missing_setup_files_have_their_own_exit_code(boot, install_root, tmp_path):
    proc = boot.run(install_root / "CanvasChat", tmp_path / "no-payload")
    assert proc.returncode == bootstrap.FAILURES["SETUP_FILES_MISSING"].code, proc.stdout


def test_test_only_skip_switch_runs_the_checks_but_installs_nothing(boot, install_root, payloads):
    boot.env["CANVAS_CHAT_SETUP_TEST_SKIP_DEPS"] = "1"
    install_dir = install_root / "CanvasChat"
    proc = boot.run(install_dir, payloads["0.1.0"])
    assert proc.returncode == 0, proc.stdout
    assert "TEST MODE" in proc.stdout and not (install_dir / "env").exists()
    assert state(install_dir)["skipped_dependencies"] is True


def test_exit_codes_are_distinct_and_the_installer_gets_every_message():
    codes = [kind.code for kind in bootstrap.FAILURE_KINDS]
    assert len(set(codes)) == len(codes) and 0 not in codes and 1 not in codes and 2 not in codes
    defines = bootstrap.nsis_defines()
    for kind in bootstrap.FAILURE_KINDS:
        assert f"!define EXIT_{kind.name} {kind.code}" in defines
        assert f"StrCmp ${{CODE}} {kind.code} 0 +2" in defines
    nsi = (REPO_ROOT / "installer" / "canvas-chat.nsi").read_text(encoding="utf-8")
    for name in {line.split("EXIT_")[1].split("}")[0] for line in nsi.splitlines() if "${EXIT_" in line}:
        assert name in bootstrap.FAILURES, f"canvas-chat.nsi uses an unknown exit code {name}"


def test_long_uv_steps_report_a_heartbeat_with_the_download_so_far(tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "HEARTBEAT_SECONDS", 0.05)
    slow_uv = tmp_path / "uv"
    cache = tmp_path / "cache"
    cache.mkdir()
    # A stand-in uv that "downloads" 3 MB into the cache over half a second.
    slow_uv.write_text(
        "#!/bin/sh\nfor i in 1 2 3; do head -c 1048576 /dev/zero > \"$UV_TEST_CACHE/part$i\"; sleep 0.2; done\necho done\n",
        encoding="utf-8",
    )
    slow_uv.chmod(0o755)
    reporter = bootstrap.Reporter(tmp_path / "log.txt", total_steps=1)
    try:
        runner = bootstrap.UvRunner(str(slow_uv), cache, reporter, {**os.environ, "UV_TEST_CACHE": str(cache)})
        assert runner.run(["pip", "install"], "TORCH_INSTALL_FAILED") == "done"
    finally:
        reporter.close()
    beats = [line for line in (tmp_path / "log.txt").read_text(encoding="utf-8").splitlines() if "still working" in line]
    assert beats and "MB downloaded" in beats[-1]
    assert any(" 2 MB" in line or " 3 MB" in line for line in beats)


def test_a_running_app_stops_the_upgrade_before_anything_changes(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()

    def locked(src, dst):
        raise PermissionError(32, "The process cannot access the file because it is being used by another process")

    monkeypatch.setattr(bootstrap.os, "rename", locked)
    with pytest.raises(bootstrap.InstallFailed) as failure:
        bootstrap.check_env_not_in_use(env_dir)
    assert failure.value.kind.code == bootstrap.FAILURES["APP_RUNNING"].code
    assert env_dir.is_dir()
