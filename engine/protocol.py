"""The message protocol between the GUI and the engine worker (standard library only).

One JSON object per line on the worker's stdin (requests) and stdout (events); stderr is the
worker's log. Every message carries a `type` tag and a `request_id`. The GUI opens with
`Hello`; the worker answers `Ready` with its protocol version, and either side refuses a
different major version. A receiver logs and drops (or answers with an `Error`) any line it
cannot decode; it never crashes on one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

PROTOCOL_VERSION = 4  # 2: rewrite_span, span_draft, span_rewritten; 3: the local API server, thinking;
# 4: message content may be a list of text and image parts (a text-only message stays one string)
# A longer line is refused unread: far more than a conversation at the model's 131,072 positions.
MAX_LINE_BYTES = 16 * 2**20

FinishReason = Literal["eos", "length", "cancelled"]
RewriteFinish = Literal["rewritten", "cancelled"]
SpanUnit = Literal["tokens", "characters"]
# Why a request failed; `Error.message` says it in plain words, the code is for the program.
# ("engine_stopped" is the GUI's own: it never reached a worker.)
ErrorCode = Literal[
    "protocol_mismatch",
    "malformed_message",
    "model_not_found",
    "model_not_downloaded",
    "model_broken",
    "tokenizer_missing",
    "wrong_model_type",
    "no_model_loaded",
    "bad_settings",
    "bad_span",
    "bad_image",
    "vision_unavailable",
    "context_too_long",
    "out_of_memory",
    "load_failed",
    "api_port_in_use",
    "api_bind_failed",
    "api_token_required",
    "internal",
    "engine_stopped",
]
# A model that cannot be used: the fix is in Model setup (another folder, the download).
MODEL_SETUP_ERROR_CODES: frozenset[str] = frozenset(
    {"model_not_found", "model_not_downloaded", "model_broken", "tokenizer_missing", "wrong_model_type"}
)
# The model did not load (including for want of memory), as opposed to a failed request.
MODEL_LOAD_ERROR_CODES: frozenset[str] = MODEL_SETUP_ERROR_CODES | {"load_failed", "out_of_memory"}
ENTROPY_BUCKETS = 4  # 0 = confident ... 3 = very uncertain


class ProtocolError(ValueError):
    """A line that is not a valid message of this protocol version."""


# ---------------------------------------------------------------------------- payload parts


@dataclass(frozen=True)
class TextPart:
    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class ImagePart:
    """An image file the worker reads itself (the GUI's copy in its data folder): same machine only."""

    path: str
    media_type: str = ""  # image/png, image/jpeg or image/webp
    type: Literal["image"] = "image"


ContentPart = Union[TextPart, ImagePart]
# Image files the engine takes (docs/protocol.md); the GUI refuses anything else before sending.
IMAGE_MEDIA_TYPES: dict[str, str] = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP"}
MAX_IMAGE_BYTES = 20 * 2**20


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentPart]  # a plain string unless the message carries images

    @property
    def text(self) -> str:
        """The message's text (its text parts joined by blank lines)."""
        if isinstance(self.content, str):
            return self.content
        return "\n\n".join(part.text for part in self.content if isinstance(part, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        if isinstance(self.content, str):
            return []
        return [part for part in self.content if isinstance(part, ImagePart)]


@dataclass(frozen=True)
class SettingRange:
    """The values a generation setting accepts, inclusive; the GUI's settings dialog uses the same."""

    label: str
    kind: type  # int or float
    low: int | float
    high: int | float

    def problem(self, value: Any) -> str | None:
        """A plain sentence when `value` is outside this range (or not a finite number), else None."""
        if self.kind is int:
            fits = isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high
            what = "a whole number"
        else:
            fits = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and self.low <= value <= self.high
            )
            what = "a number"
        if fits:
            return None
        return f"{self.label} must be {what} from {_shown(self.low)} to {_shown(self.high)} (got {_shown(value)})"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) < 10**30:
            return f"{value:,}"
        return "a number far too large" if value > 0 else "a number far too small"
    return repr(value)


