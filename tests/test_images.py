"""Images in a conversation, through the real worker on a tiny model with a tiny vision tower."""

from __future__ import annotations

import pytest

from engine import protocol as p
from tests.tiny_model import write_test_image
from tests.worker_process import WorkerProcess, new_id, user


@pytest.fixture(scope="module")
def worker(tiny_vision_model_dir):
    with WorkerProcess() as process:
        process.hello()
        (*_, loaded) = process.load(tiny_vision_model_dir)
        assert isinstance(loaded, p.ModelLoaded) and loaded.accepts_images, loaded
        yield process
        assert process.close() == 0


def ask(worker, *parts, seed: int = 7) -> list:
    message = p.ChatMessage("user", list(parts))
    request = p.Generate(new_id(), [message], settings=p.GenerationSettings(max_new_tokens=16, seed=seed))
    return worker.request(request)


def test_a_reply_to_an_image_is_conditioned_on_its_pixels(worker, tmp_path):
    red = write_test_image(tmp_path / "red.png", color=(220, 30, 30))
    blue = write_test_image(tmp_path / "blue.webp", size=(64, 48), color=(20, 40, 230))
    question = p.TextPart("What is in this picture?")
    *_, text_only = worker.request(
        p.Generate(new_id(), [user("What is in this picture?")], settings=p.GenerationSettings(max_new_tokens=16, seed=7))
    )
    *_, on_red = ask(worker, p.ImagePart(str(red), "image/png"), question)
    *_, on_red_twice = ask(worker, p.ImagePart(str(red), "image/png"), question)
    *_, on_blue = ask(worker, p.ImagePart(str(blue), "image/webp"), question)
    for done in (text_only, on_red, on_red_twice, on_blue):
        assert isinstance(done, p.Done), done
    # The image's soft tokens (and <boi>, <eoi>) are in the prompt the model read...
    assert on_red.stats.prompt_tokens > text_only.stats.prompt_tokens + 40
    # ...and the vision tower's features of those very pixels: the same seed, another image,
    # another reply; the same image, the same reply.
    assert on_red.token_ids == on_red_twice.token_ids
    assert on_blue.token_ids != on_red.token_ids


def test_two_images_and_a_follow_up_turn(worker, tmp_path):
    first = write_test_image(tmp_path / "one.png", color=(10, 200, 10))
    second = write_test_image(tmp_path / "two.jpg", size=(40, 90))
    messages = [
        p.ChatMessage("user", [p.ImagePart(str(first), "image/png"), p.TextPart("And this?")]),
        p.ChatMessage("assistant", "A green square."),
        p.ChatMessage("user", [p.TextPart("Compare with"), p.ImagePart(str(second), "image/jpeg")]),
    ]
    *_, done = worker.request(p.Generate(new_id(), messages, "chat-2", settings=p.GenerationSettings(max_new_tokens=16)))
    assert isinstance(done, p.Done), done


@pytest.mark.parametrize(
    "content, why",
    [
        (b"\x89PNG\r\n\x1a\n this is not really a PNG", "cannot be read"),
        (b"GIF89a" + b"\x00" * 64, "cannot be read"),
    ],
    ids=["corrupt-png", "gif"],
)
def test_an_unreadable_image_is_a_plain_recoverable_error(worker, tmp_path, content, why):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    *_, error = ask(worker, p.ImagePart(str(path), "image/png"), p.TextPart("Hi"))
    assert isinstance(error, p.Error) and error.code == "bad_image" and error.recoverable, error
    assert "broken.png" in error.message and "Traceback" not in error.message
    # The worker goes on serving.
    *_, done = worker.request(p.Generate(new_id(), [user("Hi")], settings=p.GenerationSettings(max_new_tokens=16)))
    assert isinstance(done, p.Done)


def test_an_image_over_the_size_limit_is_refused_unread(worker, tmp_path):
    path = tmp_path / "huge.png"
    with path.open("wb") as file:
        file.truncate(p.MAX_IMAGE_BYTES + 1)
    *_, error = ask(worker, p.ImagePart(str(path), "image/png"), p.TextPart("Hi"))
    assert isinstance(error, p.Error) and error.code == "bad_image", error
    assert f"larger than {p.MAX_IMAGE_BYTES // 2**20} MB" in error.message


def test_the_demo_model_refuses_images_with_a_reason(worker, tiny_vision_model_dir, tmp_path):
    import shutil

    # The demo model's vision tower is untrained: a folder with the demo's marker is refused images.
    demo = shutil.copytree(tiny_vision_model_dir, tmp_path / "demo-like")
    (demo / "demo.json").write_text("{}", encoding="utf-8")
    image = write_test_image(tmp_path / "a.png")
    (*_, loaded) = worker.load(str(demo))
    assert isinstance(loaded, p.ModelLoaded) and loaded.is_demo and not loaded.accepts_images
    *_, error = ask(worker, p.ImagePart(str(image), "image/png"), p.TextPart("Hi"))
    assert isinstance(error, p.Error) and error.code == "vision_unavailable" and error.recoverable, error
    assert "The demo model cannot read images" in error.message


