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
    red_again = write_test_image(tmp_path / "red-again.jpg", color=(220, 30, 30))
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
    assert red_again.exists()


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
