"""The fused NF4 kernels (engine/kernels/nf4_moe.py) under Triton's CPU interpreter, against the stock paths.

Run by test_kernels_under_interpreter.py in a child with TRITON_INTERPRET=1 (see conftest.py); by hand:
    TRITON_INTERPRET=1 python -m pytest tests/kernels/test_nf4_moe_interpreted.py
"""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from engine import quantization
from engine.kernels import nf4_moe
from engine.quantization import NF4ExpertWeight, settings_for

# Stated tolerances (max abs error / max abs reference). fp32: only summation order differs from
# the eager forward on the dequantized weights (measured ~1e-7). fp16: activations and the gated
# intermediate are fp16 in both paths, rounded at different points (measured ~1e-3).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2}


def _experts_module(num_experts: int, hidden: int, inter: int, activation: str = "gelu_pytorch_tanh"):
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaTextExperts

    config = SimpleNamespace(num_experts=num_experts, hidden_size=hidden, moe_intermediate_size=inter,
                             hidden_activation=activation)
    return DiffusionGemmaTextExperts(config)


def _nf4_and_reference(num_experts, hidden, inter, double_quant, dtype, seed=0):
    """(module with NF4 experts, module with the same experts dequantized as plain parameters)."""
    generator = torch.Generator().manual_seed(seed)
    gate_up = torch.randn(num_experts, 2 * inter, hidden, generator=generator) * 0.1
    down = torch.randn(num_experts, hidden, inter, generator=generator) * 0.1
    settings = settings_for("nf4-double" if double_quant else "nf4")
    quantized = _experts_module(num_experts, hidden, inter)
    reference = _experts_module(num_experts, hidden, inter)
    for name, dense in (("gate_up_proj", gate_up), ("down_proj", down)):
        weight = NF4ExpertWeight.quantize(lambda a, b, d=dense: d[a:b], tuple(dense.shape), settings, "cpu", dtype)
        quantization.set_submodule(quantized, name, weight)
        setattr(reference, name, nn.Parameter(weight.dequantize(dtype=torch.float32), requires_grad=False))
    return quantized, reference


def _routing(num_tokens, num_experts, top_k, seed=0, avoid=()):
    generator = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([e for e in range(num_experts) if e not in avoid])
    scores = torch.rand(num_tokens, len(allowed), generator=generator)
    top_k_index = allowed[scores.topk(top_k, dim=-1).indices]
    top_k_weights = torch.softmax(torch.randn(num_tokens, top_k, generator=generator), dim=-1)
    return top_k_index, top_k_weights


@pytest.mark.parametrize(
    "num_experts,top_k,num_tokens,double_quant,dtype",
    [
        (4, 2, 5, False, torch.float32),
        (4, 2, 5, True, torch.float32),
        (8, 3, 7, False, torch.float16),
        (8, 1, 3, True, torch.float32),  # at most 3 of 8 experts get a token
        (6, 4, 17, True, torch.float16),  # 68 slots: an expert spans several 16-row blocks
    ],
)
def test_fused_experts_match_the_eager_forward_on_dequantized_weights(num_experts, top_k, num_tokens, double_quant, dtype):
    hidden, inter = 64, 64
    quantized, reference = _nf4_and_reference(num_experts, hidden, inter, double_quant, dtype)
    # expert 1 never routed to: its padding must not leak into anyone's output
    top_k_index, top_k_weights = _routing(num_tokens, num_experts, top_k, avoid=(1,))
    hidden_states = torch.randn(num_tokens, hidden, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        fused = quantization.nf4_fused_experts_forward(quantized, hidden_states, top_k_index, top_k_weights.to(dtype))
        expected = quantization._eager_experts_forward(reference, hidden_states.float(), top_k_index, top_k_weights.float())
    assert quantization._fused_failure == {}  # the kernel ran; no fallback
    assert fused.dtype == dtype and fused.shape == expected.shape
    error = (fused.float() - expected).abs().max() / expected.abs().max()
    assert error < TOLERANCE[dtype], f"relative error {error:.2e}"


def test_no_tokens_gives_zeros_without_launching(monkeypatch):
    quantized, _ = _nf4_and_reference(4, 64, 64, False, torch.float32)
    launches = []
    monkeypatch.setattr(nf4_moe, "_launch", lambda *a, **k: launches.append(k))
    empty = torch.zeros(0, 64)
    out = quantization.nf4_fused_experts_forward(quantized, empty, torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, 2))
    assert out.shape == (0, 64) and launches == [] and quantization._fused_failure == {}


