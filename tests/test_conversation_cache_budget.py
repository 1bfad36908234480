"""Kept conversations' caches within a byte budget (least recently used out, measured on real
caches of the tiny model), and a reply that runs out of GPU memory while other conversations'
caches are held is retried once without them."""

from __future__ import annotations

import pytest

from engine import protocol as p
from tests.worker_process import WorkerProcess, assistant, new_id, user

REPLY = "Paris is the capital of France."


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from engine.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu", quantization="none").model


def _encoded(model, tokens: int, cache=None):
    from engine.generation import encode_into_cache

    return encode_into_cache(model, [5 + i % 100 for i in range(tokens)], cache, 0)


def test_cache_bytes_counts_whole_preallocated_buffers_and_dynamic_cache_tensors(tiny_model):
    from transformers import DynamicCache

    from engine.conversations import cache_bytes

    preallocated = _encoded(tiny_model, 8)
    held_views = sum(layer.keys.nbytes + layer.values.nbytes for layer in preallocated.layers)
    whole = sum(layer.buffers.keys.nbytes + layer.buffers.values.nbytes for layer in preallocated.layers)
    assert cache_bytes(preallocated) == whole > held_views  # the buffers' room is memory too

    dynamic = _encoded(tiny_model, 8, DynamicCache(config=tiny_model.config.get_text_config(decoder=True)))
    assert cache_bytes(dynamic) == sum(layer.keys.nbytes + layer.values.nbytes for layer in dynamic.layers) > 0


def test_the_budget_drops_the_least_recently_used_caches_by_bytes_not_count(tiny_model, caplog):
    from engine.conversations import ConversationCaches, cache_bytes

    small, large = _encoded(tiny_model, 8), _encoded(tiny_model, 600)  # full buffers 256 vs 1,024 tokens
    small_bytes, large_bytes = cache_bytes(small), cache_bytes(large)
    assert large_bytes > 2 * small_bytes
    caches = ConversationCaches(max_conversations=4, budget_bytes=large_bytes + small_bytes)
    caches.remember("big", [1, 2], large)
    caches.remember("a", [1, 2], small)
    assert len(caches) == 2
    with caplog.at_level("INFO", logger="canvas_chat.engine.conversations"):
        caches.remember("b", [1, 2], _encoded(tiny_model, 8))  # 3 of 4 conversations, but over the bytes
    assert "big" not in caches and "a" in caches and "b" in caches
    assert caches.total_bytes == 2 * small_bytes
    assert any("big: cache dropped" in record.getMessage() for record in caplog.records)

    caches.budget_bytes = small_bytes // 2  # smaller than any entry: the one just stored stays
    caches.remember("c", [1, 2], _encoded(tiny_model, 8))
    assert len(caches) == 1 and "c" in caches


def _generate(worker, text: str, conversation_id: str) -> list[p.Event]:
    settings = p.GenerationSettings(seed=1, max_new_tokens=32)
    return worker.request(p.Generate(new_id(), [user(text)], conversation_id, settings=settings))


@pytest.mark.log_expected(r"ran out of GPU memory before its first draft")
def test_an_out_of_memory_before_the_first_draft_drops_other_caches_and_the_reply_still_comes(tiny_model_dir):
    # The first reply runs, the second runs out of memory once (its retry runs).
    with WorkerProcess(CANVAS_CHAT_TEST_FORCE_REPLY=REPLY, CANVAS_CHAT_TEST_FAULT="oom_after_replies:1:1") as worker:
        worker.hello()
        worker.load(tiny_model_dir)
        assert isinstance(_generate(worker, "Capital of France?", "other")[-1], p.Done)

        events = _generate(worker, "Capital of France?", "this")
        done = events[-1]
        assert isinstance(done, p.Done) and done.text == REPLY, events
        assert not any(isinstance(e, p.Error) for e in events)
        commits = [e for e in events if isinstance(e, p.CanvasCommitted)]
        assert [c.canvas_index for c in commits] == list(range(len(commits)))  # one attempt's, in order
        assert commits[-1].reply_text == REPLY

        # The other conversation's cache went to make room; the retried one's was kept.
        follow_up = [user("Capital of France?"), assistant(REPLY), user("And Italy?")]
        other = worker.request(p.Generate(new_id(), follow_up, "other", settings=p.GenerationSettings(seed=1, max_new_tokens=32)))[-1]
        this = worker.request(p.Generate(new_id(), follow_up, "this", settings=p.GenerationSettings(seed=1, max_new_tokens=32)))[-1]
        assert isinstance(other, p.Done) and other.stats.cached_tokens == 0
        assert isinstance(this, p.Done) and this.stats.cached_tokens > 0
        assert worker.close() == 0


