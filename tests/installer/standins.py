"""Stand-ins for what the bootstrap meets on a user's PC: tiny wheels, nvidia-smi and the network."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import socket
import threading
import zipfile
from pathlib import Path

# A torch that imports in milliseconds and answers the bootstrap's verification like the real one.
# CANVAS_CHAT_FAKE_CUDA=1 makes CUDA "available"; CANVAS_CHAT_FAKE_TORCH=broken makes the import fail.
FAKE_TORCH = '''
import os
if os.environ.get("CANVAS_CHAT_FAKE_TORCH") == "broken":
    raise ImportError("DLL load failed while importing _C: stand-in failure")
__version__ = "{version}"

class version:
    cuda = {cuda!r}

class _Tensor:
    def __init__(self, values):
        self.values = values
    def __mul__(self, k):
        return _Tensor([v * k for v in self.values])
    def sum(self):
        return _Tensor([sum(self.values)])
    def item(self):
        return self.values[0]

def ones(n, device="cpu"):
    if device == "cuda" and not cuda.is_available():
        raise RuntimeError("no CUDA device")
    return _Tensor([1.0] * n)

class cuda:
    @staticmethod
    def is_available():
        return version.cuda is not None and os.environ.get("CANVAS_CHAT_FAKE_CUDA") == "1"
    @staticmethod
    def get_device_name(index):
        return "NVIDIA GeForce RTX 4090 (stand-in)"
    @staticmethod
    def get_device_capability(index):
        return (8, 9)
'''

APP_MAIN = '''
def main():
    print("canvas-chat stand-in {version}")
'''


def build_wheel(
    out_dir: Path,
    name: str,
    version: str,
    files: dict[str, str],
    requires: tuple[str, ...] = (),
    entry_points: str = "",
) -> Path:
    """Writes a pure-Python wheel by hand (no build backend, no subprocess)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    meta = "Metadata-Version: 2.1\n" f"Name: {name}\n" f"Version: {version}\n"
    meta += "".join(f"Requires-Dist: {req}\n" for req in requires)
    contents = dict(files)
    contents[f"{info}/METADATA"] = meta
    contents[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: canvas-chat-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if entry_points:
        contents[f"{info}/entry_points.txt"] = entry_points
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = "\n".join(record) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, text in contents.items():
            zf.writestr(path, text)
    return wheel


def build_wheelhouse(wheelhouse: Path) -> None:
    """Both torch builds and the small libraries the stand-in pins name."""
    for local, cuda in (("cu128", "12.8"), ("cpu", None)):
        version = f"2.13.0+{local}"
        build_wheel(wheelhouse, "torch", version, {"torch/__init__.py": FAKE_TORCH.format(version=version, cuda=cuda)})
    for name, version in (("tinydep", "1.0"), ("tinydep", "1.1"), ("oldlib", "1.0")):
        build_wheel(wheelhouse, name, version, {f"{name}/__init__.py": f"__version__ = {version!r}\n"})


def build_payload(payload: Path, app_version: str, pins: list[str]) -> Path:
    """A payload folder as the installer lays it out: the app wheel and the three pin files."""
    build_wheel(
        payload,
        "canvas-chat",
        app_version,
        {
            "app/__init__.py": "",
            "app/__main__.py": APP_MAIN.format(version=app_version),
            "engine/__init__.py": "",
            "engine/__main__.py": "def main():\n    pass\n",
        },
        requires=("torch>=2.6,<2.14", "tinydep>=1.0"),
        entry_points="[gui_scripts]\ncanvas-chat = app.__main__:main\n\n[console_scripts]\ncanvas-chat-engine = engine.__main__:main\n",
    )
    (payload / "requirements.txt").write_text("".join(f"{pin}\n" for pin in pins), encoding="utf-8")
    (payload / "requirements-torch-cu128.txt").write_text("torch==2.13.0+cu128\n", encoding="utf-8")
    (payload / "requirements-torch-cpu.txt").write_text("torch==2.13.0+cpu\n", encoding="utf-8")
    return payload


def write_nvidia_smi(bin_dir: Path, csv_rows: list[str], exit_code: int = 0, stderr: str = "") -> Path:
    """An nvidia-smi on PATH that prints the given --query-gpu rows."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    body = "cat <<'ROWS'\n" + "".join(f"{row}\n" for row in csv_rows) + "ROWS\n" if csv_rows else ""
    if stderr:
        body += f"cat >&2 <<'ERR'\n{stderr}\nERR\n"
    script.write_text(f"#!/bin/sh\n{body}exit {exit_code}\n", encoding="utf-8")
    script.chmod(0o755)
    return script


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def reachable_index():
    """A local HTTP server standing in for the package indexes: the network works."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="index-stand-in", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def unreachable_url() -> str:
    """A loopback port with nothing listening: the network is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple/"