@pytest.mark.parametrize("align", [nf4_moe.align_by_expert, nf4_moe.align_by_expert_fused], ids=["torch", "triton"])
@pytest.mark.parametrize("block_m", [4, 16])
def test_align_by_expert_sorts_and_pads_every_slot_once_without_host_reads(block_m, align):
    from torch.utils._python_dispatch import TorchDispatchMode

    num_experts, top_k = 6, 2
    top_k_index, _ = _routing(9, num_experts, top_k, seed=3, avoid=(0, 4))
    reads = []

    class HostReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.startswith(("_local_scalar_dense", "nonzero", "bincount", "masked_select")):
                reads.append(func.__name__)
            return func(*args, **(kwargs or {}))

    with HostReads():
        sorted_slots, block_experts, num_padded = align(top_k_index, num_experts, block_m)
    assert reads == []
    flat = top_k_index.reshape(-1)
    slots = flat.numel()
    counts = torch.bincount(flat, minlength=num_experts)
    assert int(num_padded) == int(((counts + block_m - 1) // block_m * block_m).sum())
    used = sorted_slots[: int(num_padded)]
    assert sorted(used[used < slots].tolist()) == list(range(slots))  # every slot exactly once
    assert (sorted_slots[int(num_padded):] == slots).all()  # the rest is padding
    for block in range(int(num_padded) // block_m):
        rows = sorted_slots[block * block_m : (block + 1) * block_m]
        real = rows[rows < slots]
        assert len(real) > 0  # no block of padding alone inside the used length
        assert (flat[real] == block_experts[block]).all()
        assert real.tolist() == sorted(real.tolist())  # stable: token order kept within an expert


@pytest.mark.parametrize("num_tokens,num_experts,top_k,block_m", [(40, 20, 3, 4), (1, 8, 2, 16), (25, 5, 4, 8)])
def test_the_one_launch_alignment_gives_the_torch_reference_exactly(num_tokens, num_experts, top_k, block_m):
    """40 x 3 slots span several of the kernel's 16-slot chunks; 20 experts pad the expert axis to 32."""
    top_k_index, _ = _routing(num_tokens, num_experts, top_k, seed=num_tokens, avoid=(1,))
    expected = nf4_moe.align_by_expert(top_k_index, num_experts, block_m)
    got = nf4_moe.align_by_expert_fused(top_k_index, num_experts, block_m)
    for name, want, have in zip(("sorted_slots", "block_experts", "num_padded"), expected, got):
        assert torch.equal(want, have), name


@pytest.mark.parametrize("double_quant", [False, True])
def test_fused_linear_matches_bitsandbytes_dequantized_matmul(double_quant):
    import bitsandbytes.functional as F

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 128, generator=generator)
    module = quantization.quantize_linear(weight, settings_for("nf4-double" if double_quant else "nf4"), "cpu",
                                          torch.float32)
    dense = F.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    x = torch.randn(2, 19, 128, generator=generator)  # 38 rows: a partial row block
    assert quantization.use_fused_nf4_linears(nn.Sequential(module)) == 1
    with torch.no_grad():
        out = module(x)
    assert quantization._fused_failure == {}
    expected = x @ dense.T
    assert out.shape == (2, 19, 48)
    assert (out - expected).abs().max() / expected.abs().max() < TOLERANCE[torch.float32]


@pytest.fixture(scope="module")
def tiny_nf4_models(tiny_model_dir):
    from transformers import DiffusionGemmaForBlockDiffusion

    def load(quantization_name):
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir)).eval()
        return quantization.quantize_model(model, quantization_name)

    return load


