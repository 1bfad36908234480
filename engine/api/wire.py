"""OpenAI wire format: request bodies checked field by field, and the JSON the server answers.

Standard library only. Every field a client may send is either used, documented as ignored,
or refused with a 400 that names it (docs/api.md lists which is which).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from engine.protocol import GenerationSettings

MAX_BODY_BYTES = 4 * 1024 * 1024  # 4 MiB: far above any chat that fits the model's context

# Sent by most clients with harmless defaults; a diffusion model has no use for them.
IGNORED_FIELDS = ("temperature", "top_p", "user", "parallel_tool_calls", "metadata", "store", "service_tier")


class ApiRefusal(Exception):
    """A request the server will not run; becomes an OpenAI-shaped error response."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            413: "invalid_request_error",
            503: "service_unavailable",
        }.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ApiRequest:
    """What the engine loop needs to run one HTTP request; chat and plain completions alike."""

    kind: str  # "chat" or "completion"
    model: str
    settings: GenerationSettings
    stream: bool = False
    include_usage: bool = False
    stream_drafts: bool = False  # extension: one chunk per denoising step too
    messages: list[dict[str, Any]] = field(default_factory=list)  # chat-template messages
    prompt: str = ""  # completions only
    tools: list[dict[str, Any]] | None = None
    thinking: bool = False
    stop: tuple[str, ...] = ()


def parse_chat_request(body: Any) -> ApiRequest:
    body = _object(body)
    _refuse_unsupported(body)
    messages = _chat_messages(body.get("messages"))
    tools = _tools(body.get("tools"))
    tools = _apply_tool_choice(body.get("tool_choice"), tools)
    return ApiRequest(
        kind="chat",
        model=_string(body, "model", default=""),
        settings=_settings(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"),
        stream=_bool(body, "stream"),
        include_usage=_include_usage(body),
        stream_drafts=_bool(body, "stream_drafts"),
        messages=messages,
        tools=tools,
        thinking=_thinking(body),
        stop=_stop(body.get("stop")),
    )


def parse_completion_request(body: Any) -> ApiRequest:
    body = _object(body)
    _refuse_unsupported(body)
    for name in ("echo", "suffix"):
        if body.get(name):
            raise ApiRefusal(400, f"'{name}' is not supported by this server.", name, "unsupported_field")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiRefusal(400, "'prompt' must be a non-empty string (one prompt per request).", "prompt")
    return ApiRequest(
        kind="completion",
        model=_string(body, "model", default=""),
        settings=_settings(body, "max_tokens"),
        stream=_bool(body, "stream"),
        include_usage=_include_usage(body),
        stream_drafts=_bool(body, "stream_drafts"),
        prompt=prompt,
        stop=_stop(body.get("stop")),
    )


# ---------------------------------------------------------------------------- field checks


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiRefusal(400, "The request body must be a JSON object.")
    return body


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiRefusal(400, "'n' must be 1: this server writes one reply per request.", "n", "unsupported_field")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise ApiRefusal(
            400,
            "'logprobs' is not supported: a diffusion model settles tokens over several steps, so there is no "
            "single probability per token to report.",
            "logprobs",
            "unsupported_field",
        )
    if body.get("top_k") not in (None, 0, -1):
        raise ApiRefusal(
            400,
            "'top_k' does not apply to DiffusionGemma: use 'entropy_bound' (how many tokens settle per step) "
            "and 't_min'/'t_max' (the sampling temperature schedule) instead.",
            "top_k",
            "unsupported_field",
        )
    for name, neutral in (("presence_penalty", 0), ("frequency_penalty", 0), ("repetition_penalty", 1)):
        if body.get(name) not in (None, neutral):
            raise ApiRefusal(
                400,
                f"'{name}' is not supported: a diffusion model writes a whole canvas at once, so penalties on "
                "earlier tokens do not apply.",
                name,
                "unsupported_field",
            )
    if body.get("logit_bias"):
        raise ApiRefusal(400, "'logit_bias' is not supported by this server.", "logit_bias", "unsupported_field")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise ApiRefusal(
            400,
            "'response_format' other than {\"type\": \"text\"} is not supported: there is no constrained decoding.",
            "response_format",
            "unsupported_field",
        )
    if "functions" in body or "function_call" in body:
        raise ApiRefusal(400, "The legacy 'functions' field is not supported: use 'tools'.", "functions", "unsupported_field")


def _settings(body: dict[str, Any], max_tokens_name: str) -> GenerationSettings:
    settings = GenerationSettings(
        max_new_tokens=_optional_int(body, max_tokens_name),
        max_denoising_steps=_optional_int(body, "denoising_steps"),
        entropy_bound=_optional_number(body, "entropy_bound"),
        t_min=_optional_number(body, "t_min"),
        t_max=_optional_number(body, "t_max"),
        seed=_optional_int(body, "seed"),
    )
    problems = settings.problems()
    if problems:
        raise ApiRefusal(400, "Invalid generation settings: " + "; ".join(problems) + ".")
    return settings


def _chat_messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise ApiRefusal(400, "'messages' must be a non-empty list.", "messages")
    messages: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}  # tool_call_id -> function name, for the tool messages after
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiRefusal(400, f"{where} must be an object.", where)
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ApiRefusal(400, f"{where}.role must be system, developer, user, assistant or tool (got {role!r}).", where)
        content = _text_content(message.get("content"), where)
        entry: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant" and message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise ApiRefusal(400, f"{where}.tool_calls: each call needs function.name.", where)
                arguments = function.get("arguments") or "{}"
                if isinstance(arguments, str):
                    try:
                        arguments = json.loads(arguments)
                    except json.JSONDecodeError:
                        raise ApiRefusal(400, f"{where}.tool_calls: arguments must be a JSON object.", where) from None
                if not isinstance(arguments, dict):
                    raise ApiRefusal(400, f"{where}.tool_calls: arguments must be a JSON object.", where)
                calls.append({"type": "function", "function": {"name": function["name"], "arguments": arguments}})
                if isinstance(call.get("id"), str):
                    tool_names[call["id"]] = function["name"]
            entry["tool_calls"] = calls
        if role == "tool":
            name = message.get("name") or tool_names.get(message.get("tool_call_id") or "")
            if not isinstance(name, str) or not name:
                raise ApiRefusal(
                    400, f"{where}: a tool message needs a tool_call_id of an earlier tool call (or a name).", where
                )
            entry["name"] = name
        elif role != "assistant" and content is None:
            raise ApiRefusal(400, f"{where}.content is required.", where)
        messages.append(entry)
    if messages[-1]["role"] not in ("user", "tool"):
        raise ApiRefusal(400, "The last message must be from the user or a tool result.", "messages")
    return messages


