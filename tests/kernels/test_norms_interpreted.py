"""The fused RMSNorm (engine/kernels/norms.py) under Triton's CPU interpreter, against DiffusionGemmaRMSNorm.

Run by test_kernels_under_interpreter.py in a child with TRITON_INTERPRET=1 (see conftest.py).
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaRMSNorm

from engine.kernels import norms

# max abs error / max abs reference: fp32 differs only in summation order and sqrt vs pow(-0.5);
# fp16 rounds the output once, as the eager norm does.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def no_failure(monkeypatch):
    monkeypatch.setattr(norms, "_failure", {})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_scale", [True, False])
@pytest.mark.parametrize("shape", [(3, 7, 48), (1, 5, 4, 16), (0, 24)])  # 48: not a power of two; no rows
def test_the_fused_norm_matches_the_model_norm(shape, with_scale, dtype):
    generator = torch.Generator().manual_seed(len(shape))
    module = DiffusionGemmaRMSNorm(shape[-1], eps=1e-6, with_scale=with_scale).to(dtype)
    if with_scale:
        module.weight.data = (torch.randn(shape[-1], generator=generator) + 1).to(dtype)
    x = (torch.randn(shape, generator=generator) * 3).to(dtype)
    with torch.no_grad():
        expected = module(x)
        got = norms.fused_rms_norm_forward(module, x)
    assert norms._failure == {}
    assert got.shape == expected.shape and got.dtype == dtype
    if expected.numel():
        assert ((got.float() - expected.float()).abs().max() / expected.float().abs().max()) < TOLERANCE[dtype]


def test_use_fused_norms_routes_every_norm_of_the_model_through_one_launch(tiny_model_dir):
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import DiffusionGemmaForBlockDiffusion

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir)).eval()
    input_ids = torch.randint(3, model.config.text_config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    canvas = torch.randint(3, model.config.text_config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stock = model(input_ids=input_ids, decoder_input_ids=canvas).logits
    count = norms.use_fused_norms(model)
    assert count == sum(isinstance(m, DiffusionGemmaRMSNorm) for m in model.modules()) > 0
    ops = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops.append(func._schema.name)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Ops():
        fused = model(input_ids=input_ids, decoder_input_ids=canvas).logits
    assert norms._failure == {}
    assert "aten::pow" not in ops and ops.count("canvas::rms_norm") >= count // 2
    assert (fused - stock).abs().max() / stock.abs().max() < 1e-4
    assert (fused.argmax(-1) == stock.argmax(-1)).all()


def test_a_failing_norm_kernel_falls_back_once_with_a_logged_warning(monkeypatch, caplog):
    import engine.kernels._norm_triton as source

    class BrokenKernel:
        def __getitem__(self, grid):
            raise RuntimeError("CompilationError: at 3:4: unsupported op")

    monkeypatch.setattr(source, "rms_norm", BrokenKernel())
    module = DiffusionGemmaRMSNorm(32)
    x = torch.randn(4, 32)
    with caplog.at_level(logging.WARNING, logger="engine.kernels.norms"):
        first = norms.fused_rms_norm_forward(module, x)
        second = norms.fused_rms_norm_forward(module, x)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unsupported op" in warnings[0].getMessage()
    assert torch.equal(first, module(x)) and torch.equal(second, module(x))
