"""Makes the README screenshots off-screen: the real window on the real worker with the shipped demo model.

    python docs/make_screenshots.py [--out docs/screenshots]

Every reply is the demo model's own (no forced text); the worker's step-delay test switch slows
the denoising loop down so that a half-settled canvas can be caught. The window keeps its default
size. Writes empty-chat.png, empty-chat-dark.png, mid-animation.png, finished-reply.png,
finished-reply-dark.png, crash-banner.png. Needs a font with the block glyphs (fonts-dejavu-core
on Debian/Ubuntu).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEMO_MODEL = REPO / "resources" / "demo-model"
ANIMATED_PROMPT = "Who are you?"  # a three-canvas reply
# Three skills in one chat: each follow-up is answered with the conversation's KV cache.
CHAT = ["What is the capital of Peru?", "Reverse the words: red green blue", "What is 3 + 4?"]
CRASH_PROMPT = "How many words are in: the cat sat"


def wait_until(predicate, timeout_s: float, what: str) -> None:
    from PySide6.QtCore import QCoreApplication, QEventLoop

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"make_screenshots: timed out waiting for {what}")
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        time.sleep(0.005)


def settle(seconds: float) -> None:
    from PySide6.QtCore import QCoreApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QCoreApplication.processEvents()
        time.sleep(0.005)


def grab(window, path: Path) -> None:
    settle(0.05)
    if not window.grab().save(str(path)):
        raise SystemExit(f"make_screenshots: could not write {path}")
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import logging

    logging.basicConfig(level=logging.ERROR)  # the crash shot kills the worker on purpose

    home = Path(tempfile.mkdtemp(prefix="canvas-chat-screens-"))
    os.environ["CANVAS_CHAT_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.pop("CANVAS_CHAT_TEST_FORCE_REPLY", None)
    os.environ["CANVAS_CHAT_TEST_STEP_DELAY"] = "0.4"

    import app.qt_compat  # noqa: F401
    from PySide6.QtWidgets import QApplication

    from app.worker.engine_client import EngineClient
    from app.window.main_window import MainWindow
    from app.settings import Settings
    from app.chat.store import ChatStore

    qt_app = QApplication(sys.argv[:1])
    settings = Settings(theme="light", seed=0)
    store = ChatStore()
    client = EngineClient(auto_restart=False)
    window = MainWindow(settings, store, client)  # its default size
    window.show()

    def themed(name: str) -> None:
        grab(window, args.out / f"{name}.png")
        window.apply_settings(dataclasses.replace(window.settings, theme="dark"), save=False)
        grab(window, args.out / f"{name}-dark.png")
        window.apply_settings(dataclasses.replace(window.settings, theme="light"), save=False)

    def ask(text: str) -> None:
        window.composer.set_text(text)
        window.composer.submit()

    try:
        window.start_engine(str(DEMO_MODEL))
        wait_until(lambda: client.model_info is not None, 300, "the model to load")
        window.new_chat()
        settle(0.3)
        themed("empty-chat")

        view = window.transcript_view
        ask(ANIMATED_PROMPT)

        def mid_canvas() -> bool:
            snapshot = view.streaming_snapshot()
            if snapshot is None or not snapshot.segments:
                return False
            # The demo is confident: a canvas often goes from noise to text in one or two steps,
            # so the first draft of the second canvas is the shot (committed text above, noise below).
            return snapshot.canvas_index >= 1

        wait_until(mid_canvas, 300, "a half-settled canvas")
        settle(0.08)  # the newest tokens are still fading in
        grab(window, args.out / "mid-animation.png")
        wait_until(lambda: not window.controller.is_generating, 300, "the reply to finish")

        window.new_chat()
        for question in CHAT:
            ask(question)
            wait_until(lambda: not window.controller.is_generating, 300, "the reply to finish")
        settle(0.5)
        view.scroll_to_end()
        themed("finished-reply")

        ask(CRASH_PROMPT)
        wait_until(lambda: view.streaming_snapshot() is not None and any(
            s.settled for s in view.streaming_snapshot().segments), 120, "a settling draft")
        os.kill(client.worker_pid, signal.SIGKILL)
        wait_until(lambda: window.banner.isVisible(), 30, "the crash banner")
        settle(0.3)
        grab(window, args.out / "crash-banner.png")
    finally:
        window.close()
        client.shutdown()
        store.close()
    del qt_app
    return 0


if __name__ == "__main__":
    sys.exit(main())
