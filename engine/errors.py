"""Engine failures that travel to the GUI as `Error` events: a code and a plain message."""

from __future__ import annotations

from engine.protocol import ErrorCode


class EngineError(Exception):
    """A failure the user can act on, with one of the protocol's error codes."""

    def __init__(self, code: ErrorCode, message: str, *, recoverable: bool = True, detail: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.recoverable = recoverable
        self.detail = detail


class GenerationCancelled(Exception):
    """Raised from inside the denoising loop to stop a generation at the next step."""
