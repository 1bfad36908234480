"""Screenshots of a reply with TeX math and of Replay mid-scrub: the real window, off-screen, on the
shipped demo model, at the window's default size.

    python docs/make_export_math_replay_screenshots.py [--out docs/screenshots]

The demo model never writes math (it knows capitals, colours, small sums, reversing and counting
words), so the math shot is a chat IMPORTED through File > Import chats... (the file dialog
answered by this script) from a JSON export written here; its title says so. The Replay shot is
the demo model's own reply to "Who are you?" (entropy bound 0.001, a Settings value), paused by the scrubber on a half-settled canvas.
Writes math-reply.png, math-reply-dark.png and replay-scrub.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from docs.make_screenshots import DEMO_MODEL, grab, settle, wait_until  # noqa: E402

REPLAY_PROMPT = "Who are you?"
ENTROPY_BOUND = 0.001
MATH_QUESTION = "How do I solve a quadratic equation? And what does a $5 and $10 pizza cost together?"
MATH_REPLY = (
    "A quadratic equation $ax^2 + bx + c = 0$ with $a \\neq 0$ has the roots\n\n"
    "$$x_{1,2} = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a}$$\n\n"
    "The discriminant $\\Delta = b^2 - 4ac$ tells how many real roots there are: two if "
    "$\\Delta > 0$, one if $\\Delta = 0$, none if $\\Delta < 0$. For example $x^2 - 5x + 6 = 0$ "
    "gives $x = 2$ and $x = 3$.\n\n"
    "In Python:\n\n"
    "```python\nimport math\n\ndef roots(a, b, c):\n    d = math.sqrt(b * b - 4 * a * c)\n"
    "    return (-b - d) / (2 * a), (-b + d) / (2 * a)\n```\n\n"
    "And the pizzas: $5 and $10 make $15.\n"
)


def write_math_export(path: Path) -> None:
    from app.chat.export import ExportedChat, chats_to_json
    from app.chat.messages import Conversation, Message

    now = time.time()
    conversation = Conversation(title="Imported: quadratic equations", created=now - 120, updated=now - 60)
    messages = [
        Message(role="user", content=MATH_QUESTION, created=now - 120, updated=now - 120),
        Message(role="assistant", content=MATH_REPLY, created=now - 119, updated=now - 60,
                stats={"time_to_first_draft_s": 0.18, "tokens_per_s": 52.3, "tokens_per_forward": 3.4, "steps_per_canvas": 6.0}),
    ]
    path.write_text(chats_to_json([ExportedChat(conversation, messages)]), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    home = Path(tempfile.mkdtemp(prefix="canvas-chat-screens-"))
    os.environ["CANVAS_CHAT_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("MPLCONFIGDIR", str(home / "matplotlib"))
    os.environ.pop("CANVAS_CHAT_TEST_FORCE_REPLY", None)
    os.environ.pop("CANVAS_CHAT_TEST_STEP_DELAY", None)

    import app.qt_compat  # noqa: F401
    from PySide6.QtWidgets import QApplication, QFileDialog

    from app.chat.store import ChatStore
    from app.settings import Settings
    from app.window.main_window import MainWindow
    from app.worker.engine_client import EngineClient

    qt_app = QApplication(sys.argv[:1])
    store = ChatStore()
    client = EngineClient(auto_restart=False)
    # A low entropy bound settles fewer tokens per step (the demo is confident: at the default a
    # canvas settles in one or two steps), so that the scrubber has half-settled steps to show.
    window = MainWindow(Settings(theme="light", seed=0, entropy_bound=ENTROPY_BOUND), store, client)  # its default size
    window.show()
    try:
        window.start_engine(str(DEMO_MODEL))
        wait_until(lambda: client.model_info is not None, 300, "the model to load")

        # Replay mid-scrub: the demo's own three-canvas reply, paused on a half-settled canvas.
        window.new_chat()
        window.composer.set_text(REPLAY_PROMPT)
        window.composer.submit()
        wait_until(lambda: not window.controller.is_generating, 300, "the reply to finish")
        reply = window.controller.transcript.last(role="assistant")
        assert window.replay(reply.id)
        playback = window.transcript_view.replay_playback(reply.id)
        frames = playback.player.frames

        def balance(index: int) -> float:
            frame = frames[index]
            if frame.kind != "draft" or frame.canvas_index < 1 or not frame.settled:
                return -1
            share = sum(frame.settled) / len(frame.settled)
            return min(share, 1 - share)

        window.replay_bar.seek(max(range(len(frames)), key=balance))
        settle(1.0)  # the fade-in of the newest tokens ends
        grab(window, args.out / "replay-scrub.png")
        window.replay_bar.stop()

        # A reply with math: a chat imported through the File menu (the demo writes no math).
        export = home / "quadratic-equations.json"
        write_math_export(export)
        QFileDialog.getOpenFileName = staticmethod(lambda *a, **k: (str(export), ""))
        imported = window.chat_files.import_chats()
        assert imported, "the import failed"
        settle(0.5)
        window.transcript_view.scroll_to_end()
        grab(window, args.out / "math-reply.png")
        window.apply_settings(dataclasses.replace(window.settings, theme="dark"), save=False)
        grab(window, args.out / "math-reply-dark.png")
    finally:
        window.close()
        client.shutdown()
        store.close()
    del qt_app
    return 0


if __name__ == "__main__":
    sys.exit(main())
