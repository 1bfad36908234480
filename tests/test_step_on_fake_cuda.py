"""One denoising step with the model and every input on a CUDA device that does not exist.

FakeTensorMode gives `cuda` tensors without a GPU: it raises on a CPU tensor meeting a CUDA one
(the bucketize crash this guards against) and on any op whose result the host would have to wait
for (`.item()`, `.tolist()`, `nonzero`, `bool(tensor)`), so the step is also proved sync-free.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.overrides import TorchFunctionMode

from engine.generation import CanvasState, StepConstants, denoise_step, new_generation_cache
from tests.tiny_model import tiny_config

CANVAS = 16


def _basic_getitem(tensor: torch.Tensor, index):
    """`tensor[index]` spelled as aten view ops: a CPU-only torch's Python indexing refuses fake CUDA
    tensors ("not linked with support for cuda devices") before FakeTensorMode sees the op."""
    index = index if isinstance(index, tuple) else (index,)
    consuming = sum(1 for item in index if item is not None and item is not Ellipsis)
    advanced = [item for item in index if isinstance(item, torch.Tensor)]
    if len(advanced) > 1:
        if not all(isinstance(item, torch.Tensor) or item == slice(None) for item in index):
            raise NotImplementedError("several tensor indices mixed with other indices")
        return torch.ops.aten.index.Tensor(tensor, [item if isinstance(item, torch.Tensor) else None for item in index])
    dim = 0
    for item in index:
        if item is None:
            tensor = tensor.unsqueeze(dim)
            dim += 1
        elif item is Ellipsis:
            dim += tensor.dim() - dim - consuming
            consuming = 0
            continue
        elif isinstance(item, bool):
            raise NotImplementedError("bool index")
        elif isinstance(item, int):
            tensor = tensor.select(dim, item)
        elif isinstance(item, slice):
            step = item.step or 1
            tensor = torch.ops.aten.slice.Tensor(tensor, dim, item.start, item.stop, step)
            dim += 1
        elif isinstance(item, torch.Tensor):
            tensor = torch.ops.aten.index.Tensor(tensor, [None] * dim + [item])
            dim += item.dim() if item.dtype != torch.bool else 1
        else:
            raise NotImplementedError(f"index {item!r}")
        consuming -= 1
    return tensor


_ATEN_SPELLING = {
    torch.Tensor.narrow: lambda tensor, dim, start, length: torch.ops.aten.narrow.default(tensor, dim, start, length),
    torch.Tensor.copy_: lambda tensor, source, non_blocking=False: torch.ops.aten.copy_.default(tensor, source, non_blocking),
    torch.Tensor.clone: lambda tensor, **kwargs: torch.ops.aten.clone.default(tensor, **kwargs),
    torch.Tensor.new_empty: lambda tensor, size: torch.ops.aten.new_empty.default(tensor, list(size)),
}


class CpuBuildShims(TorchFunctionMode):
    """What a CPU-only torch refuses on fake CUDA tensors before FakeTensorMode sees the op (Python
    indexing, `~`, `.contiguous()`, `torch.randint`), spelled as the aten ops a CUDA build dispatches."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__getitem__:
            return _basic_getitem(*args)
        if func is torch.Tensor.__setitem__:
            target, index, value = args
            items = index if isinstance(index, tuple) else (index,)
            if any(isinstance(item, torch.Tensor) for item in items):
                if not isinstance(value, torch.Tensor):
                    value = torch.full((), value, dtype=target.dtype, device=target.device)
                indices = [item if isinstance(item, torch.Tensor) else None for item in items]
                torch.ops.aten.index_put_.default(target, indices, value)
            elif isinstance(value, torch.Tensor):
                torch.ops.aten.copy_.default(_basic_getitem(target, index), value)
            else:
                torch.ops.aten.fill_.Scalar(_basic_getitem(target, index), value)
            return None
        if func is torch.randint and torch.device(kwargs.get("device", "cpu")).type == "cuda":
            # The Python binding looks up the CUDA generator first; the aten op has a fake kernel.
            low, high, size = kwargs["low"], kwargs["high"], kwargs["size"]
            return torch.ops.aten.randint.low(low, high, size, dtype=torch.long, device=kwargs["device"])
        if func in _ATEN_SPELLING:  # the preallocated KV cache's in-place writes and views
            return _ATEN_SPELLING[func](*args, **kwargs)
        if func is torch.Tensor.__invert__:
            return torch.bitwise_not(args[0])
        if func is torch.Tensor.contiguous:  # same device-guard refusal as indexing
            tensor = args[0]
            return tensor if tensor.is_contiguous() else torch.ops.aten.clone.default(tensor, memory_format=torch.contiguous_format)
        return func(*args, **kwargs)


