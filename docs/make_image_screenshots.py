"""Makes the screenshot of a chat with an image, off-screen: the real window on the real worker.

    python docs/make_image_screenshots.py [--out docs/screenshots]

The demo model cannot read images (it learned text only), so this uses the tiny DiffusionGemma with
a tiny random-weight vision tower that the tests build (tests/tiny_model.py). Its replies are noise:
the shot shows the attachment flow (a thumbnail in the sent message, another waiting in the
composer), not the quality of an answer. Writes chat-with-image.png.
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

from make_screenshots import grab, settle, wait_until  # noqa: E402


def draw_picture(path: Path, sun: tuple[int, int, int], size=(480, 320)) -> Path:
    """A small landscape (sky, sun, hills) so the thumbnail reads as a photo-like image."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        shade = int(150 + 90 * y / height)
        draw.line([(0, y), (width, y)], fill=(90, shade, 235))
    draw.ellipse([width * 0.66, height * 0.12, width * 0.84, height * 0.39], fill=sun)
    draw.polygon([(0, height), (0, height * 0.62), (width * 0.35, height * 0.45), (width * 0.7, height * 0.7), (width, height * 0.55), (width, height)], fill=(60, 140, 70))
    draw.polygon([(0, height), (width * 0.25, height * 0.78), (width * 0.6, height * 0.85), (width, height * 0.75), (width, height)], fill=(40, 105, 55))
    image.save(path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    home = Path(tempfile.mkdtemp(prefix="canvas-chat-image-screens-"))
    os.environ["CANVAS_CHAT_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.pop("CANVAS_CHAT_TEST_FORCE_REPLY", None)
    os.environ["CANVAS_CHAT_TEST_STEP_DELAY"] = "0.05"

    from tests.tiny_model import build_tiny_vision_model_folder

    model = build_tiny_vision_model_folder(home / "tiny-diffusiongemma-vision")
    first = draw_picture(home / "hills.png", (250, 210, 60))
    second = draw_picture(home / "sunset.jpg", (240, 110, 40))

    import app.qt_compat  # noqa: F401
    from PySide6.QtWidgets import QApplication

    from app.chat.store import ChatStore
    from app.settings import Settings
    from app.window.main_window import MainWindow
    from app.worker.engine_client import EngineClient

    qt_app = QApplication(sys.argv[:1])
    store = ChatStore()
    client = EngineClient(auto_restart=False)
    window = MainWindow(Settings(theme="light", seed=0, max_new_tokens=32), store, client)
    window.show()
    try:
        window.start_engine(str(model))
        wait_until(lambda: client.model_info is not None, 300, "the model to load")
        window.new_chat()
        window.composer.attachments.add_files([str(first)])
        window.composer.set_text("What is in this picture?")
        window.composer.submit()
        wait_until(lambda: not window.controller.is_generating, 300, "the reply to finish")
        window.composer.attachments.add_files([str(second)])
        window.composer.set_text("And how does this one compare?")
        settle(0.5)
        grab(window, args.out / "chat-with-image.png")
    finally:
        window.close()
        client.shutdown()
        store.close()
    del qt_app
    return 0


if __name__ == "__main__":
    sys.exit(main())
