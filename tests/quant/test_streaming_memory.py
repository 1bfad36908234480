"""Streaming load of a synthetic multi-shard checkpoint stays within a bounded peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import PYTHON, REPO_ROOT, python_env

# Measured on a 207 MB, 9-shard bf16 checkpoint (8 layers, 32 experts of 512, hidden 256) loaded
# into NF4 on the CPU: peak RSS rises 147 MB over the process before loading, of which 88 MB is the
# quantized model that stays resident (on the CPU the model lives in RAM) and 59 MB is transient:
# a 16-expert chunk in flight and bitsandbytes' temporaries. The transient part depends on the
# largest read unit, not on the checkpoint size.
TRANSIENT_BOUND = 100 * 1024**2
PEAK_SHARE_OF_CHECKPOINT = 0.85

_MEASURE = r"""
import json, sys
from pathlib import Path
import psutil, torch, transformers, bitsandbytes
from transformers import DiffusionGemmaForBlockDiffusion, AutoConfig
from engine import streaming_loader
AutoConfig.from_pretrained(sys.argv[1])  # warm every lazy import outside the measurement
def high_water():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
process = psutil.Process()
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak RSS (VmHWM) so that imports do not count
before = process.memory_info().rss
model = streaming_loader.load_model_streaming(Path(sys.argv[1]), quantization="nf4", device="cpu", vision=False)
peak = high_water()
print(json.dumps({"before": before, "peak": peak, "after": process.memory_info().rss}))
"""


@pytest.fixture(scope="module")
def sharded_checkpoint(tmp_path_factory):
    from tests.quant.synthetic import build_sharded_checkpoint

    return build_sharded_checkpoint(tmp_path_factory.mktemp("sharded") / "synthetic")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads and resets the peak RSS through /proc")
def test_streaming_load_peak_rss_is_bounded(sharded_checkpoint):
    shards = sorted(sharded_checkpoint.glob("*.safetensors"))
    checkpoint_bytes = sum(path.stat().st_size for path in shards)
    assert len(shards) >= 4
    done = subprocess.run([PYTHON, "-c", _MEASURE, str(sharded_checkpoint)], cwd=REPO_ROOT, env=python_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    peak_rise = figures["peak"] - figures["before"]
    resident = figures["after"] - figures["before"]
    transient = peak_rise - resident
    report = (f"checkpoint {checkpoint_bytes / 2**20:.0f} MiB, peak rise {peak_rise / 2**20:.0f} MiB, "
              f"resident model {resident / 2**20:.0f} MiB, transient {transient / 2**20:.0f} MiB")
    print(report)
    assert transient <= TRANSIENT_BOUND, report
    assert peak_rise <= PEAK_SHARE_OF_CHECKPOINT * checkpoint_bytes, report


def test_loader_reads_every_shard_of_a_multi_shard_checkpoint(sharded_checkpoint):
    from engine.streaming_loader import checkpoint_entries

    entries = checkpoint_entries(sharded_checkpoint)
    index = json.loads((sharded_checkpoint / "model.safetensors.index.json").read_text())
    assert {e.name for e in entries} == set(index["weight_map"])
    assert len({e.file for e in entries}) == len(set(index["weight_map"].values()))