def test_the_planner_counts_the_vision_tower_and_an_images_encoding():
    from engine import planner
    from engine.errors import EngineError
    from engine.images import check_vision_memory
    from engine.real_config import load_config_dict

    config = load_config_dict("google/diffusiongemma-26B-A4B-it")
    arch = planner.architecture_from_config(config)
    text_only = planner.plan(config, "nf4", 4096, 24 * planner.GIB)
    with_images = planner.plan(config, "nf4", 4096, 24 * planner.GIB, vision=True)
    vision_weights = with_images.weights_breakdown["vision"]
    assert 1.0 < vision_weights / planner.GIB < 1.2  # 0.57 B parameters in bf16
    assert with_images.total_bytes - text_only.total_bytes >= vision_weights
    # One image at 280 soft tokens is 2,520 patches through 27 layers of 16 heads.
    assert arch.image_patches == 2520
    assert 0.3 < planner.image_encoding_bytes(arch) / planner.GIB < 1.0
    # With a short canvas the image's encoding is the peak: the plan with images counts it.
    assert planner.activation_bytes(arch, 16, 16, "nf4", vision=True) == planner.image_encoding_bytes(arch)
    needed = check_vision_memory(config, 8 * planner.GIB)
    assert needed == vision_weights + planner.image_encoding_bytes(arch)
    with pytest.raises(EngineError, match="GiB is free") as refused:
        check_vision_memory(config, needed - 1)
    assert refused.value.code == "out_of_memory"


def test_a_vision_tower_left_out_at_load_is_read_from_the_checkpoint_on_the_first_image(tiny_vision_model_dir):
    import torch

    from engine.images import has_vision_tower, load_vision_tower
    from engine.loading import load_model

    loaded = load_model(str(tiny_vision_model_dir), device="cpu")
    encoder = loaded.model.model.encoder
    original = {k: v.clone() for k, v in {**encoder.vision_tower.state_dict(), **{
        f"embed.{k}": v for k, v in encoder.embed_vision.state_dict().items()}}.items()}
    encoder.vision_tower = encoder.embed_vision = None  # as a 4-bit load without vision leaves it
    assert not has_vision_tower(loaded.model)
    progress = []
    load_vision_tower(loaded.model, tiny_vision_model_dir, lambda *event: progress.append(event))
    assert has_vision_tower(loaded.model)
    reloaded = {**encoder.vision_tower.state_dict(), **{f"embed.{k}": v for k, v in encoder.embed_vision.state_dict().items()}}
    assert reloaded.keys() == original.keys()
    for name, value in original.items():
        assert torch.equal(reloaded[name], value), name
    assert progress[0][0] == "vision" and progress[-1][2] == 1.0


def test_a_version_3_gui_is_refused_by_this_worker_naming_both_versions():
    assert p.PROTOCOL_VERSION == 4
    with WorkerProcess() as process:
        process.send(p.Hello("old", 3, "canvas-chat 3"))
        error = process.next_event()
        assert isinstance(error, p.Error) and error.code == "protocol_mismatch" and not error.recoverable
        assert "protocol version 3" in error.message and "version 4" in error.message
        assert process.process.wait(30) == 3
        process.close()


@pytest.mark.slow
@pytest.mark.log_expected("Failed to load CPU gemm_4bit_forward")  # bitsandbytes on a CPU without `kernels`
def test_a_4_bit_load_brings_the_vision_tower_in_with_progress_on_the_first_image(tiny_vision_model_dir, tmp_path):
    image = write_test_image(tmp_path / "a.png", color=(220, 30, 30))
    with WorkerProcess() as process:
        process.hello()
        (*_, loaded) = process.load(tiny_vision_model_dir, device="cpu", quantization="nf4")
        assert isinstance(loaded, p.ModelLoaded) and loaded.quantization == "nf4" and loaded.accepts_images, loaded
        first = ask(process, p.ImagePart(str(image), "image/png"), p.TextPart("What is this?"))
        second = ask(process, p.ImagePart(str(image), "image/png"), p.TextPart("What is this?"))
        assert process.close() == 0
    assert isinstance(first[-1], p.Done) and isinstance(second[-1], p.Done), (first[-1], second[-1])
    vision = [e for e in first if isinstance(e, p.LoadProgress)]
    assert vision and all(e.stage == "vision" for e in vision) and vision[-1].fraction == 1.0
    assert "vision tower" in vision[0].message.lower()
    # Loaded once: the next image finds it in place, and the same image and seed give the same reply.
    assert not any(isinstance(e, p.LoadProgress) for e in second)
    assert first[-1].token_ids == second[-1].token_ids
