"""Gemma 4's chat format beyond plain turns: tools and thinking in, the parsed reply out.

Rendering always goes through the model folder's own chat template; parsing uses transformers'
response parser for the Gemma 4 template family (unless the tokenizer brings its own).
"""

from __future__ import annotations

from typing import Any

from engine.errors import EngineError


def response_template(tokenizer) -> dict:
    """The tokenizer's own response template, else transformers' one for the Gemma 4 family."""
    own = getattr(tokenizer, "response_template", None)
    if own is not None:
        return own
    # DiffusionGemma writes Gemma 4's chat format; transformers 5.23 (pinned) keeps that
    # family's parser template with its serving code, keyed by model type.
    from transformers.cli.serving.utils import _RESPONSE_TEMPLATE_FALLBACKS

    return _RESPONSE_TEMPLATE_FALLBACKS[("gemma4",)]


def encode_chat(tokenizer, messages: list[dict[str, Any]], tools: list[dict] | None = None, thinking: bool = False) -> list[int]:
    """Prompt ids with the generation prompt; thinking on passes the template's `enable_thinking`."""
    kwargs: dict[str, Any] = {"enable_thinking": True} if thinking else {}
    try:
        encoded = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=True, add_generation_prompt=True, return_dict=True, **kwargs
        )
    except Exception as exc:  # jinja2's TemplateError and whatever a template raises
        raise EngineError("bad_settings", f"The model's chat template could not render this conversation: {exc}") from None
    return list(encoded["input_ids"])


def decode_for_parsing(tokenizer, ids: list[int]) -> str:
    """Text with the format's markers (`<|channel>`, `<turn|>`...) but without pad/bos/mask filler.

    The parser needs the special tokens that delimit regions; a pad the sampler left inside a
    canvas is not text and must not reach the answer.
    """
    filler = {tokenizer.pad_token_id, tokenizer.bos_token_id, getattr(tokenizer, "mask_token_id", None)}
    return tokenizer.decode([t for t in ids if t not in filler], skip_special_tokens=False)


def parse_reply(tokenizer, prompt_ids: list[int], reply_ids: list[int]) -> dict[str, Any]:
    """The reply as a message dict: `content`, and `reasoning_content` / `tool_calls` when present."""
    from transformers.utils.chat_parsing import parse_response

    return parse_response(
        decode_for_parsing(tokenizer, reply_ids),
        response_template(tokenizer),
        prefix=tokenizer.decode(prompt_ids, skip_special_tokens=False),
    )