def test_use_nf4_experts_selects_the_fused_kernel_where_available_and_matches_the_stock_model(tiny_nf4_models, monkeypatch):
    model = tiny_nf4_models("nf4-double")
    # the model is on the CPU: stock path, with the reason logged at INFO
    monkeypatch.delenv("TRITON_INTERPRET")
    assert quantization.use_nf4_experts(model) == quantization.NF4_EXPERTS_IMPLEMENTATION
    input_ids = torch.randint(3, model.config.text_config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    canvas = torch.randint(3, model.config.text_config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stock = model(input_ids=input_ids, decoder_input_ids=canvas).logits
    # Triton + a GPU (the interpreter stands in for the GPU): the fused kernel is what gets selected
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    launches = []
    real_launch = nf4_moe._launch
    monkeypatch.setattr(nf4_moe, "_launch", lambda *a, **k: launches.append(bool(k.get("gated"))) or real_launch(*a, **k))
    assert quantization.use_nf4_experts(model) == quantization.NF4_FUSED_EXPERTS_IMPLEMENTATION
    assert model.config.text_config._experts_implementation == quantization.NF4_FUSED_EXPERTS_IMPLEMENTATION
    with torch.no_grad():
        fused = model(input_ids=input_ids, decoder_input_ids=canvas).logits
    assert quantization._fused_failure == {}
    # two kernels (gate_up, down) per MoE layer, encoder and decoder
    layers = len(model.model.decoder.layers) + len(model.model.encoder.language_model.layers)
    assert launches.count(True) == layers and launches.count(False) == layers
    assert (fused - stock).abs().max() / stock.abs().max() < 1e-4
    assert (fused.argmax(-1) == stock.argmax(-1)).all()


def test_kernel_mode_all_routes_the_text_linears_through_the_fused_kernel_too(tiny_nf4_models, monkeypatch):
    import bitsandbytes as bnb

    model = tiny_nf4_models("nf4")
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears and not any("forward" in m.__dict__ for m in linears)  # auto: bitsandbytes' own
    input_ids = torch.randint(3, model.config.text_config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    canvas = torch.randint(3, model.config.text_config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        stock_linears = model(input_ids=input_ids, decoder_input_ids=canvas).logits
    monkeypatch.setenv("CANVAS_CHAT_NF4_KERNEL", "all")
    quantization.use_nf4_experts(model)
    assert all("forward" in m.__dict__ for m in linears)
    with torch.no_grad():
        fused_linears = model(input_ids=input_ids, decoder_input_ids=canvas).logits
    assert quantization._fused_failure == {}
    assert (fused_linears - stock_linears).abs().max() / stock_linears.abs().max() < 1e-4


# ---------------------------------------------------------------------------- fallback


def test_without_triton_the_stock_path_is_selected_and_the_reason_logged(tiny_nf4_models, monkeypatch, caplog):
    model = tiny_nf4_models("nf4")
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    nf4_moe._triton_import_error.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="engine.quantization"):
            assert quantization.use_nf4_experts(model) == quantization.NF4_EXPERTS_IMPLEMENTATION
    finally:
        nf4_moe._triton_import_error.cache_clear()
    assert "triton is not importable" in caplog.text


def test_kernel_mode_off_keeps_the_stock_path(tiny_nf4_models, monkeypatch, caplog):
    model = tiny_nf4_models("nf4")
    monkeypatch.setenv("CANVAS_CHAT_NF4_KERNEL", "off")
    with caplog.at_level(logging.INFO, logger="engine.quantization"):
        assert quantization.use_nf4_experts(model) == quantization.NF4_EXPERTS_IMPLEMENTATION
    assert "CANVAS_CHAT_NF4_KERNEL=off" in caplog.text


def test_a_failing_kernel_falls_back_once_with_a_logged_warning(monkeypatch, caplog):
    quantized, _ = _nf4_and_reference(4, 64, 64, True, torch.float32)
    top_k_index, top_k_weights = _routing(5, 4, 2)
    hidden_states = torch.randn(5, 64)

    class BrokenKernel:
        def __getitem__(self, grid):
            raise RuntimeError("CompilationError: at 12:4: unsupported op")

    monkeypatch.setattr(nf4_moe, "_kernel", lambda: BrokenKernel())
    with caplog.at_level(logging.WARNING, logger="engine.quantization"):
        first = quantization.nf4_fused_experts_forward(quantized, hidden_states, top_k_index, top_k_weights)
        second = quantization.nf4_fused_experts_forward(quantized, hidden_states, top_k_index, top_k_weights)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unsupported op" in warnings[0].getMessage()
    stock = quantization.nf4_experts_forward(quantized, hidden_states, top_k_index, top_k_weights)
    assert torch.equal(first, stock) and torch.equal(second, stock)


def test_the_gpu_bench_runs_all_three_nf4_variants_where_the_kernel_is_available(monkeypatch, capsys):
    """bench/fused_kernel.py as on a GPU (the interpreter stands in), on the tiny architecture with
    the timing stubbed out (the interpreter is far too slow to time): every variant runs, none falls
    back, and the fused logits are the stock ones."""
    import json

    from bench import fused_kernel, gpu_fit
    from tests.tiny_model import tiny_config

    monkeypatch.setattr(gpu_fit, "make_config", lambda size: tiny_config(vocab_size=300))
    monkeypatch.setattr(gpu_fit, "measure", lambda model, config, device, prompt_tokens, canvas, repeats: {
        "decoder_ms_median": 10.0, "decoder_canvas": canvas})
    launches = []
    real_launch = nf4_moe._launch
    monkeypatch.setattr(nf4_moe, "_launch", lambda *a, **k: launches.append(k.get("routing") is None) or real_launch(*a, **k))
    assert fused_kernel.main(["--size", "small", "--device", "cpu", "--canvas", "16", "--prompt-tokens", "8",
                              "--json"]) == 0
    assert True in launches and False in launches  # the linears and the experts went through the kernel
    report = json.loads(capsys.readouterr().out)
    assert [run["variant"] for run in report["runs"]] == ["nf4 stock", "nf4 fused experts", "nf4 fused all", "fp32"]
    assert report["skipped"] == []
    for run in report["runs"][1:3]:
        assert "fell_back" not in run
        assert run["max_rel_logit_diff_vs_stock"] < 1e-4 and run["top1_agreement_vs_stock"] == 1.0
    assert report["runs"][0]["tokens_per_s_at_16_steps"] == 100.0