def _text_content(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiRefusal(400, f"{where}.content: only text parts are supported (got {kind!r}).", where)
        return "".join(texts)
    raise ApiRefusal(400, f"{where}.content must be a string or a list of text parts.", where)


def _tools(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ApiRefusal(400, "'tools' must be a list.", "tools")
    tools = []
    for index, tool in enumerate(raw):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise ApiRefusal(400, f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.", "tools")
        tools.append({"type": "function", "function": function})
    return tools or None


def _apply_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if choice in (None, "auto"):
        return tools
    if choice == "none":
        return None  # the model is not told about the tools, so it cannot call one
    raise ApiRefusal(
        400,
        "'tool_choice' may be \"auto\" or \"none\": a specific or required tool call cannot be forced.",
        "tool_choice",
        "unsupported_field",
    )


def _thinking(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    kwargs = body.get("chat_template_kwargs")
    if thinking is None and isinstance(kwargs, dict):
        thinking = kwargs.get("enable_thinking")
    effort = body.get("reasoning_effort")
    if thinking is None and isinstance(effort, str):
        thinking = effort != "none"
    if thinking is not None and not isinstance(thinking, bool):
        raise ApiRefusal(400, "'thinking' must be true or false.", "thinking")
    return bool(thinking)


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw) or len(raw) > 4:
        raise ApiRefusal(400, "'stop' must be a string or a list of up to 4 non-empty strings.", "stop")
    return tuple(raw)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise ApiRefusal(400, "'stream_options' must be an object.", "stream_options")
    return bool(options.get("include_usage"))


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiRefusal(400, f"'{name}' must be true or false.", name)
    return value


def _string(body: dict[str, Any], name: str, default: str) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise ApiRefusal(400, f"'{name}' must be a string.", name)
    return value


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiRefusal(400, f"'{name}' must be an integer.", name)
    return value


def _optional_number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiRefusal(400, f"'{name}' must be a number.", name)
    return float(value)


# ---------------------------------------------------------------------------- answers


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def model_list(model_id: str | None) -> dict[str, Any]:
    data = [] if model_id is None else [{"id": model_id, "object": "model", "created": 0, "owned_by": "canvas-chat"}]
    return {"object": "list", "data": data}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},  # reused from the previous turn's KV cache
    }


def chat_completion(
    completion_id: str, model: str, message: dict[str, Any], finish_reason: str, used: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": used,
    }


def chat_chunk(
    completion_id: str,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    used: dict[str, int] | None = None,
    draft: dict[str, Any] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if used is not None:
        chunk["usage"] = used
    if draft is not None:
        chunk["canvas_draft"] = draft
    return chunk


def text_completion(
    completion_id: str, model: str, text: str, finish_reason: str | None, used: dict[str, int] | None, chunk: bool = False
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [] if text is None else [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
    }
    if used is not None:
        answer["usage"] = used
    return answer


def openai_finish_reason(engine_reason: str, has_tool_calls: bool, stopped_by_sequence: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    if stopped_by_sequence:
        return "stop"
    return "length" if engine_reason == "length" else "stop"
