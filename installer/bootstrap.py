"""Canvas Chat's install bootstrap: checks the PC, builds the app's Python environment with uv, verifies torch.

The Windows installer runs this file with uv's managed Python; the "Repair Canvas Chat" shortcut runs it
again with --repair. Standard library only, so it runs before any package is installed.
Every outside dependency (uv, nvidia-smi, the package indexes, the network check, the free-disk
figure) can be swapped from the command line, so the same code is tested on Linux with the real uv.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

APP_NAME = "Canvas Chat"
APP_DIST = "canvas-chat"
PYTHON_VERSION = "3.12"

# cu128 wheels carry kernels for Turing (RTX 20, sm_75) up to Blackwell (RTX 50, sm_120).
MIN_COMPUTE_CAPABILITY = (7, 5)
# First drivers that ship CUDA 12.8 (CUDA 12.8 release notes, table 3).
MIN_DRIVER_FOR_CUDA_12_8 = {"win32": (570, 65), "linux": (570, 26)}
MIN_DRIVER_TEXT = {"win32": "570.65", "linux": "570.26"}

# Windows refuses paths over 260 characters unless long paths are enabled machine-wide, and
# Python then cannot import from them. The deepest file we create sits about 180 characters below
# the install folder (uv's cache entry for PySide6's QML plugins), so the folder itself must fit
# in the rest.
WINDOWS_MAX_PATH = 260
DEEPEST_PATH_BELOW_INSTALL_DIR = 180
MAX_INSTALL_DIR_LENGTH = WINDOWS_MAX_PATH - DEEPEST_PATH_BELOW_INSTALL_DIR

GIB = 1024**3
# A fresh install: the CUDA build of torch (~3 GB download, ~5 GB unpacked), PySide6, the rest.
FRESH_INSTALL_BYTES = {"cu128": 10 * GIB, "cpu": 3 * GIB}
# An upgrade or repair reuses uv's cache in the install folder, so it needs only the changes.
UPDATE_BYTES = 2 * GIB

DEFAULT_INDEX_URL = "https://pypi.org/simple"
DEFAULT_TORCH_INDEX_URL = "https://download.pytorch.org/whl/{variant}"
TORCH_VARIANT_TEXT = {"cu128": "CUDA 12.8 build, about 3 GB", "cpu": "CPU build, about 250 MB"}

LOG_FILES_KEPT = 10
HEARTBEAT_SECONDS = float(os.environ.get("CANVAS_CHAT_BOOTSTRAP_HEARTBEAT_S", "15"))
# Setup runs us without a console; without this flag each uv or python child would open a window.
NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)
# The engine's probe of this PC (nvidia-smi, standard library only): the installer build copies it
# beside this file, a checkout has it in engine/.
MACHINE_PROBE_PLACES = ("machine.py", "../engine/machine.py")


@dataclasses.dataclass(frozen=True)
class FailureKind:
    """One way an install can fail: its exit code and the plain message the installer shows."""

    name: str
    code: int
    message: str


FAILURE_KINDS = [
    FailureKind(
        "PATH_TOO_LONG",
        10,
        f"The install folder's path is too long for Windows (more than {MAX_INSTALL_DIR_LENGTH} "
        "characters). Choose a shorter folder, for example C:\\CanvasChat, and run Setup again.",
    ),
    FailureKind(
        "FOLDER_NOT_WRITABLE",
        11,
        "Setup cannot write to the install folder. Choose a folder inside your user profile and run Setup again.",
    ),
    FailureKind(
        "NOT_ENOUGH_DISK",
        12,
        "There is not enough free disk space on the install drive. Free up space or choose another drive, "
        "then run Setup again.",
    ),
    FailureKind(
        "DRIVER_TOO_OLD",
        13,
        "Your NVIDIA driver is too old for CUDA 12.8. Install driver 570 or newer (NVIDIA App or nvidia.com), "
        "then run 'Repair Canvas Chat' from the Start menu.",
    ),
    FailureKind(
        "OFFLINE",
        14,
        "Setup cannot reach the internet to download Python libraries (up to 3 GB). Check your connection, "
        "proxy or firewall, then run Setup again.",
    ),
    FailureKind(
        "SETUP_FILES_MISSING",
        15,
        "Setup's own files are missing or damaged. Download the installer again and run it.",
    ),
    FailureKind(
        "PYTHON_DOWNLOAD_FAILED",
        16,
        "Setup could not download Python. Check your internet connection, then run Setup again.",
    ),
    FailureKind(
        "ENVIRONMENT_FAILED",
        17,
        "Setup could not create Canvas Chat's Python environment. Run 'Repair Canvas Chat' from the Start menu.",
    ),
    FailureKind(
        "TORCH_INSTALL_FAILED",
        18,
        "Setup could not download or install PyTorch. Check your internet connection, then run "
        "'Repair Canvas Chat' from the Start menu.",
    ),
    FailureKind(
        "APP_INSTALL_FAILED",
        19,
        "Setup could not install Canvas Chat's libraries. If Canvas Chat is open, close it, then run "
        "'Repair Canvas Chat' from the Start menu.",
    ),
    FailureKind(
        "TORCH_BROKEN",
        20,
        "PyTorch was installed but does not start. Run 'Repair Canvas Chat' from the Start menu; if it "
        "fails again, send the install log to the developers.",
    ),
    FailureKind(
        "CUDA_UNAVAILABLE",
        21,
        "PyTorch cannot use your NVIDIA graphics card. Update the NVIDIA driver, restart Windows, then run "
        "'Repair Canvas Chat' from the Start menu.",
    ),
    FailureKind(
        "APP_RUNNING",
        22,
        "Canvas Chat is running. Close it (and its tray or console windows), then run Setup again.",
    ),
    FailureKind(
        "INTERNAL_ERROR",
        30,
        "Setup stopped on an unexpected error. Send the install log to the developers.",
    ),
]
FAILURES = {kind.name: kind for kind in FAILURE_KINDS}


class InstallFailed(Exception):
    """Raised by a step that cannot go on; carries which failure it is and what exactly happened."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = FAILURES[kind]
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU as nvidia-smi reports it."""

    name: str
    driver: tuple[int, ...]
    driver_text: str
    compute_capability: tuple[int, int] | None

    @property
    def is_rtx20_or_newer(self) -> bool:
        if self.compute_capability is not None:
            return self.compute_capability >= MIN_COMPUTE_CAPABILITY
        # nvidia-smi before 510 cannot report compute_cap; judge by the marketing name.
        return bool(re.search(r"RTX", self.name, re.IGNORECASE))


@dataclasses.dataclass(frozen=True)
class GpuCheck:
    """What the graphics-card check found: the torch build to install and what to tell the user."""

    variant: str  # "cu128" or "cpu"
    gpu: Gpu | None
    note: str


# ---------------------------------------------------------------------------------------------
# Output: live lines for the installer page, the same lines (and uv's) in a UTF-8 log.


class Reporter:
    """Prints progress lines as they happen and copies every line into the UTF-8 install log."""

    def __init__(self, log_path: Path, total_steps: int) -> None:
        self.log_path = log_path
        self.total_steps = total_steps
        self.step_no = 0
        self._lock = threading.Lock()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", encoding="utf-8", newline="\n")

    def close(self) -> None:
        self._log.close()

    def line(self, text: str, *, to_screen: bool = True) -> None:
        with self._lock:
            stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            self._log.write(f"{stamp} {text}\n")
            self._log.flush()
            if to_screen:
                print(text, flush=True)

    def step(self, text: str) -> None:
        self.step_no += 1
        self.line(f"[{self.step_no}/{self.total_steps}] {text}")


def _configure_stdout() -> None:
    # The NSIS page decodes our pipe in the ANSI code page; a character it lacks must not crash us.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace", line_buffering=True)


def _rotate_logs(log_dir: Path) -> None:
    logs = sorted(log_dir.glob("bootstrap-*.log"))
    for old in logs[: max(0, len(logs) - (LOG_FILES_KEPT - 1))]:
        try:
            old.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# Checks before downloading gigabytes.


def check_install_dir(install_dir: Path) -> None:
    text = str(install_dir)
    # Windows counts UTF-16 code units; a character outside the BMP takes two.
    length = len(text.encode("utf-16-le")) // 2
    if length > MAX_INSTALL_DIR_LENGTH:
        raise InstallFailed(
            "PATH_TOO_LONG",
            f"install folder is {length} characters long; at most {MAX_INSTALL_DIR_LENGTH} fit under "
            f"Windows' {WINDOWS_MAX_PATH}-character path limit: {text}",
        )
    try:
        install_dir.mkdir(parents=True, exist_ok=True)
        probe = install_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise InstallFailed("FOLDER_NOT_WRITABLE", f"cannot write to {text}: {exc}") from exc


def free_bytes_at(path: Path) -> int:
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_env_not_in_use(env_dir: Path) -> None:
    """Windows cannot rename a folder while a program runs from it: a running app would make uv
    fail halfway through replacing its files, so stop before touching anything."""
    if not env_dir.exists():
        return
    probe = env_dir.with_name(env_dir.name + ".in-use-check")
    try:
        os.rename(env_dir, probe)
    except OSError as exc:
        raise InstallFailed("APP_RUNNING", f"cannot move {env_dir} aside: {exc}") from exc
    os.rename(probe, env_dir)


def check_disk(install_dir: Path, needed: int, assume_free: int | None) -> int:
    free = assume_free if assume_free is not None else free_bytes_at(install_dir)
    if free < needed:
        raise InstallFailed(
            "NOT_ENOUGH_DISK",
            f"{free / GIB:.1f} GB free on the install drive, {needed / GIB:.1f} GB needed",
        )
    return free


def _parse_driver(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def _parse_capability(text: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _machine_probe():
    here = Path(__file__).resolve().parent
    for place in MACHINE_PROBE_PLACES:
        path = here / place
        if path.is_file():
            spec = importlib.util.spec_from_file_location("canvas_chat_machine", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise InstallFailed("SETUP_FILES_MISSING", f"machine.py is missing beside {Path(__file__).name}")


def query_gpus(nvidia_smi: str) -> tuple[list[Gpu], str]:
    """Runs nvidia-smi (through the engine's own parser); returns the GPUs found and, when there are none, why."""
    machine = _machine_probe()
    problems: list[str] = []
    found = machine.query_nvidia_smi(problems, exe=nvidia_smi, timeout_s=60)
    if problems:
        return [], problems[0]
    if not found:
        if machine.nvidia_smi_path(nvidia_smi) is None:
            return [], "nvidia-smi was not found (no NVIDIA driver installed)"
        return [], "nvidia-smi listed no GPU"
    return [
        Gpu(
            name=gpu["name"],
            driver=_parse_driver(gpu["driver_version"] or ""),
            driver_text=gpu["driver_version"] or "",
            compute_capability=_parse_capability(gpu["compute_capability"] or ""),
        )
        for gpu in found
    ], ""


def check_gpu(nvidia_smi: str, forced_variant: str) -> GpuCheck:
    gpus, why_none = query_gpus(nvidia_smi)
    capable = [gpu for gpu in gpus if gpu.is_rtx20_or_newer]
    cpu_note = "Canvas Chat will run its built-in demo model on the CPU."
    if not capable:
        if gpus:
            names = ", ".join(gpu.name for gpu in gpus)
            note = f"Your NVIDIA GPU ({names}) is older than the RTX 20 series. {cpu_note}"
        else:
            note = f"No NVIDIA RTX GPU found ({why_none}). {cpu_note}"
        return GpuCheck("cu128" if forced_variant == "cu128" else "cpu", None, note)
    best = max(capable, key=lambda gpu: (gpu.compute_capability or (0, 0), gpu.name))
    platform = "win32" if sys.platform == "win32" else "linux"
    if best.driver < MIN_DRIVER_FOR_CUDA_12_8[platform] and forced_variant != "cpu":
        raise InstallFailed(
            "DRIVER_TOO_OLD",
            f"{best.name} has NVIDIA driver {best.driver_text}; CUDA 12.8 needs "
            f"{MIN_DRIVER_TEXT[platform]} or newer",
        )
    if forced_variant == "cpu":
        return GpuCheck("cpu", best, f"Found {best.name}, but the CPU build was requested. {cpu_note}")
    return GpuCheck("cu128", best, f"Found {best.name} (driver {best.driver_text}): installing the CUDA 12.8 build.")


def check_network(urls: list[str], timeout: float) -> None:
    errors = []
    for url in urls:
        try:
            request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "canvas-chat-setup"})
            with urllib.request.urlopen(request, timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered; the network works
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError):
                # A TLS-inspecting proxy answered: the network works; uv uses the system
                # certificates (UV_SYSTEM_CERTS) and will report its own error if it must.
                continue
            errors.append(f"{url}: {reason}")
    if errors:
        raise InstallFailed("OFFLINE", "cannot reach " + "; ".join(errors))


