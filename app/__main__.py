"""`python -m app` / `canvas-chat`: opens the window at once, then starts the engine worker.

`--self-test [--model PATH] [--prompt TEXT]` drives one reply through the real window and worker
off-screen and prints one JSON line (see app.self_test).
"""

from __future__ import annotations

import time

STARTED_AT = time.perf_counter()  # before the Qt imports: the basis of window_shown_s

import argparse  # noqa: E402
import faulthandler  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import app.qt_compat  # noqa: E402,F401  (PySide6 6.12 on CPython 3.11; see the module)

log = logging.getLogger("canvas_chat.main")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="canvas-chat", description="Private, local chat with DiffusionGemma.")
    parser.add_argument("--model", help="a model folder or hub id (default: the settings' model, else the demo model)")
    parser.add_argument("--self-test", action="store_true", help="send one message off-screen, print a JSON line, exit")
    parser.add_argument("--prompt", default="Hello! Who are you?", help="the message the self-test sends")
    parser.add_argument("--timeout", type=float, default=600.0, help="self-test: seconds to wait for the reply")
    return parser.parse_args(argv)


def prepare_streams() -> None:
    """Gives a windowed start somewhere to write, and the crash handler a file when there is no console.

    Started from its Windows shortcut (pythonw) the app has `sys.stdout` and `sys.stderr` set
    to None, and faulthandler, logging, warnings and tqdm all fail on those.
    """
    windowed = sys.stderr is None
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
    if not windowed:
        faulthandler.enable(sys.stderr)
        return
    from engine import paths

    try:
        crash_file = open(paths.crash_log_path(), "a", encoding="utf-8")  # noqa: SIM115  (lives as long as the process)
    except OSError:
        return
    crash_file.write(f"--- Canvas Chat started at {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})\n")
    crash_file.flush()
    faulthandler.enable(crash_file)


def setup_logging() -> None:
    from engine import paths

    root = logging.getLogger()
    if root.handlers:
        return
    root.setLevel(logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    stream = logging.StreamHandler(sys.stderr)
    stream.setLevel(logging.WARNING)
    stream.setFormatter(formatter)
    root.addHandler(stream)
    logging.captureWarnings(True)
    try:
        handler = logging.FileHandler(paths.log_path(), encoding="utf-8")
    except OSError:
        return
    handler.setFormatter(formatter)
    root.addHandler(handler)


def run_window(args: argparse.Namespace) -> int:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app.worker.engine_client import EngineClient
    from app.window.main_window import MainWindow
    from app.settings import load_settings
    from app.chat.store import ChatStore, StoreError

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Canvas Chat")
    app.setDesktopFileName("canvas-chat")
    settings = load_settings()
    try:
        store = ChatStore()
    except StoreError as exc:
        from PySide6.QtWidgets import QMessageBox

        QMessageBox.critical(None, "Canvas Chat", str(exc))
        return 1
    client = EngineClient()
    window = MainWindow(settings, store, client)
    window.show()
    log.info("window shown after %.2f s", time.perf_counter() - STARTED_AT)
    if args.model is not None or window.remote.backend is None:
        # (A server answers: the local model is loaded only when the user switches back to it.)
        QTimer.singleShot(0, window, lambda: window.start_engine(args.model, open_setup_if_missing=True))
    # Ctrl+C in a terminal quits cleanly; the idle timer lets Python see the signal at all.
    signal.signal(signal.SIGINT, lambda *_: app.quit())
    wake = QTimer(window)
    wake.timeout.connect(lambda: None)
    wake.start(250)
    try:
        return app.exec()
    finally:
        client.shutdown()
        store.close()


def main(argv: list[str] | None = None) -> int:
    prepare_streams()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    log.info("Canvas Chat starting (pid %s%s)", os.getpid(), ", self-test" if args.self_test else "")
    if args.self_test:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        from app.self_test import run_self_test

        status = run_self_test(args, STARTED_AT)
        log.info("self-test ended with status %s", status)
        return status
    return run_window(args)


if __name__ == "__main__":
    sys.exit(main())
