"""`LineProcess`: a child process that speaks one message per line, as the GUI's children do.

It wraps the QProcess: starts it, writes lines to its stdin, cuts its stdout into lines and its
stderr into log lines, and says how it ended. The engine client (the worker) and the download
supervisor (the download child) both use it; what a line means is theirs to decide.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, Signal

import app.qt_compat  # noqa: F401  (PySide6 6.12 / CPython 3.11 refcount fix, before any emit)

log = logging.getLogger("canvas_chat.line_process")


def exit_description(code: int, normal_exit: bool) -> str:
    """How a process ended, in words: "exited with status 3", "killed by SIGKILL"."""
    if normal_exit:
        return f"exited with status {code}"
    if sys.platform != "win32" and 0 < code < 128:
        try:
            return f"killed by {signal.Signals(code).name}"
        except ValueError:
            return f"killed by signal {code}"
    return f"crashed (status {code:#x})" if code else "crashed"


class LineProcess(QObject):
    """One run of a child process. Create, connect, `start()`; drop it after `exited`.

    Signals:
      started()                    the process is running
      line_received(bytes)         one stdout line, stripped, never empty
      stderr_line_received(str)    one stderr line (of a progress bar redrawn with \\r, its latest state)
      exited(int, bool)            exit code (-1 when it was killed or never started), normal exit;
                                   every stdout and stderr line has been delivered before it
      failed_to_start(str)         the reason; `exited(-1, False)` follows
    """

    started = Signal()
    line_received = Signal(bytes)
    stderr_line_received = Signal(str)
    exited = Signal(int, bool)
    failed_to_start = Signal(str)

    def __init__(
        self,
        command: Sequence[str],
        *,
        environment: QProcessEnvironment | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.command = list(command)
        self._stdout_buffer = b""
        self._stderr_buffer = b""
        self._exited = False
        self.exit_description = ""  # how it ended, in words (set before `exited`)
        process = QProcess(self)
        process.setProgram(self.command[0])
        process.setArguments(self.command[1:])
        process.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        if environment is not None:
            process.setProcessEnvironment(environment)
        process.readyReadStandardOutput.connect(self._on_process_stdout)
        process.readyReadStandardError.connect(self._on_process_stderr)
        process.started.connect(self.started)
        process.finished.connect(self._on_process_finished)
        process.errorOccurred.connect(self._on_process_error)
        self._process = process

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._process.start()

    @property
    def is_running(self) -> bool:
        return self._process.state() == QProcess.ProcessState.Running

    @property
    def pid(self) -> int | None:
        if self._process.state() == QProcess.ProcessState.NotRunning:
            return None
        return int(self._process.processId()) or None

    def error_text(self) -> str:
        return self._process.errorString()

    def write_line(self, text: str) -> bool:
        """Writes `text` and a newline to the child's stdin; False when it is not running."""
        if not self.is_running:
            return False
        self._process.write((text + "\n").encode("utf-8"))
        return True

    def close_input(self) -> None:
        """End of stdin: for our children, "the parent has gone"."""
        self._process.closeWriteChannel()

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()

    def wait_for_exit(self, timeout_ms: int) -> bool:
        """Blocks up to `timeout_ms`; `exited` is emitted from inside when the child ends."""
        if self._exited or self._process.state() == QProcess.ProcessState.NotRunning:
            return True
        return self._process.waitForFinished(timeout_ms)

    # ------------------------------------------------------------------ reading

    def _on_process_stdout(self) -> None:
        self._stdout_buffer += bytes(self._process.readAllStandardOutput().data())
        *lines, self._stdout_buffer = self._stdout_buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if line:
                self.line_received.emit(line)

    def _on_process_stderr(self) -> None:
        self._stderr_buffer += bytes(self._process.readAllStandardError().data())
        *lines, self._stderr_buffer = self._stderr_buffer.split(b"\n")
        for line in lines:
            self._emit_stderr_line(line)

    def _emit_stderr_line(self, raw: bytes) -> None:
        # A progress bar redraws itself with carriage returns: keep its latest state only.
        text = raw.decode("utf-8", "replace")
        line = next((part for part in reversed(text.split("\r")) if part.strip()), "")
        if line:
            self.stderr_line_received.emit(line)

    def _on_process_finished(self, exit_code: int, exit_status: QProcess.ExitStatus) -> None:
        self._on_process_stdout()
        self._on_process_stderr()
        # A stdout fragment without its newline is a message cut off by the exit: dropped.
        if self._stderr_buffer:
            self._emit_stderr_line(self._stderr_buffer)
        self._stdout_buffer = self._stderr_buffer = b""
        normal = exit_status == QProcess.ExitStatus.NormalExit
        self.exit_description = exit_description(exit_code, normal)
        self._exit(exit_code if normal else -1, normal)

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.ProcessError.FailedToStart:
            return  # a crash also emits finished(), handled there
        self.exit_description = "could not be started"
        self.failed_to_start.emit(self._process.errorString())
        self._exit(-1, False)

    def _exit(self, exit_code: int, normal_exit: bool) -> None:
        if self._exited:
            return
        self._exited = True
        self.exited.emit(exit_code, normal_exit)