# ---------------------------------------------------------------------------------------------
# Running uv.


def _tree_size(path: Path) -> int:
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        else:
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        pass
        except OSError:
            pass
    return total


class UvRunner:
    """Runs uv commands, streaming their output into the report, with a heartbeat during long steps."""

    def __init__(self, uv: str, cache_dir: Path, reporter: Reporter, env: dict[str, str]) -> None:
        self.uv = uv
        self.cache_dir = cache_dir
        self.reporter = reporter
        self.env = env

    def run(self, args: list[str], failure: str, *, echo: bool = True) -> str:
        command = [self.uv, *args]
        self.reporter.line("$ " + subprocess.list2cmdline(command), to_screen=False)
        started = time.monotonic()
        cache_before = _tree_size(self.cache_dir)
        try:
            proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                creationflags=NO_WINDOW,
            )
        except OSError as exc:
            raise InstallFailed(failure, f"cannot start uv ({self.uv}): {exc}") from exc
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(HEARTBEAT_SECONDS):
                grown = max(0, _tree_size(self.cache_dir) - cache_before)
                elapsed = int(time.monotonic() - started)
                self.reporter.line(
                    f"      ... still working ({elapsed // 60}m{elapsed % 60:02d}s, "
                    f"{grown / 1024**2:,.0f} MB downloaded and unpacked so far)"
                )

        beat = threading.Thread(target=heartbeat, name="uv-heartbeat", daemon=True)
        beat.start()
        output = []
        try:
            with proc:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    text = raw.decode("utf-8", errors="replace").rstrip()
                    if text:
                        output.append(text)
                        self.reporter.line("      " + text, to_screen=echo)
            code = proc.returncode
        finally:
            done.set()
            beat.join()
        if code != 0:
            tail = " | ".join(output[-5:])
            raise InstallFailed(failure, f"uv {args[0]} {args[1] if len(args) > 1 else ''} exited {code}: {tail}")
        return "\n".join(output)