@pytest.mark.log_expected(r"ran out of GPU memory before its first draft|request \w+ failed")
def test_a_second_out_of_memory_reaches_the_user_as_out_of_memory(tiny_model_dir):
    with WorkerProcess(CANVAS_CHAT_TEST_FORCE_REPLY=REPLY, CANVAS_CHAT_TEST_FAULT="oom_after_replies:1:2") as worker:
        worker.hello()
        worker.load(tiny_model_dir)
        assert isinstance(_generate(worker, "Capital of France?", "other")[-1], p.Done)
        events = _generate(worker, "Capital of France?", "this")
        error = events[-1]
        assert isinstance(error, p.Error) and error.code == "out_of_memory" and error.recoverable, events
        assert not any(isinstance(e, (p.Draft, p.CanvasCommitted)) for e in events)
        assert isinstance(_generate(worker, "Capital of France?", "this")[-1], p.Done)  # and it serves on
        assert worker.close() == 0


@pytest.mark.log_expected(r"request \w+ failed")
def test_an_out_of_memory_after_drafts_were_shown_is_not_retried(tiny_model_dir):
    # A retry would stream a second set of drafts over the ones the GUI already shows.
    with WorkerProcess(CANVAS_CHAT_TEST_FORCE_REPLY=REPLY, CANVAS_CHAT_TEST_FAULT="oom_after_replies:1:1:2") as worker:
        worker.hello()
        worker.load(tiny_model_dir)
        assert isinstance(_generate(worker, "Capital of France?", "other")[-1], p.Done)
        events = _generate(worker, "Capital of France?", "this")
        assert any(isinstance(e, p.Draft) for e in events)
        error = events[-1]
        assert isinstance(error, p.Error) and error.code == "out_of_memory", events
        assert worker.close() == 0


@pytest.mark.log_expected(r"request \w+ failed")
def test_an_out_of_memory_with_no_other_cache_to_drop_is_not_retried(tiny_model_dir):
    with WorkerProcess(CANVAS_CHAT_TEST_FORCE_REPLY=REPLY, CANVAS_CHAT_TEST_FAULT="oom_after_replies:0:1") as worker:
        worker.hello()
        worker.load(tiny_model_dir)
        error = _generate(worker, "Capital of France?", "this")[-1]
        assert isinstance(error, p.Error) and error.code == "out_of_memory", error
        assert worker.close() == 0


def test_the_cuda_budget_is_the_memory_free_after_loading_less_one_conversations_working_set(monkeypatch):
    import types

    import torch

    from engine.conversations import cuda_budget_of
    from engine.planner import GIB, architecture_from_config, kv_cache_resident_bytes
    from engine.real_config import REAL_MODEL_ID, load_config_dict, shipped_model_dir

    folder = shipped_model_dir(REAL_MODEL_ID)
    pool = {"reserved": 0, "allocated": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loaded = types.SimpleNamespace(device="cpu", path=folder, quantization="nf4")
    assert cuda_budget_of(loaded) is None  # a model on the CPU keeps the count limit only, GPU or not
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (9 * GIB, 24 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: pool["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: pool["allocated"])
    loaded.device = "cuda"
    budget = cuda_budget_of(loaded)
    arch = architecture_from_config(load_config_dict(folder))
    one_cache = kv_cache_resident_bytes(arch, 8192, arch.canvas_length)
    # 9 GiB free after the 4-bit model on a 24 GB card: room for a few kept conversations, not all 9 GiB.
    assert 3 * one_cache < budget < 9 * GIB - 2 * one_cache
    pool.update(reserved=2 * GIB, allocated=GIB)  # torch's own pool holds 1 GiB it can reuse
    assert cuda_budget_of(loaded) == budget + GIB
