"""Makes the screenshot of the image viewer, off-screen: the real window (no worker needed) on a chat
whose question has two pictures; a click on the second thumbnail opens it at full size.

    python docs/make_image_viewer_screenshots.py [--out docs/screenshots]

Writes image-viewer.png (the viewer over the window).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "docs"))

from make_image_screenshots import draw_picture  # noqa: E402
from make_screenshots import settle  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    home = Path(tempfile.mkdtemp(prefix="canvas-chat-viewer-screens-"))
    os.environ["CANVAS_CHAT_HOME"] = str(home)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    first = draw_picture(home / "hills.png", (250, 210, 60))
    second = draw_picture(home / "sunset.jpg", (240, 110, 40), size=(900, 600))

    import app.qt_compat  # noqa: F401
    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QColor, QPainter
    from PySide6.QtWidgets import QApplication

    from app.chat.attachments import write_image_files
    from app.chat.messages import Message
    from app.chat.store import ChatStore
    from app.settings import Settings
    from app.window.attachment_strip import read_image_file
    from app.window.main_window import MainWindow
    from app.worker.engine_client import EngineClient

    qt_app = QApplication(sys.argv[:1])
    store = ChatStore()
    chat = store.create_conversation("Two landscapes")
    question = Message(role="user", content="Which of these two would make the better poster?", conversation_id=chat.id)
    sources = [read_image_file(first), read_image_file(second)]
    question.attachments = tuple(write_image_files(store.images_root, chat.id, question.id, sources))
    store.add_message(question)
    client = EngineClient(auto_restart=False)
    window = MainWindow(Settings(theme="light"), store, client)
    window.resize(1100, 720)
    window.show()
    try:
        window.controller.open_conversation(chat.id)
        settle(0.3)
        view = window.transcript_view
        viewer = view.open_image(question.id, 1)
        assert viewer is not None
        viewer.resize(760, 540)
        settle(0.3)
        # The off-screen platform has no window manager: draw the viewer over the window by hand.
        shot = window.grab()
        painter = QPainter(shot)
        painter.fillRect(shot.rect(), QColor(0, 0, 0, 70))
        at = QPoint((shot.width() - viewer.width()) // 2, (shot.height() - viewer.height()) // 2)
        painter.drawPixmap(at, viewer.grab())
        painter.end()
        path = args.out / "image-viewer.png"
        if not shot.save(str(path)):
            raise SystemExit(f"could not write {path}")
        print(f"wrote {path}")
    finally:
        window.close()
        client.shutdown()
        store.close()
    del qt_app
    return 0


if __name__ == "__main__":
    sys.exit(main())
