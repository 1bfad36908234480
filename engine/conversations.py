"""Per-conversation KV caches: a follow-up turn re-encodes only what the cache does not hold.

The model is always conditioned on the chat template's rendering of the whole conversation
(what stock transformers would feed it). The cache kept for a conversation covers exactly a
prefix of that rendering — the conversation up to the end of the last user turn, before the
generation prompt, which the template renders differently once the reply is a past turn — and a
follow-up reuses it only if its own rendering starts with those very tokens.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.generation import encode_prompt

log = logging.getLogger("canvas_chat.engine.conversations")


@dataclass
class CachedPrefix:
    token_ids: list[int]  # the rendered conversation's first tokens, which the cache holds exactly
    past_key_values: Any


@dataclass
class PromptPlan:
    full_ids: list[int]  # the chat template's rendering of the whole conversation
    past_key_values: Any  # holds full_ids[:cached_tokens], or None
    cached_tokens: int
    keep_prefix: int  # encode full_ids up to here first and keep a copy of that cache (0: keep nothing)

    @property
    def input_ids(self) -> list[int]:
        """What generate() still has to encode."""
        return self.full_ids[self.cached_tokens :]


class ConversationCaches:
    """The latest conversations' caches, least recently used first out: at most `max_conversations`
    of them and, where `budget_bytes` is set (the worker sets it on CUDA), at most that many bytes."""

    def __init__(self, max_conversations: int = 4, budget_bytes: int | None = None):
        self.max_conversations = max_conversations
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, CachedPrefix] = OrderedDict()
        self._bytes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, conversation_id: str) -> bool:
        return conversation_id in self._entries

    @property
    def total_bytes(self) -> int:
        return sum(self._bytes.values())

    def holds_other_than(self, conversation_id: str) -> bool:
        return any(held != conversation_id for held in self._entries)

    def drop(self, conversation_id: str) -> None:
        self._entries.pop(conversation_id, None)
        self._bytes.pop(conversation_id, None)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes.clear()

    def plan(self, tokenizer, conversation_id: str, messages: list[dict[str, str]], reuse_cache: bool) -> PromptPlan:
        """How to encode `messages` (ending with the new user turn) given what is cached."""
        full_ids = encode_prompt(tokenizer, messages)
        if not conversation_id or not reuse_cache:
            return PromptPlan(full_ids, None, 0, 0)  # stock generate(); the conversation's cache stays as it is
        keep = stable_prefix_length(tokenizer, messages, full_ids)
        # The cache is mutated by generate(): from here on the entry is spent either way.
        entry = self._entries.pop(conversation_id, None)
        self._bytes.pop(conversation_id, None)
        if entry is not None:
            cached = len(entry.token_ids)
            if cached <= keep and full_ids[:cached] == entry.token_ids:
                return PromptPlan(full_ids, entry.past_key_values, cached, keep)
            log.info("conversation %s: history changed, re-encoding", conversation_id)
        return PromptPlan(full_ids, None, 0, keep)

    def remember(self, conversation_id: str, token_ids: list[int], past_key_values: Any) -> None:
        """Keeps a cache that holds exactly `token_ids`, the start of the conversation's rendering."""
        if not conversation_id or past_key_values is None or not token_ids:
            return
        self._entries[conversation_id] = CachedPrefix(list(token_ids), past_key_values)
        self._entries.move_to_end(conversation_id)
        self._bytes[conversation_id] = cache_bytes(past_key_values)
        while len(self._entries) > self.max_conversations:
            self._evict_oldest("more than %d conversations" % self.max_conversations)
        # Never the entry just stored: it is the conversation the user is in.
        while self.budget_bytes is not None and self.total_bytes > self.budget_bytes and len(self._entries) > 1:
            self._evict_oldest(f"caches over the {self.budget_bytes:,}-byte budget")

    def _evict_oldest(self, why: str) -> None:
        evicted, _ = self._entries.popitem(last=False)
        freed = self._bytes.pop(evicted, 0)
        log.info("conversation %s: cache dropped (%s), %d bytes freed, %d bytes still held", evicted, why, freed, self.total_bytes)


def cache_bytes(past_key_values: Any) -> int:
    """The memory a cache holds: the storages behind its layers' K and V, whole, each counted once.
    A `DynamicCache` layer's tensors are their own storage; a preallocated layer's (engine.kv_cache)
    are views of its buffers, whose room beyond the tokens held is memory all the same."""
    seen: dict[tuple[str, int], int] = {}
    for layer in getattr(past_key_values, "layers", ()):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is None or not hasattr(tensor, "untyped_storage"):
                continue
            storage = tensor.untyped_storage()
            seen[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def stable_prefix_length(tokenizer, messages: list[dict[str, str]], full_ids: list[int]) -> int:
    """How many leading tokens of `full_ids` the next turn's rendering will share: the messages
    rendered without the generation prompt, as far as they agree with `full_ids` token for token.
    Always leaves at least one token for generate() to encode."""
    closed = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=False, return_dict=True)
    closed_ids = list(closed["input_ids"])
    shared = 0
    for ours, theirs in zip(full_ids, closed_ids):
        if ours != theirs:
            break
        shared += 1
    return min(shared, len(full_ids) - 1)


def cuda_budget_bytes(config: dict[str, Any], quantization: str, free_bytes: int, context_tokens: int) -> int:
    """The bytes kept conversations' caches may hold on a GPU with `free_bytes` free once the model
    is loaded: what is left after one conversation's working set as engine.planner counts it (its
    cache and the copy kept for the next turn, the larger of a prompt's encoding and a denoising
    step, allocator slack) at `context_tokens`. The working set counts the active conversation's
    own kept copy once more, which errs on the side of memory for the reply being generated."""
    from engine.planner import FRAGMENTATION, activation_bytes, architecture_from_config, kv_cache_bytes

    arch = architecture_from_config(config)
    working = kv_cache_bytes(arch, context_tokens) + activation_bytes(arch, context_tokens, arch.canvas_length, quantization)
    return max(0, free_bytes - int((1 + FRAGMENTATION) * working))


def cuda_budget_of(loaded: Any) -> int | None:
    """On CUDA, the bytes kept conversations' caches may hold (cuda_budget_bytes):
    measured right after loading, so the model's weights are already out of what is free. On the CPU,
    None: RAM is not planned, and the count limit alone applies."""
    import torch

    if not str(loaded.device).startswith("cuda") or not torch.cuda.is_available():
        return None
    from engine.hardware import DEFAULT_CONTEXT_TOKENS

    device = torch.device(loaded.device)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # torch's pool is free to it too
    config = json.loads((Path(loaded.path) / "config.json").read_text(encoding="utf-8"))
    budget = cuda_budget_bytes(config, loaded.quantization, free, DEFAULT_CONTEXT_TOKENS)
    log.info("conversation caches may hold %.2f GiB (%.2f GiB free after loading)", budget / 2**30, free / 2**30)
    return budget
