"""Images in a conversation: read and check the files, expand the image tokens, build `pixel_values`.

The prompt is rendered by the model's own chat template with one image token per image, in place;
each is then widened to `<boi>` + the soft tokens + `<eoi>`, as Gemma 4's processor does.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import protocol as p
from engine.errors import EngineError

log = logging.getLogger("canvas_chat.engine.images")

DEFAULT_SOFT_TOKENS = 280  # the real checkpoint's vision_soft_tokens_per_image
MAX_IMAGE_SIDE = 16_384  # pixels; a larger image is refused before it is decoded


@dataclass
class VisionPrompt:
    token_ids: list[int]
    model_inputs: dict[str, Any]  # pixel_values, image_position_ids, mm_token_type_ids (tensors)
    image_count: int


def model_accepts_images(model: Any, is_demo: bool) -> bool:
    """A trained vision tower: the demo model's is random (it learned text only)."""
    config = getattr(model, "config", None)
    return not is_demo and getattr(config, "vision_config", None) is not None and getattr(config, "image_token_id", None) is not None


def open_image(part: p.ImagePart):
    """The image as an RGB PIL image; a missing, oversized or unreadable file is `bad_image`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(part.path)
    name = path.name or part.path
    try:
        size = path.stat().st_size
    except OSError:
        raise EngineError("bad_image", f"The image {name} cannot be found any more.") from None
    if size > p.MAX_IMAGE_BYTES:
        raise EngineError("bad_image", f"The image {name} is larger than {p.MAX_IMAGE_BYTES // 2**20} MB.")
    try:
        with Image.open(path) as image:
            if (image.format or "").upper() not in {kind.upper() for kind in p.IMAGE_MEDIA_TYPES.values()}:
                raise EngineError("bad_image", f"{name} is a {image.format} image; PNG, JPEG and WebP can be sent.")
            if max(image.size) > MAX_IMAGE_SIDE:
                raise EngineError("bad_image", f"The image {name} is more than {MAX_IMAGE_SIDE:,} pixels on a side.")
            return image.convert("RGB")
    except EngineError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise EngineError("bad_image", f"The image {name} cannot be read ({exc}).") from None


def image_token_text(model: Any, tokenizer: Any) -> str:
    return tokenizer.convert_ids_to_tokens(int(model.config.image_token_id))


def template_messages(messages: list[p.ChatMessage], image_token: str) -> list[dict[str, str]]:
    """Plain-string messages for the chat template: each image becomes one image token, in place."""
    rendered = []
    for message in messages:
        if isinstance(message.content, str):
            rendered.append({"role": message.role, "content": message.content})
            continue
        pieces = []
        for part in message.content:
            if isinstance(part, p.ImagePart):
                pieces.append(image_token)
            else:
                # Typed text never stands for an image: the token count must match the images.
                pieces.append(part.text.replace(image_token, ""))
        rendered.append({"role": message.role, "content": "\n\n".join(pieces)})
    return rendered


def image_processor_for(model: Any):
    """Gemma 4's image processor (PIL backend), sized from the model's config."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    vision = model.config.vision_config
    return Gemma4ImageProcessorPil(
        patch_size=int(getattr(vision, "patch_size", 16)),
        pooling_kernel_size=int(getattr(vision, "pooling_kernel_size", 3)),
        max_soft_tokens=int(getattr(model.config, "vision_soft_tokens_per_image", DEFAULT_SOFT_TOKENS)),
    )


