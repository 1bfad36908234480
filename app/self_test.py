"""`python -m app --self-test`: the real window off-screen, one message through the real worker.

Prints one JSON line (reply, finish_reason, the reply's stats, window_shown_s, model_ready_s,
model, device, is_demo) and exits 0; any failure exits non-zero with a plain message on stderr. Chats go to a temporary
database, so a self-test never adds to the user's history.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

EXIT_NO_MODEL = 2
EXIT_ENGINE_FAILED = 3
EXIT_TIMEOUT = 4
EXIT_REPLY_FAILED = 5


class SelfTestFailure(Exception):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class SelfTest:
    """Runs the scenario on the Qt event loop; `result` or `failure` is set when the loop quits."""

    def __init__(self, window, prompt: str, timeout_s: float, started_at: float):
        from PySide6.QtCore import QTimer

        self.window = window
        self.prompt = prompt
        self.started_at = started_at
        self.window_shown_s = 0.0
        self.model_ready_s: float | None = None
        self.model_info: dict[str, Any] = {}
        self.result: dict[str, Any] | None = None
        self.failure: SelfTestFailure | None = None
        self._message_id: str | None = None
        self._crash_lines: list[str] = []
        client, controller = window.client, window.controller
        client.model_loaded.connect(self._on_client_model_loaded)
        client.error_received.connect(self._on_client_error_received)
        client.worker_crashed.connect(self._on_client_worker_crashed)
        controller.reply_finished.connect(self._on_controller_reply_finished)
        self._deadline = QTimer(window)
        self._deadline.setSingleShot(True)
        self._deadline.timeout.connect(self._on_deadline_timeout)
        self._deadline.start(int(timeout_s * 1000))
        self._timeout_s = timeout_s

    def start(self, model: str) -> None:
        self.window_shown_s = round(time.perf_counter() - self.started_at, 3)
        self.window.client.auto_restart = False
        self.window.start_engine(model)
        # Sent at once: the client queues it until the model is loaded, as a user's early message.
        self._message_id = self.window.send(self.prompt)
        if self._message_id is None:
            self._fail("the window did not accept the message", EXIT_REPLY_FAILED)

    def _quit(self) -> None:
        from PySide6.QtWidgets import QApplication

        self._deadline.stop()
        QApplication.instance().quit()

    def _fail(self, message: str, exit_code: int) -> None:
        if self.failure is None and self.result is None:
            self.failure = SelfTestFailure(message, exit_code)
        self._quit()

    def _on_client_model_loaded(self, info: Any) -> None:
        self.model_ready_s = round(time.perf_counter() - self.started_at, 3)
        self.model_info = {"model": info.model, "device": info.device, "is_demo": info.is_demo}

    def _on_client_error_received(self, error: Any) -> None:
        self._fail(f"the engine reported {error.code}: {error.message}", EXIT_ENGINE_FAILED)

    def _on_client_worker_crashed(self, exit_code: int, lines: list) -> None:
        self._crash_lines = list(lines)
        tail = "\n  ".join(self._crash_lines[-12:])
        self._fail(f"the engine worker exited unexpectedly (code {exit_code}). Its last log lines:\n  {tail}", EXIT_ENGINE_FAILED)

    def _on_controller_reply_finished(self, message_id: str, status: str) -> None:
        if message_id != self._message_id:
            return
        message = self.window.controller.transcript.get(message_id)
        if message is None:
            self._fail("the reply vanished from the transcript", EXIT_REPLY_FAILED)
            return
        if status != "finished":
            detail = f": {message.error}" if message.error else ""
            self._fail(f"the reply ended as {status}{detail}", EXIT_REPLY_FAILED)
            return
        stats = dict(message.stats or {})
        self.result = {
            "reply": message.content,
            "finish_reason": stats.pop("finish_reason", None),
            "stats": stats,
            "window_shown_s": self.window_shown_s,
            "model_ready_s": self.model_ready_s,
            **self.model_info,
        }
        self._quit()

    def _on_deadline_timeout(self) -> None:
        state = self.window.client.state.value
        self._fail(f"no reply within {self._timeout_s:.0f} s (engine state: {state})", EXIT_TIMEOUT)


def _on_qt_message(mode, context, message: str) -> None:
    # The offscreen platform cannot pass window size limits on and says so for every window.
    if "propagateSizeHints" in message:
        return
    print(message, file=sys.stderr)


def run_self_test(args, started_at: float) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    from PySide6.QtCore import QTimer, qInstallMessageHandler

    qInstallMessageHandler(_on_qt_message)
    from PySide6.QtWidgets import QApplication

    from app.worker.engine_client import EngineClient
    from app.setup.model_choice import default_model
    from app.window.main_window import MainWindow
    from app.settings import load_settings
    from app.chat.store import ChatStore, StoreError

    settings = load_settings()
    model = args.model or default_model(settings)
    if model is None:
        print(
            "self-test failed: no model. Pass --model PATH, set a model in Settings, or install the demo model "
            "(resources/demo-model).",
            file=sys.stderr,
        )
        return EXIT_NO_MODEL

    app = QApplication.instance() or QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory(prefix="canvas-chat-self-test-") as folder:
        try:
            store = ChatStore(Path(folder) / "self-test.sqlite3")
        except StoreError as exc:
            print(f"self-test failed: {exc}", file=sys.stderr)
            return EXIT_REPLY_FAILED
        client = EngineClient()
        window = MainWindow(settings, store, client)
        window.show()
        test = SelfTest(window, args.prompt, args.timeout, started_at)
        QTimer.singleShot(0, window, lambda: test.start(model))
        app.exec()
        window.close()
        client.shutdown()
        store.close()
        window.deleteLater()
    if test.failure is not None:
        print(f"self-test failed: {test.failure}", file=sys.stderr)
        return test.failure.exit_code
    if test.result is None:
        print("self-test failed: the event loop ended without a result", file=sys.stderr)
        return EXIT_REPLY_FAILED
    print(json.dumps(test.result, ensure_ascii=False))
    return 0