# One copy of the accepted ranges (docs/protocol.md states them). max_new_tokens stops at the
# real model's 131,072 positions; the seed is what torch.manual_seed takes.
SETTING_RANGES: dict[str, SettingRange] = {
    "max_new_tokens": SettingRange("max new tokens", int, 1, 131_072),
    "max_denoising_steps": SettingRange("denoising steps", int, 1, 1024),
    "entropy_bound": SettingRange("entropy bound", float, 0.001, 100.0),
    "t_min": SettingRange("t_min", float, 0.0, 5.0),
    "t_max": SettingRange("t_max", float, 0.0, 5.0),
    "seed": SettingRange("seed", int, 0, 2**64 - 1),
}


@dataclass(frozen=True)
class GenerationSettings:
    """Per-request sampling settings; None means "the model folder's generation config"."""

    max_new_tokens: int | None = None
    max_denoising_steps: int | None = None
    entropy_bound: float | None = None
    t_min: float | None = None
    t_max: float | None = None
    seed: int | None = None

    def problems(self) -> list[str]:
        """Human-readable reasons these settings cannot be used; empty when they are fine."""
        found = []
        for name, accepted in SETTING_RANGES.items():
            value = getattr(self, name)
            problem = None if value is None else accepted.problem(value)
            if problem:
                found.append(problem)
        if not found and self.t_min is not None and self.t_max is not None and self.t_max <= self.t_min:
            found.append(f"t_max must be greater than t_min (got t_min={self.t_min}, t_max={self.t_max})")
        return found


@dataclass(frozen=True)
class GenerationStats:
    time_to_first_draft_s: float
    wall_s: float
    new_tokens: int
    tokens_per_s: float
    decoder_forwards: int
    tokens_per_forward: float
    steps_per_canvas: float
    canvases: int
    prompt_tokens: int
    cached_tokens: int = 0


# ---------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Hello:
    TYPE: ClassVar[str] = "hello"
    request_id: str
    protocol_version: int
    client: str = ""


@dataclass(frozen=True)
class LoadModel:
    TYPE: ClassVar[str] = "load_model"
    request_id: str
    model: str  # a local folder or a hub id such as "google/diffusiongemma-26B-A4B-it"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    quantization: Literal["auto", "none", "bf16", "nf4", "nf4-double"] = "auto"
    vision: bool = False
    revision: str | None = None


@dataclass(frozen=True)
class Generate:
    TYPE: ClassVar[str] = "generate"
    request_id: str
    messages: list[ChatMessage]
    conversation_id: str = ""
    system_prompt: str = ""
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    reuse_cache: bool = True
    thinking: bool = False  # open the model's thought channel (Gemma 4's <|think|>)


@dataclass(frozen=True)
class RewriteSpan:
    """Re-denoise reply tokens [span_start, span_end) in place; every other token is kept."""

    TYPE: ClassVar[str] = "rewrite_span"
    request_id: str
    messages: list[ChatMessage]  # the conversation up to the user turn the reply answers
    reply_token_ids: list[int]  # the reply as `done.token_ids` gave it
    span_start: int  # token indices into reply_token_ids (or characters: span_unit)
    span_end: int
    instruction: str = ""
    system_prompt: str = ""
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    # "characters": span_start/span_end are offsets into the reply's text, widened to whole tokens.
    span_unit: SpanUnit = "tokens"


@dataclass(frozen=True)
class Cancel:
    TYPE: ClassVar[str] = "cancel"
    request_id: str
    target_request_id: str


@dataclass(frozen=True)
class Unload:
    TYPE: ClassVar[str] = "unload"
    request_id: str


@dataclass(frozen=True)
class Shutdown:
    TYPE: ClassVar[str] = "shutdown"
    request_id: str


@dataclass(frozen=True)
class ProbeHardware:
    TYPE: ClassVar[str] = "probe_hardware"
    request_id: str


@dataclass(frozen=True)
class StartApiServer:
    """Serve the loaded model over HTTP (OpenAI wire format); see docs/api.md."""

    TYPE: ClassVar[str] = "start_api_server"
    request_id: str
    host: str = "127.0.0.1"
    port: int = 1234
    token: str = ""  # required for any non-loopback host
    cors_origins: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StopApiServer:
    TYPE: ClassVar[str] = "stop_api_server"
    request_id: str


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Ready:
    """Answer to Hello: the worker is up and speaks this protocol."""

    TYPE: ClassVar[str] = "ready"
    request_id: str
    protocol_version: int
    engine_version: str
    pid: int