def fake_cuda_model(mode: FakeTensorMode):
    """The tiny model in bf16 with every parameter and buffer a fake CUDA tensor (ties kept)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion(tiny_config(512, canvas_length=CANVAS)).eval()
    replaced: dict[int, torch.Tensor] = {}
    with mode:
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None:
                    if id(param) not in replaced:
                        fake = torch.empty(param.shape, dtype=torch.bfloat16, device="cuda")  # as loaded on a GPU
                        replaced[id(param)] = torch.nn.Parameter(fake, requires_grad=False)
                    module._parameters[name] = replaced[id(param)]
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    dtype = torch.bfloat16 if buffer.dtype == torch.float32 and name != "inv_freq" else buffer.dtype
                    module._buffers[name] = torch.empty(buffer.shape, dtype=dtype, device="cuda")
    return model


def run_two_steps(model, mode: FakeTensorMode):
    """Encoder, then two denoising steps (the second with self-conditioning), all on fake CUDA."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import DiffusionGemmaGenerationConfig

    config = DiffusionGemmaGenerationConfig(
        max_new_tokens=CANVAS, max_denoising_steps=8, t_min=0.4, t_max=0.8, stability_threshold=1,
        confidence_threshold=0.005, eos_token_id=[1, 106],
    )
    config.sampler_config = __import__(
        "transformers.models.diffusion_gemma.generation_diffusion_gemma", fromlist=["x"]
    ).EntropyBoundSamplerConfig(entropy_bound=0.1)
    with mode, CpuBuildShims(), torch.no_grad():
        device = torch.device("cuda")
        prompt_length = 5
        prompt = torch.zeros(1, prompt_length, dtype=torch.long, device=device)
        cache = new_generation_cache(model, prompt_length + CANVAS)
        attention_mask = torch.ones((1, prompt_length), dtype=torch.bool, device=device)
        encoder_positions = torch.arange(0, prompt_length, dtype=torch.int32, device=device).unsqueeze(0)
        decoder_positions = torch.arange(prompt_length, prompt_length + CANVAS, dtype=torch.int32, device=device).unsqueeze(0)
        ids, masks = model._prepare_encoder_inputs(
            input_ids=prompt, attention_mask=attention_mask, encoder_position_ids=encoder_positions,
            past_key_values=cache, is_prefill=True, canvas_length=CANVAS, batch_size=1,
        )
        cache = model.model.encoder(input_ids=ids, attention_mask=masks, past_key_values=cache,
                                    position_ids=encoder_positions).past_key_values
        sampler = model._prepare_sampler(config)
        processors = model._prepare_logits_processor(config, None)
        canvas, self_conditioning, mask_mapping, _ = model._prepare_denoiser_inputs(
            decoder_attention_mask=None,  # as the engine passes it: no padding (see _denoise)
            past_key_values=cache, sampler=sampler, diffusion_stopping_criteria=None, batch_size=1,
            device=device, model_kwargs={},
        )
        constants = StepConstants.build(device, {1, 106}, config.max_denoising_steps)
        state = CanvasState(canvas, canvas, self_conditioning, None)
        summaries = []
        for step in (8, 7):
            state, summary = denoise_step(
                model, state, step=step, input_ids=prompt, position_ids=decoder_positions, mask_mapping=mask_mapping,
                past_key_values=cache, entropy_bound=sampler.entropy_bound, logits_processor=processors,
                stopping=(config.stability_threshold, config.confidence_threshold), constants=constants,
            )
            summaries.append(summary)
    return state, summaries


@pytest.fixture(scope="module")
def fake_mode():
    return FakeTensorMode(allow_non_fake_inputs=False)


def test_a_denoising_step_runs_on_cuda_without_mixing_devices_or_waiting_on_the_host(fake_mode, monkeypatch):
    # The experts dispatcher asks the (absent) GPU for its compute capability: say an H100's.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    model = fake_cuda_model(fake_mode)
    state, summaries = run_two_steps(model, fake_mode)
    for summary in summaries:
        assert summary.device.type == "cuda"
        assert summary.shape == (3 * CANVAS + 2,) and summary.dtype == torch.long
    assert state.canvas.device.type == "cuda" and state.self_conditioning_logits.device.type == "cuda"
    assert state.stability_history.device.type == "cuda"


def test_the_fake_device_catches_a_cpu_tensor_meeting_a_cuda_one(fake_mode):
    """The guard itself: today's bug, reproduced in the mode, must raise."""
    from engine.generation import ENTROPY_BUCKET_EDGES

    with fake_mode, pytest.raises(Exception, match="device"):
        entropy = torch.empty(1, CANVAS, device="cuda")
        torch.bucketize(entropy, torch.tensor(ENTROPY_BUCKET_EDGES, dtype=entropy.dtype))
