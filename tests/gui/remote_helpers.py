"""Helpers for the remote engine tests: an in-memory keyring (nothing touches the OS keyring) and
Canvas Chat's own API server (`python -m engine api`) on the tiny model, as a real process."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from keyring.backend import KeyringBackend

from tests.conftest import REPO_ROOT, python_env


class MemoryKeyring(KeyringBackend):
    """A keyring that lives in this process only."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.passwords.pop((service, username), None)


@dataclass
class ApiServer:
    process: subprocess.Popen
    base_url: str
    token: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()


def start_api_server(model_dir, reply: str, token: str = "", step_delay: str = "0") -> ApiServer:
    """Starts the headless server on a free port and returns once it prints that it is ready."""
    command = [sys.executable, "-m", "engine", "api", "--model", str(model_dir), "--port", "0", "--device", "cpu"]
    if token:
        command += ["--token", token]
    env = python_env(
        CANVAS_CHAT_TEST_FORCE_REPLY=reply, CANVAS_CHAT_TEST_STEP_DELAY=step_delay, OMP_NUM_THREADS="1"
    )
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ready = process.stdout.readline()  # the server's own readiness line (or EOF if it failed)
    if not ready.startswith("Canvas Chat API ready: "):
        process.kill()
        _, err = process.communicate()
        raise RuntimeError(f"the API server did not start: {ready!r} {err[-2000:]}")
    return ApiServer(process, ready.split("ready: ", 1)[1].strip(), token)