@dataclass(frozen=True)
class LoadProgress:
    TYPE: ClassVar[str] = "load_progress"
    request_id: str
    stage: str  # "resolving", "tokenizer", "weights", "quantizing", "device", ...
    message: str
    fraction: float  # 0..1 over the whole load
    bytes_read: int = 0
    bytes_total: int = 0
    layers_quantized: int = 0
    layers_total: int = 0


@dataclass(frozen=True)
class ModelLoaded:
    TYPE: ClassVar[str] = "model_loaded"
    request_id: str
    model: str
    model_path: str
    device: str
    quantization: str
    canvas_length: int
    parameters: int
    load_s: float
    is_demo: bool = False
    accepts_images: bool = False  # the model has a trained vision tower (never the demo model)
    context_window: int = 0  # the model's positions (max_position_embeddings); 0 = unknown
    torch_version: str = ""
    transformers_version: str = ""


@dataclass(frozen=True)
class Draft:
    """One denoising step's view of the open canvas (latest wins: drafts may be coalesced)."""

    TYPE: ClassVar[str] = "draft"
    request_id: str
    canvas_index: int
    step_index: int  # 0-based step within this canvas
    max_steps: int
    text: str  # argmax draft of the canvas up to its first EOS
    pieces: list[str]  # decoded text of each position up to the first EOS
    settled: list[bool]  # accepted by the sampler at this step (not noise)
    entropy: list[int]  # bucket 0..ENTROPY_BUCKETS-1 per position


@dataclass(frozen=True)
class CanvasCommitted:
    TYPE: ClassVar[str] = "canvas_committed"
    request_id: str
    canvas_index: int
    text: str  # this canvas's text, up to the first EOS
    reply_text: str  # everything committed so far in this reply
    token_count: int
    steps: int


@dataclass(frozen=True)
class Done:
    TYPE: ClassVar[str] = "done"
    request_id: str
    finish_reason: FinishReason
    text: str
    token_ids: list[int]
    stats: GenerationStats
    reasoning: str = ""  # the thought channel, when thinking was on


@dataclass(frozen=True)
class SpanDraft:
    """One denoising step's view of the span being rewritten (latest wins, like `Draft`)."""

    TYPE: ClassVar[str] = "span_draft"
    request_id: str
    canvas_index: int
    step_index: int
    max_steps: int
    span_start: int  # the reply tokens this draft covers: the span's part in this canvas
    span_end: int
    text: str
    pieces: list[str]
    settled: list[bool]
    entropy: list[int]
    span_tokens: list[int] = field(default_factory=list)  # [start, end) of the whole span, tokens
    span_chars: list[int] = field(default_factory=list)  # [start, end) of the whole span in the old text


@dataclass(frozen=True)
class SpanRewritten:
    TYPE: ClassVar[str] = "span_rewritten"
    request_id: str
    finish_reason: RewriteFinish
    text: str  # the whole reply (unchanged when cancelled)
    token_ids: list[int]
    span_start: int
    span_end: int
    rewritten: list[int]  # [start, end) character offsets of the span in `text`
    kept: list[list[int]]  # the [start, end) character ranges of `text` that were held
    stats: GenerationStats


@dataclass(frozen=True)
class Error:
    TYPE: ClassVar[str] = "error"
    request_id: str
    code: ErrorCode
    message: str  # one or two plain sentences for the user
    recoverable: bool  # False: the worker is exiting
    detail: str = ""


@dataclass(frozen=True)
class HardwareReport:
    TYPE: ClassVar[str] = "hardware_report"
    request_id: str
    report: dict[str, Any]


@dataclass(frozen=True)
class Unloaded:
    TYPE: ClassVar[str] = "unloaded"
    request_id: str


@dataclass(frozen=True)
class ApiServerStarted:
    TYPE: ClassVar[str] = "api_server_started"
    request_id: str
    base_url: str  # e.g. http://127.0.0.1:1234/v1
    host: str
    port: int