# ---------------------------------------------------------------------------------------------
# The install itself.


def env_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def app_launcher(env_dir: Path) -> Path:
    return env_dir / ("Scripts/canvas-chat.exe" if os.name == "nt" else "bin/canvas-chat")


def _python_version_of(python: Path) -> str | None:
    try:
        proc = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=120,
            creationflags=NO_WINDOW,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def find_app_wheel(payload_dir: Path) -> Path:
    wheels = sorted(payload_dir.glob("canvas_chat-*.whl"))
    if len(wheels) != 1:
        raise InstallFailed(
            "SETUP_FILES_MISSING", f"expected one canvas_chat wheel in {payload_dir}, found {len(wheels)}"
        )
    return wheels[0]


def _pinned_names(requirement_files: list[Path]) -> set[str]:
    names = set()
    for path in requirement_files:
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==", line)
            if match:
                names.add(_normalize(match.group(1)))
    return names


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


VERIFY_CODE = r"""
import json, sys
report = {"python": sys.version.split()[0]}
try:
    import torch
except Exception as exc:
    report["import_error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(report)); sys.exit(0)
report["torch"] = torch.__version__
report["cuda_build"] = getattr(torch.version, "cuda", None)
try:
    report["cuda_available"] = bool(torch.cuda.is_available())
    if report["cuda_available"]:
        report["device"] = torch.cuda.get_device_name(0)
        report["capability"] = list(torch.cuda.get_device_capability(0))
        # A kernel launch proves this build carries code for this GPU's architecture.
        report["kernel_ok"] = float((torch.ones(4, device="cuda") * 2).sum().item()) == 8.0
except Exception as exc:
    report["cuda_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report))
"""


