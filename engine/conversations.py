"""Per-conversation KV caches, so a follow-up turn encodes only its new tokens.

The cache that `generate()` returns holds everything but the last canvas. A follow-up feeds
the rest of the exact token history it generated (the last canvas up to its EOS), then the
new turn as the chat template renders it. Anything else — an edited or regenerated history,
a different system prompt, a reply cut by length or cancelled — is re-encoded from scratch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from engine.generation import encode_prompt, render_prompt

log = logging.getLogger("canvas_chat.engine.conversations")


@dataclass
class CachedConversation:
    messages: list[dict[str, str]]  # system prompt first, the generated reply last
    token_history: list[int]  # every token fed or generated, up to the reply's EOS
    eos_text: str  # the EOS token as text, to find where the template closes the turn
    past_key_values: Any
    cached_tokens: int  # how many of token_history the cache holds


@dataclass
class PromptPlan:
    input_ids: list[int]  # what to feed generate()
    full_ids: list[int]  # the whole conversation's tokens, cached part included
    past_key_values: Any
    cached_tokens: int


class ConversationCaches:
    def __init__(self, max_conversations: int = 4):
        self.max_conversations = max_conversations
        self._entries: OrderedDict[str, CachedConversation] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def drop(self, conversation_id: str) -> None:
        self._entries.pop(conversation_id, None)

    def clear(self) -> None:
        self._entries.clear()

    def plan(self, tokenizer, conversation_id: str, messages: list[dict[str, str]], reuse_cache: bool) -> PromptPlan:
        """How to encode `messages` (ending with the new user turn) given what is cached."""
        entry = self._entries.get(conversation_id) if conversation_id else None
        continuation = self._continuation_ids(tokenizer, entry, messages) if entry else None
        if continuation is None:
            if entry is not None:
                log.info("conversation %s: history changed, re-encoding", conversation_id)
                self.drop(conversation_id)
            full_ids = encode_prompt(tokenizer, messages)
            return PromptPlan(full_ids, full_ids, None, 0)
        full_ids = entry.token_history + continuation
        if not reuse_cache:
            return PromptPlan(full_ids, full_ids, None, 0)
        # The cache is mutated by generate(): from here on this entry is spent.
        self._entries.pop(conversation_id)
        return PromptPlan(full_ids[entry.cached_tokens :], full_ids, entry.past_key_values, entry.cached_tokens)

    def remember(
        self,
        tokenizer,
        conversation_id: str,
        messages: list[dict[str, str]],
        reply_text: str,
        full_ids: list[int],
        reply_ids: list[int],
        past_key_values: Any,
    ) -> None:
        """Keeps the cache of a turn that ended with EOS (others are re-encoded next time)."""
        if not conversation_id or past_key_values is None:
            return
        eos_text = tokenizer.decode(reply_ids[-1:]) if reply_ids else ""
        history = list(full_ids) + list(reply_ids)
        self._entries[conversation_id] = CachedConversation(
            messages=[*messages, {"role": "assistant", "content": reply_text}],
            token_history=history,
            eos_text=eos_text,
            past_key_values=past_key_values,
            cached_tokens=past_key_values.get_seq_length(),
        )
        self._entries.move_to_end(conversation_id)
        while len(self._entries) > self.max_conversations:
            self._entries.popitem(last=False)

    @staticmethod
    def _continuation_ids(tokenizer, entry: CachedConversation, messages: list[dict[str, str]]) -> list[int] | None:
        previous = entry.messages
        if len(messages) <= len(previous) or messages[: len(previous)] != previous or not entry.eos_text:
            return None
        closed = render_prompt(tokenizer, previous, add_generation_prompt=False)
        extended = render_prompt(tokenizer, messages, add_generation_prompt=True)
        end_of_reply = closed.rfind(entry.eos_text)
        if end_of_reply < 0 or not extended.startswith(closed):
            return None
        # What the template writes after the reply's EOS (e.g. "\n"), then the new turn.
        new_text = closed[end_of_reply + len(entry.eos_text) :] + extended[len(closed) :]
        return tokenizer.encode(new_text, add_special_tokens=False)