@dataclass(frozen=True)
class ApiServerStopped:
    TYPE: ClassVar[str] = "api_server_stopped"
    request_id: str


@dataclass(frozen=True)
class ApiRequestLogged:
    """One finished HTTP request, for the GUI's live request log (request_id: the StartApiServer's)."""

    TYPE: ClassVar[str] = "api_request_logged"
    request_id: str
    method: str
    path: str
    status: int  # HTTP status; 499 when the client hung up
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_per_s: float = 0.0
    wall_s: float = 0.0


Request = Union[
    Hello, LoadModel, Generate, RewriteSpan, Cancel, Unload, Shutdown, ProbeHardware, StartApiServer, StopApiServer
]
Event = Union[
    Ready,
    LoadProgress,
    ModelLoaded,
    Draft,
    CanvasCommitted,
    Done,
    SpanDraft,
    SpanRewritten,
    Error,
    HardwareReport,
    Unloaded,
    ApiServerStarted,
    ApiServerStopped,
    ApiRequestLogged,
]

REQUEST_TYPES: dict[str, type] = {cls.TYPE: cls for cls in typing.get_args(Request)}
EVENT_TYPES: dict[str, type] = {cls.TYPE: cls for cls in typing.get_args(Event)}

# Events that carry results and must never be dropped by draft coalescing.
MESSAGE_TYPES = {**REQUEST_TYPES, **EVENT_TYPES}


# ---------------------------------------------------------------------------- wire format


def to_dict(message: Any) -> dict[str, Any]:
    return {"type": message.TYPE, **_plain(message)}


def _plain(value: Any) -> Any:
    """Like dataclasses.asdict, without deep-copying plain lists: a draft is encoded per step."""
    if dataclasses.is_dataclass(value):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return [_plain(item) for item in value]
    return value


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def encode(message: Any) -> str:
    """One line of JSON, without the newline."""
    return json.dumps(to_dict(message), ensure_ascii=False, separators=(",", ":"))


def decode(line: str | bytes, allowed: dict[str, type] = MESSAGE_TYPES) -> Any:
    """Parses one line into a message dataclass; raises ProtocolError if it is not one."""
    payload = _parse_json(line)
    if not isinstance(payload, dict):
        raise ProtocolError("a message must be a JSON object")
    type_tag = payload.pop("type", None)
    cls = allowed.get(type_tag) if isinstance(type_tag, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {type_tag!r}")
    return _build(cls, payload, type_tag)


def request_id_of(line: str | bytes) -> str:
    """Best-effort request id of a line that failed to decode, so the error can refer to it."""
    try:
        payload = _parse_json(line)
    except ProtocolError:
        return ""
    value = payload.get("request_id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else ""


def _parse_json(line: str | bytes) -> Any:
    try:
        return json.loads(line)
    except RecursionError:
        raise ProtocolError("not JSON this receiver can read: nested too deeply") from None
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer of more than 4,300 digits
        raise ProtocolError(f"not JSON: {exc}") from None


def _build(cls: type, payload: dict[str, Any], where: str) -> Any:
    hints = _type_hints(cls)
    kwargs = {}
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in payload.items():
        if name not in known:
            continue  # tolerate fields added by a newer minor revision
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    missing = [
        name
        for name, f in known.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ProtocolError(f"{where}: missing field(s) {', '.join(missing)}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, where)
            except ProtocolError as exc:
                errors.append(str(exc))
        raise ProtocolError(f"{where}: {value!r} matches none of {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise ProtocolError(f"{where}: expected null")
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise ProtocolError(f"{where}: {value!r} is not one of {typing.get_args(hint)}")
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list")
        (item_hint,) = typing.get_args(hint)
        if item_hint in (str, int, bool) and all(type(item) is item_hint for item in value):
            return value  # the common case, checked in one pass: a draft has 3 lists per step
        return [_coerce(item, item_hint, f"{where}[]") for item in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected an object")
        return _build(hint, dict(value), where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ProtocolError(f"{where}: expected true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ProtocolError(f"{where}: expected an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ProtocolError(f"{where}: expected a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ProtocolError(f"{where}: expected a string")
    raise ProtocolError(f"{where}: unsupported field type {hint}")