def verify_torch(python: Path, variant: str, reporter: Reporter) -> dict:
    try:
        proc = subprocess.run(
            [str(python), "-c", VERIFY_CODE],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=900,  # the first torch import on Windows is slow while antivirus scans the DLLs
            creationflags=NO_WINDOW,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallFailed("TORCH_BROKEN", f"could not run the environment's Python: {exc}") from exc
    for text in proc.stderr.splitlines():
        reporter.line("      " + text, to_screen=False)
    lines = proc.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise InstallFailed("TORCH_BROKEN", f"verification printed no report (exit {proc.returncode})") from exc
    reporter.line("      " + json.dumps(report), to_screen=False)
    if "import_error" in report:
        raise InstallFailed("TORCH_BROKEN", f"import torch failed: {report['import_error']}")
    if variant == "cu128":
        if not report.get("cuda_available") or not report.get("kernel_ok"):
            why = report.get("cuda_error", "torch.cuda.is_available() is False")
            raise InstallFailed("CUDA_UNAVAILABLE", f"torch {report.get('torch')} cannot use CUDA: {why}")
    return report


@dataclasses.dataclass
class Options:
    install_dir: Path
    payload_dir: Path
    uv: str
    nvidia_smi: str
    python: str
    cache_dir: Path
    index_url: str
    torch_index_url: str
    find_links: list[str]
    no_index: bool
    offline: bool
    network_check: list[str]
    no_network_check: bool
    network_timeout: float
    assume_free_bytes: int | None
    torch_variant: str
    repair: bool
    skip_deps: bool
    log_file: Path | None


def install(opts: Options, reporter: Reporter) -> dict:
    install_dir = opts.install_dir
    env_dir = install_dir / "env"
    upgrading = env_python(env_dir).exists()
    mode = "repair" if opts.repair else ("upgrade" if upgrading else "fresh install")
    reporter.line(f"{APP_NAME} setup ({mode}) into {install_dir}")

    reporter.step("Checking the install folder")
    check_install_dir(install_dir)
    check_env_not_in_use(env_dir)
    wheel = find_app_wheel(opts.payload_dir)
    app_version = wheel.name.split("-")[1]
    pins = opts.payload_dir / "requirements.txt"
    if not pins.is_file():
        raise InstallFailed("SETUP_FILES_MISSING", f"missing {pins}")
    if not opts.skip_deps and shutil.which(opts.uv) is None and not Path(opts.uv).is_file():
        raise InstallFailed("SETUP_FILES_MISSING", f"uv not found at {opts.uv}")

    reporter.step("Checking the graphics card")
    gpu = check_gpu(opts.nvidia_smi, opts.torch_variant)
    reporter.line("      " + gpu.note)
    torch_pins = opts.payload_dir / f"requirements-torch-{gpu.variant}.txt"
    if not torch_pins.is_file():
        raise InstallFailed("SETUP_FILES_MISSING", f"missing {torch_pins}")

    reporter.step("Checking free disk space")
    needed = UPDATE_BYTES if upgrading and not opts.repair else FRESH_INSTALL_BYTES[gpu.variant]
    free = check_disk(install_dir, needed, opts.assume_free_bytes)
    reporter.line(f"      {free / GIB:.1f} GB free, {needed / GIB:.1f} GB needed")

    reporter.step("Checking the internet connection")
    torch_index = opts.torch_index_url.format(variant=gpu.variant)
    urls = list(opts.network_check)
    if not urls and not (opts.offline or opts.no_index):
        urls = [opts.index_url.rstrip("/") + "/", torch_index.rstrip("/") + "/"]
    if opts.no_network_check or not urls:
        reporter.line("      skipped (installing from local files)")
    else:
        check_network(urls, opts.network_timeout)
        reporter.line("      reached " + ", ".join(urls))

    state = {
        "app_version": app_version,
        "torch_variant": gpu.variant,
        "gpu": gpu.gpu.name if gpu.gpu else None,
        "driver": gpu.gpu.driver_text if gpu.gpu else None,
        "note": gpu.note,
        "mode": mode,
        "installed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if opts.skip_deps:
        reporter.line("TEST MODE: skipping the Python environment, the downloads and the verification")
        state["skipped_dependencies"] = True
        return state

    uv_env = dict(os.environ)
    uv_env.update(
        {
            "UV_NO_CONFIG": "1",  # a user's uv.toml must not redirect our install
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_CACHE_DIR": str(opts.cache_dir),
            "UV_SYSTEM_CERTS": "1",  # trust what Windows trusts (corporate proxies)
            "NO_COLOR": "1",
        }
    )
    for name in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS"):
        uv_env.pop(name, None)
    uv = UvRunner(opts.uv, opts.cache_dir, reporter, uv_env)
    common = ["--no-progress", "--color", "never", "--cache-dir", str(opts.cache_dir)]
    source = [f"--find-links={link}" for link in opts.find_links]
    if opts.no_index:
        source.append("--no-index")
    if opts.offline:
        source.append("--offline")

    reporter.step("Creating the Python environment")
    python = env_python(env_dir)
    wanted = _python_version_of(Path(opts.python))
    if wanted is None:
        raise InstallFailed("ENVIRONMENT_FAILED", f"the base Python does not run: {opts.python}")
    if opts.repair or _python_version_of(python) != wanted:
        uv.run(["venv", *common, "--clear", "--python", opts.python, str(env_dir)], "ENVIRONMENT_FAILED")
    else:
        reporter.line(f"      reusing {env_dir} (Python {wanted})")

    reinstall = ["--reinstall"] if opts.repair else []
    reporter.step(f"Installing PyTorch ({TORCH_VARIANT_TEXT[gpu.variant]})")
    uv.run(
        ["pip", "install", *common, "--python", str(python), "--no-deps", *reinstall,
         "--index-url", torch_index, *source, "-r", str(torch_pins)],
        "TORCH_INSTALL_FAILED",
    )
    # Triton for the fused 4-bit kernels (engine/kernels): Windows gets it as triton-windows from
    # PyPI, matching the Triton line this torch was built with. Optional: without it the app uses
    # the slower dequantize-then-matmul path, so a failed download does not stop the install.
    triton_pins = opts.payload_dir / f"requirements-triton-{gpu.variant}.txt"
    if triton_pins.is_file():
        try:
            uv.run(
                ["pip", "install", *common, "--python", str(python), "--no-deps", *reinstall,
                 "--index-url", opts.index_url, *source, "-r", str(triton_pins)],
                "TORCH_INSTALL_FAILED",
            )
        except InstallFailed as exc:
            reporter.line(f"      Triton was not installed ({exc.detail}); 4-bit models will run without the fused kernels")

    reporter.step(f"Installing {APP_NAME} {app_version} and its libraries")
    uv.run(
        ["pip", "install", *common, "--python", str(python), "--no-deps", *reinstall,
         "--reinstall-package", APP_DIST, "--index-url", opts.index_url, *source, "-r", str(pins), str(wheel)],
        "APP_INSTALL_FAILED",
    )
    kept_pins = [pins, torch_pins] + ([triton_pins] if triton_pins.is_file() else [])
    _remove_stale_packages(uv, common, python, {APP_DIST} | _pinned_names(kept_pins))
    uv.run(["pip", "check", *common, "--python", str(python)], "APP_INSTALL_FAILED")
    if not app_launcher(env_dir).exists():
        raise InstallFailed("APP_INSTALL_FAILED", f"the app launcher is missing: {app_launcher(env_dir)}")

    reporter.step("Verifying PyTorch" + (" and CUDA" if gpu.variant == "cu128" else ""))
    report = verify_torch(python, gpu.variant, reporter)
    if report.get("cuda_available"):
        reporter.line(f"      torch {report['torch']} sees {report.get('device')} (CUDA {report.get('cuda_build')})")
    else:
        reporter.line(f"      torch {report['torch']} works (CPU)")
    state["torch"] = report.get("torch")
    state["cuda_available"] = bool(report.get("cuda_available"))
    return state


def _remove_stale_packages(uv: UvRunner, common: list[str], python: Path, wanted: set[str]) -> None:
    """After an upgrade, drops packages that the new pins no longer list, so the env is exactly the pins."""
    listing = uv.run(["pip", "list", *common, "--python", str(python), "--format", "json"], "APP_INSTALL_FAILED", echo=False)
    match = re.search(r"\[.*\]", listing, re.DOTALL)
    installed = {_normalize(item["name"]) for item in json.loads(match.group(0))} if match else set()
    stale = sorted(installed - wanted)
    if stale:
        uv.run(["pip", "uninstall", *common, "--python", str(python), *stale], "APP_INSTALL_FAILED")


def write_state(install_dir: Path, state: dict) -> None:
    (install_dir / "install-state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    # The installer shows this note in a message box after a successful install (ASCII: NSIS reads
    # it with FileRead, which decodes the ANSI code page).
    note_file = install_dir / "finish-note.txt"
    if state.get("torch_variant") == "cpu":
        note_file.write_text(state["note"].encode("ascii", "replace").decode("ascii") + "\r\n", encoding="ascii")
    elif note_file.exists():
        note_file.unlink()


# ---------------------------------------------------------------------------------------------
# Command line.


def nsis_defines() -> str:
    """The exit codes and messages as NSIS code, so the installer and this script share one table."""

    def nsis_string(text: str) -> str:
        return text.replace("$", "$$").replace('"', '$\\"')

    out = [
        "; Generated by installer/bootstrap.py --print-nsis-defines. Do not edit.",
        f"!define BOOTSTRAP_MAX_INSTALL_DIR_LENGTH {MAX_INSTALL_DIR_LENGTH}",
        f'!define BOOTSTRAP_PYTHON_VERSION "{PYTHON_VERSION}"',
    ]
    for kind in FAILURE_KINDS:
        out.append(f"!define EXIT_{kind.name} {kind.code}")
    out.append("!macro BOOTSTRAP_MESSAGE CODE OUTVAR")
    out.append('  StrCpy ${OUTVAR} "Setup failed (exit code ${CODE})."')
    for kind in FAILURE_KINDS:
        out.append(f'  StrCmp ${{CODE}} {kind.code} 0 +2')
        out.append(f'    StrCpy ${{OUTVAR}} "{nsis_string(kind.message)}"')
    out.append("!macroend")
    return "\n".join(out) + "\n"


def parse_args(argv: list[str]) -> Options:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--install-dir", type=Path, default=here, help="the install folder (default: this file's folder)")
    parser.add_argument("--payload-dir", type=Path, help="folder with the app wheel and pins (default: INSTALL_DIR/payload)")
    parser.add_argument("--uv", default=os.environ.get("CANVAS_CHAT_UV"), help="uv executable (default: INSTALL_DIR/uv/uv.exe)")
    parser.add_argument("--nvidia-smi", default=os.environ.get("CANVAS_CHAT_NVIDIA_SMI", "nvidia-smi"))
    parser.add_argument("--python", default=sys.executable, help="base interpreter of the environment")
    parser.add_argument("--cache-dir", type=Path, help="uv cache (default: INSTALL_DIR/cache)")
    parser.add_argument("--index-url", default=DEFAULT_INDEX_URL)
    parser.add_argument("--torch-index-url", default=DEFAULT_TORCH_INDEX_URL, help="{variant} becomes cu128 or cpu")
    parser.add_argument("--find-links", action="append", default=[], help="extra wheel folder (repeatable)")
    parser.add_argument("--no-index", action="store_true", help="use only --find-links")
    parser.add_argument("--offline", action="store_true", help="uv must not touch the network")
    parser.add_argument(
        "--network-check",
        action="append",
        default=[u for u in os.environ.get("CANVAS_CHAT_NETWORK_CHECK", "").split() if u],
        help="URL that must answer before downloading (repeatable; default: the two indexes)",
    )
    parser.add_argument("--no-network-check", action="store_true")
    parser.add_argument("--network-timeout", type=float, default=15.0)
    parser.add_argument(
        "--assume-free-bytes",
        type=int,
        default=int(os.environ["CANVAS_CHAT_ASSUME_FREE_BYTES"]) if os.environ.get("CANVAS_CHAT_ASSUME_FREE_BYTES") else None,
        help="test/diagnostic: use this instead of the drive's free space",
    )
    parser.add_argument("--torch-variant", choices=["auto", "cu128", "cpu"], default="auto")
    parser.add_argument("--repair", action="store_true", help="rebuild the environment from scratch")
    parser.add_argument(
        "--skip-deps",
        action="store_true",
        default=os.environ.get("CANVAS_CHAT_SETUP_TEST_SKIP_DEPS") == "1",
        help="TEST ONLY: run the checks but skip the environment, downloads and verification",
    )
    parser.add_argument("--log-file", type=Path)
    parser.add_argument("--print-nsis-defines", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.print_nsis_defines:
        sys.stdout.write(nsis_defines())
        raise SystemExit(0)
    install_dir = args.install_dir.absolute()
    return Options(
        install_dir=install_dir,
        payload_dir=(args.payload_dir or install_dir / "payload").absolute(),
        uv=args.uv or str(install_dir / "uv" / ("uv.exe" if os.name == "nt" else "uv")),
        nvidia_smi=args.nvidia_smi,
        python=args.python,
        cache_dir=(args.cache_dir or install_dir / "cache").absolute(),
        index_url=args.index_url,
        torch_index_url=args.torch_index_url,
        find_links=args.find_links,
        no_index=args.no_index,
        offline=args.offline,
        network_check=args.network_check,
        no_network_check=args.no_network_check,
        network_timeout=args.network_timeout,
        assume_free_bytes=args.assume_free_bytes,
        torch_variant=args.torch_variant,
        repair=args.repair,
        skip_deps=args.skip_deps,
        log_file=args.log_file,
    )


def main(argv: list[str] | None = None) -> int:
    _configure_stdout()
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = opts.install_dir / "logs"
    try:
        if opts.log_file is None:
            log_dir.mkdir(parents=True, exist_ok=True)
            _rotate_logs(log_dir)
        log_path = opts.log_file or log_dir / f"bootstrap-{stamp}.log"
        reporter = Reporter(log_path, total_steps=4 if opts.skip_deps else 8)
    except OSError as exc:
        kind = FAILURES["PATH_TOO_LONG" if len(str(opts.install_dir)) > MAX_INSTALL_DIR_LENGTH else "FOLDER_NOT_WRITABLE"]
        print(f"ERROR: {kind.message}\n       ({exc})", flush=True)
        return kind.code
    try:
        state = install(opts, reporter)
        write_state(opts.install_dir, state)
        reporter.line(f"{APP_NAME} {state['app_version']} is installed.")
        if state["torch_variant"] == "cpu":
            reporter.line(state["note"])
        reporter.line(f"Install log: {log_path}")
        return 0
    except InstallFailed as failure:
        reporter.line(f"ERROR: {failure.kind.message}")
        reporter.line(f"       ({failure.detail})")
        reporter.line(f"Install log: {log_path}")
        return failure.kind.code
    except Exception as exc:  # the installer must show a message and a log, never a bare traceback
        import traceback

        reporter.line(traceback.format_exc(), to_screen=False)
        kind = FAILURES["INTERNAL_ERROR"]
        reporter.line(f"ERROR: {kind.message}")
        reporter.line(f"       ({type(exc).__name__}: {exc})")
        reporter.line(f"Install log: {log_path}")
        return kind.code
    finally:
        reporter.close()


if __name__ == "__main__":
    sys.exit(main())
