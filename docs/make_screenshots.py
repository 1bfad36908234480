"""Makes the README screenshots off-screen: the real window on the real worker with a tiny model.

    python docs/make_screenshots.py [--out docs/screenshots]

The tiny model has random weights, so its replies are steered with the worker's test switch
CANVAS_CHAT_TEST_FORCE_REPLY (the real denoising loop, biased towards a chosen text). Writes
empty-chat.png, mid-animation.png, finished-reply.png, finished-reply-dark.png, crash-banner.png.
Needs torch and transformers (to build the tiny model) and a font with the block glyphs
(fonts-dejavu-core on Debian/Ubuntu).
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

PROMPT = "Write a Python function that reverses the words in a sentence."
REPLY = """Here is a small function that **reverses the words** of a sentence:

```python
def reverse_words(text: str) -> str:
    # split() drops repeated spaces
    return " ".join(reversed(text.split()))
```

| input | output |
|---|---|
| `one two three` | `three two one` |

It splits on whitespace, so runs of spaces collapse to one."""
CRASH_PROMPT = "And in Rust?"


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
    os.environ["CANVAS_CHAT_TEST_FORCE_REPLY"] = REPLY
    os.environ["CANVAS_CHAT_TEST_STEP_DELAY"] = "0.15"

    from tests.tiny_model import build_tiny_model_folder

    model_dir = build_tiny_model_folder(home / "tiny-diffusiongemma", canvas_length=64, max_denoising_steps=12)

    import app.qt_compat  # noqa: F401
    from PySide6.QtWidgets import QApplication

    from app.worker.engine_client import EngineClient
    from app.window.main_window import MainWindow
    from app.settings import Settings
    from app.chat.store import ChatStore

    qt_app = QApplication(sys.argv[:1])
    settings = Settings(theme="light", max_denoising_steps=12, max_new_tokens=2048, seed=3)
    store = ChatStore()
    client = EngineClient(auto_restart=False)
    window = MainWindow(settings, store, client)
    window.resize(1100, 760)
    window.show()
    try:
        window.start_engine(str(model_dir))
        wait_until(lambda: client.model_info is not None, 120, "the model to load")
        window.new_chat()
        grab(window, args.out / "empty-chat.png")

        view = window.transcript_view
        window.composer.set_text(PROMPT)
        window.composer.submit()

        def mid_canvas() -> bool:
            snapshot = view.streaming_snapshot()
            if snapshot is None or snapshot.canvas_index < 1 or not snapshot.segments:
                return False
            settled = sum(segment.settled for segment in snapshot.segments) / len(snapshot.segments)
            return 0.3 <= settled <= 0.8

        wait_until(mid_canvas, 120, "a half-settled canvas")
        settle(0.08)  # the newest tokens are still fading in
        grab(window, args.out / "mid-animation.png")

        wait_until(lambda: not window.controller.is_generating, 300, "the reply to finish")
        settle(0.5)
        view.scroll_to_end()
        grab(window, args.out / "finished-reply.png")

        window.apply_settings(dataclasses.replace(window.settings, theme="dark"), save=False)
        grab(window, args.out / "finished-reply-dark.png")
        window.apply_settings(dataclasses.replace(window.settings, theme="light"), save=False)

        window.composer.set_text(CRASH_PROMPT)
        window.composer.submit()
        wait_until(lambda: bool(window.controller.transcript.last().content), 120, "a committed canvas")
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
