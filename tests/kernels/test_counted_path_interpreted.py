"""`python -m bench profile-forward` counts the engine's Triton kernels without running them (the
interpreter takes tens of minutes at the real structure): the count must be the one a run gives.

Run by test_kernels_under_interpreter.py in a child with TRITON_INTERPRET=1 (see conftest.py).
"""

from __future__ import annotations

import torch

from bench.profile_forward import census
from engine import quantization
from engine.kernels import norms


def test_counting_the_kernels_without_running_them_counts_what_running_them_does(tiny_model_dir, monkeypatch):
    from transformers import DiffusionGemmaForBlockDiffusion

    monkeypatch.setattr(norms, "_failure", {})
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_model_dir)).eval()
    quantization.quantize_model(model, "nf4")
    quantization.use_fused_path(model, linears=True)
    input_ids = torch.randint(3, model.config.text_config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    canvas = torch.randint(3, model.config.text_config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), census(run_kernels=False):  # first forward: builds what is cached (NF4 operands)
        model(input_ids=input_ids, decoder_input_ids=canvas)
    with torch.no_grad(), census(run_kernels=True) as ran:
        model(input_ids=input_ids, decoder_input_ids=canvas)
    with torch.no_grad(), census(run_kernels=False) as counted:
        model(input_ids=input_ids, decoder_input_ids=canvas)
    assert quantization._fused_failure == {} and norms._failure == {}
    assert counted.ops == ran.ops
    assert counted.host_syncs == ran.host_syncs  # (the whole model call: its mask building reads the host)
    layers = len(model.model.decoder.layers) + len(model.model.encoder.language_model.layers)
    assert counted.ops["canvas::align_by_expert"] == layers
    assert counted.ops["canvas::rms_norm"] >= 11 * layers and counted.ops["canvas::nf4_gemm"] >= 2 * layers
