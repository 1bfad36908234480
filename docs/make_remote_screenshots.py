"""Renders a chat answered by a remote server into docs/screenshots/remote-*.png.

    python docs/make_remote_screenshots.py

The server is real: Canvas Chat's own OpenAI-compatible server (`python -m engine api`) on the
built-in demo model, started on a free port with an API key; the window connects to it through
Model ▸ Connect to a server… exactly as a user would (test connection, pick the model, Connect),
and its local worker is never started. vLLM on a GPU server is connected the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
QUESTIONS = ("What is the capital of Peru?", "Reverse the words: red green blue")
KEY = "team-key-1234"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(ROOT))


def start_server() -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "api", "--model", str(ROOT / "resources" / "demo-model"),
         "--port", "0", "--device", "cpu", "--token", KEY],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )
    ready = process.stdout.readline()
    if not ready.startswith("Canvas Chat API ready: "):
        process.kill()
        raise SystemExit(f"the server did not start: {ready!r}")
    return process, ready.split("ready: ", 1)[1].strip()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="remote-shots-"))
    os.environ["CANVAS_CHAT_HOME"] = str(work / "home")

    import keyring
    from keyring.backend import KeyringBackend
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app.chat.store import ChatStore
    from app.settings import Settings
    from app.window.main_window import MainWindow
    from app.worker.engine_client import EngineClient

    class SessionKeyring(KeyringBackend):  # keeps the demo key out of the real OS keyring
        priority = 1
        store: dict = {}

        def get_password(self, service, username):
            return self.store.get((service, username))

        def set_password(self, service, username, password):
            self.store[(service, username)] = password

        def delete_password(self, service, username):
            self.store.pop((service, username), None)

    keyring.set_keyring(SessionKeyring())
    process, base_url = start_server()
    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Canvas Chat")

    def wait(signal, seconds: float = 120) -> None:
        loop = QEventLoop()
        signal.connect(loop.quit)
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()
        signal.disconnect(loop.quit)

    try:
        window = MainWindow(Settings(theme="light", seed=7), ChatStore(), EngineClient())
        window.resize(1180, 720)
        window.show()
        dialog = window.remote.open_dialog()
        dialog.url_edit.setText(base_url.removesuffix("/v1"))
        dialog.key_edit.setText(KEY)
        dialog.test_connection()
        wait(dialog.probe_finished, 30)
        app.processEvents()
        OUT.mkdir(parents=True, exist_ok=True)
        dialog.adjustSize()
        dialog.grab().save(str(OUT / "remote-connect.png"))
        dialog.connect_button.click()
        for question in QUESTIONS:
            window.send(question)
            wait(window.controller.reply_finished)
        for _ in range(5):
            app.processEvents()
        window.grab().save(str(OUT / "remote-chat.png"))
        print(f"wrote {OUT / 'remote-connect.png'} and {OUT / 'remote-chat.png'}")
        window.close()
        window.client.shutdown()
    finally:
        process.terminate()
        process.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
