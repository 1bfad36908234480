"""Makes the screenshots of the chat settings panel off-screen: the real window at its default
size on the real worker with the shipped demo model.

    python docs/make_panel_screenshots.py [--out docs/screenshots]

Writes chat-panel.png (a chat with its own system prompt and settings, the context meter under
the input) and context-warning.png (a message too long for the model's window, before sending).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from docs.make_screenshots import DEMO_MODEL, grab, settle, wait_until  # noqa: E402

CHAT = ["What is the capital of Peru?", "What colour is a banana?"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    home = Path(tempfile.mkdtemp(prefix="canvas-chat-panel-screens-"))
    os.environ["CANVAS_CHAT_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.pop("CANVAS_CHAT_TEST_FORCE_REPLY", None)

    import app.qt_compat  # noqa: F401
    from PySide6.QtWidgets import QApplication

    from app.chat.store import ChatStore
    from app.settings import Settings
    from app.window.main_window import MainWindow
    from app.worker.engine_client import EngineClient

    qt_app = QApplication(sys.argv[:1])
    store = ChatStore()
    client = EngineClient(auto_restart=False)
    window = MainWindow(Settings(theme="light", seed=0), store, client)  # its default size
    window.show()
    try:
        window.start_engine(str(DEMO_MODEL))
        wait_until(lambda: client.model_info is not None, 300, "the model to load")
        window.new_chat()
        panel = window.chat_panel
        panel.system_prompt.setPlainText("Answer in one short sentence.")
        panel.preset.setCurrentIndex(panel.preset.findData("balanced"))
        panel.seed.setText("7")
        for question in CHAT:
            window.composer.set_text(question)
            window.composer.submit()
            wait_until(lambda: not window.controller.is_generating, 300, "the reply to finish")
        settle(0.5)
        window.transcript_view.scroll_to_end()
        grab(window, args.out / "chat-panel.png")

        window.composer.set_text("Summarise this: " + "the quick brown fox jumps over the lazy dog " * 380)
        settle(0.3)
        if not window.context_meter.warning.isVisible():
            raise SystemExit("make_panel_screenshots: the context warning did not show")
        grab(window, args.out / "context-warning.png")
    finally:
        window.close()
        client.shutdown()
        store.close()
    del qt_app
    return 0


if __name__ == "__main__":
    sys.exit(main())