def vision_prompt(model: Any, prompt_ids: list[int], images: list[p.ImagePart]) -> VisionPrompt:
    """Widens each image token of `prompt_ids` to its soft tokens and builds the vision inputs."""
    import torch

    config = model.config
    image_id, boi_id, eoi_id = int(config.image_token_id), int(config.boi_token_id), int(config.eoi_token_id)
    found = prompt_ids.count(image_id)
    if found != len(images):
        raise EngineError(
            "bad_image", f"The conversation has {len(images)} image(s) but the chat template placed {found}."
        )
    pictures = [open_image(part) for part in images]
    started = time.perf_counter()
    processed = image_processor_for(model)(pictures, return_tensors="pt")
    soft_tokens = [int(n) for n in processed["num_soft_tokens_per_image"]]
    ids: list[int] = []
    next_image = 0
    for token in prompt_ids:
        if token == image_id:
            ids += [boi_id] + [image_id] * soft_tokens[next_image] + [eoi_id]
            next_image += 1
        else:
            ids.append(token)
    device = next(model.parameters()).device
    dtype = model.model.encoder.get_input_embeddings().weight.dtype
    mm_types = torch.tensor([[1 if t == image_id else 0 for t in ids]], dtype=torch.long, device=device)
    inputs = {
        "pixel_values": processed["pixel_values"].to(device=device, dtype=dtype),
        "image_position_ids": processed["image_position_ids"].to(device),
        "mm_token_type_ids": mm_types,
    }
    log.info("%d image(s): %s soft tokens, prepared in %.2f s", len(images), soft_tokens, time.perf_counter() - started)
    return VisionPrompt(ids, inputs, len(images))


def has_vision_tower(model: Any) -> bool:
    return getattr(model.model.encoder, "vision_tower", None) is not None


def load_vision_tower(model: Any, folder: Path, progress) -> None:
    """Adds the vision tower that a text-only (4-bit streamed) load left out, from the checkpoint.

    `progress(stage, message, fraction)` is told as the tensors arrive. The tower stays unquantized,
    as a full load keeps it (engine/quantization.py skips it).
    """
    import torch
    from transformers import AutoModel
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaMultimodalEmbedder

    from engine.streaming_loader import VISION_PARTS, ShardReader, checkpoint_entries

    encoder = model.model.encoder
    device = next(model.parameters()).device
    dtype = encoder.get_input_embeddings().weight.dtype
    config = model.config
    if device.type == "cuda":
        check_vision_memory(config.to_dict(), torch.cuda.mem_get_info(device)[0])
    progress("vision", "Loading the vision tower", 0.0)
    with torch.device(device):
        tower = AutoModel.from_config(config.vision_config, dtype=dtype)
        embedder = DiffusionGemmaMultimodalEmbedder(config.vision_config, config.text_config).to(dtype)
    entries = [e for e in checkpoint_entries(Path(folder)) if any(part in e.name for part in VISION_PARTS)]
    if not entries:
        raise EngineError("vision_unavailable", f"{Path(folder).name} holds no vision tower weights.")
    modules = {"vision_tower.": tower, "embed_vision.": embedder}
    reader = ShardReader()
    try:
        for count, entry in enumerate(entries, 1):
            prefix = next(part for part in VISION_PARTS if part in entry.name)
            name = entry.name.split(prefix, 1)[1]
            target = modules[prefix].get_parameter(name) if name in dict(modules[prefix].named_parameters()) else None
            if target is None:
                target = modules[prefix].get_buffer(name)
            with torch.no_grad():
                target.copy_(reader.read(entry).to(device=device, dtype=target.dtype))
            if count % 20 == 0 or count == len(entries):
                progress("vision", f"Loading the vision tower: {count} of {len(entries)} tensors", count / len(entries))
    finally:
        reader.close()
    encoder.vision_tower = tower.eval()
    encoder.embed_vision = embedder.eval()


def check_vision_memory(config: dict[str, Any], free_bytes: int) -> int:
    """The bytes the vision tower and one image's encoding need (the planner's figures); raises
    `out_of_memory` with both figures when the GPU has less free."""
    from engine.planner import GIB, architecture_from_config, image_encoding_bytes, weights_bytes

    arch = architecture_from_config(config)
    needed = weights_bytes(arch, "bf16", vision=True)["vision"] + image_encoding_bytes(arch)
    if needed > free_bytes:
        raise EngineError(
            "out_of_memory",
            f"Reading images needs the vision tower: {needed / GIB:.1f} GiB more GPU memory, but only "
            f"{free_bytes / GIB:.1f} GiB is free. Use a shorter context or close other GPU programs.",
        )
    return needed
