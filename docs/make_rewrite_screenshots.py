"""Makes the rewrite-in-place screenshots off-screen: the real window on the real worker with the
shipped demo model, a sentence of its reply selected and rewritten.

    python docs/make_rewrite_screenshots.py [--out docs/screenshots]

The worker's step-delay test switch slows the denoising loop so that the span can be caught
mid-rewrite. Writes rewrite-selected.png (the selection and the context menu's actions) and
rewrite-mid-span.png (noise inside the span, the text on both sides fixed). Needs a font with the
block glyphs (fonts-dejavu-core).
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

from make_screenshots import DEMO_MODEL, grab, settle, wait_until  # noqa: E402  (docs/ is on the path)

PROMPT = "Who are you?"  # a three-canvas reply
SELECTED = "small demo"  # what is selected of it (the first words found of these, else a middle part)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    home = Path(tempfile.mkdtemp(prefix="canvas-chat-rewrite-screens-"))
    os.environ["CANVAS_CHAT_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.pop("CANVAS_CHAT_TEST_FORCE_REPLY", None)
    os.environ["CANVAS_CHAT_TEST_STEP_DELAY"] = "0.5"

    import app.qt_compat  # noqa: F401
    from PySide6.QtCore import QPoint, QTimer
    from PySide6.QtGui import QPainter
    from PySide6.QtWidgets import QApplication

    from app.chat.store import ChatStore
    from app.settings import Settings
    from app.window.main_window import MainWindow
    from app.worker.engine_client import EngineClient

    qt_app = QApplication(sys.argv[:1])
    store = ChatStore()
    client = EngineClient(auto_restart=False)
    window = MainWindow(Settings(theme="light", seed=0), store, client)
    window.show()
    view = window.transcript_view
    try:
        window.start_engine(str(DEMO_MODEL))
        wait_until(lambda: client.model_info is not None, 300, "the model to load")
        window.new_chat()
        window.composer.set_text(PROMPT)
        window.composer.submit()
        wait_until(lambda: not window.controller.is_generating, 300, "the reply to finish")
        reply = window.controller.transcript.last("assistant")
        settle(0.3)

        # Select words in the middle of the reply, as a user would with the mouse.
        view.select_message(reply.id)
        shown = view.indexWidget(view.index_of_message(reply.id)).document().toPlainText()
        start = shown.find(SELECTED)
        if start < 0:
            start, end = len(shown) // 3, 2 * len(shown) // 3
        else:
            end = start + len(SELECTED)
        view.select_text(reply.id, start, end)
        settle(0.2)
        menu = view.context_menu_for(reply)
        geometry = view.delegate.row_geometry(view.index_of_message(reply.id))
        at = view.viewport().mapToGlobal(QPoint(geometry.bubble.left() + 480, geometry.bubble.bottom() - 8))

        def shoot_with_menu() -> None:
            # The menu is its own top-level window: drawn into the window's picture where it opened.
            picture = window.grab()
            painter = QPainter(picture)
            painter.drawPixmap(window.mapFromGlobal(menu.pos()), menu.grab())
            painter.end()
            path = args.out / "rewrite-selected.png"
            if not picture.save(str(path)):
                raise SystemExit(f"make_rewrite_screenshots: could not write {path}")
            print(f"wrote {path}")
            menu.close()

        QTimer.singleShot(300, shoot_with_menu)
        menu.exec(at)
        menu.deleteLater()

        reason = window.span_rewrite.request(False)
        if reason:
            raise SystemExit(f"make_rewrite_screenshots: the rewrite did not start: {reason}")

        def mid_span() -> bool:
            # Part of the span settled, part still noise (this canvas's, or a later canvas's).
            rewrite = window.controller.transcript.get(reply.id).rewrite
            flags = {settled for _, settled in rewrite.segments()} if rewrite is not None and rewrite.parts else set()
            return flags == {True, False}

        wait_until(mid_span, 120, "a half-settled span")
        settle(0.05)
        grab(window, args.out / "rewrite-mid-span.png")
        wait_until(lambda: not window.controller.is_generating, 300, "the rewrite to finish")
        # The demo model is certain of its own words: it writes the same span back, and the app
        # says so (the real model samples a new wording).
        print("after:", window.controller.transcript.get(reply.id).content)
        print("status:", window.statusBar().currentMessage())
    finally:
        window.close()
        client.shutdown()
        store.close()
    del qt_app
    return 0


if __name__ == "__main__":
    sys.exit(main())
