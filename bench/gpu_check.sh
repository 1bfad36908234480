#!/usr/bin/env bash
# The full-size GPU suite, prepared for one run on a lent H100/H200 (15 minutes of device time in all).
#
#  1. Here, on a machine with PyPI (once per session; ~18 MB into .whl/, which git ignores):
#         bash bench/gpu_check.sh prepare
#  2. Through the device tool, from the repository root:
#         run(command="bash bench/gpu_check.sh run", carry=[".whl"], timeout_s=420)
#     The suite stops itself after BENCH_TIME_LIMIT seconds (default 330), so a rerun still fits
#     in the 15 minutes. Results are written after each precision: a cut run keeps what it measured.
#     To measure only some precisions: BENCH_DTYPES=nf4 bash bench/gpu_check.sh run
#     A one-minute smoke test of the same path on tiny models: BENCH_SIZE=small bash bench/gpu_check.sh run
#     The fused NF4 kernel case (one full-size decoder forward: NF4 stock vs fused kernel vs bf16,
#     and tokens/s at 16 steps per canvas; ~4 minutes):
#         run(command="bash bench/gpu_check.sh fused", carry=[".whl"], timeout_s=420)
#  3. Here: copy the JSON and PNG from the reply's files_at into bench/results/ and fill the table
#     in bench/README.md.
#
# The GPU image has torch, matplotlib, psutil, tokenizers, safetensors and huggingface_hub, but an
# older transformers and no bitsandbytes: those travel as wheels (bitsandbytes slimmed to its
# CUDA 13 and CPU libraries to stay under the 64 MiB the working tree may take).
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

TRANSFORMERS_VERSION=5.23.0
BITSANDBYTES_VERSION=0.50.2
PLATFORMDIRS_VERSION=4.5.1

if [ "$mode" = "prepare" ]; then
    set -e
    mkdir -p .whl  # shared with other checks: touch only this script's three packages
    rm -f .whl/transformers-*.whl .whl/bitsandbytes-*.whl .whl/platformdirs-*.whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl \
        "transformers==$TRANSFORMERS_VERSION" "bitsandbytes==$BITSANDBYTES_VERSION" "platformdirs==$PLATFORMDIRS_VERSION"
    python3 - <<'PY'
import glob, os, zipfile
# Keep the CPU and CUDA 13 libraries only (the image's torch is built for CUDA 13).
keep = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
for path in glob.glob(".whl/bitsandbytes-*.whl"):
    slim = path + ".slim"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {n for n in src.namelist() if n.endswith(".so") and os.path.basename(n) not in keep}
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"\n".join(l for l in data.split(b"\n") if l.split(b",")[0].decode() not in dropped)
            dst.writestr(info, data)
    os.replace(slim, path)
PY
    ls -la .whl
    exit 0
fi

if [ "$mode" != "run" ] && [ "$mode" != "fused" ]; then
    echo "usage: bash bench/gpu_check.sh prepare|run|fused" >&2
    exit 2
fi

OUT="${OUT:-$PWD/bench/results/gpu-run}"
mkdir -p "$OUT"
wheels=(.whl/transformers-"$TRANSFORMERS_VERSION"-*.whl .whl/bitsandbytes-"$BITSANDBYTES_VERSION"-*.whl .whl/platformdirs-"$PLATFORMDIRS_VERSION"-*.whl)
if ls "${wheels[@]}" >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    echo "no .whl/: using the installed transformers/bitsandbytes (run 'bash bench/gpu_check.sh prepare' here first)" >&2
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$OUT/nvidia-smi.csv" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))" || exit 1
python3 -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" || echo "no bitsandbytes: NF4 will be skipped" >&2

# The fused NF4 kernel case: python -m bench.fused_kernel (smoke test here: BENCH_SIZE=small BENCH_DEVICE=cpu).
fused_kernel_case() {
    local size="${BENCH_SIZE:-full}" slug
    slug="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed -e 's/NVIDIA //' -e 's/[^A-Za-z0-9]\+/-/g' -e 's/-$//' | tr 'A-Z' 'a-z')"
    local name="fused-kernel-${slug:-unknown}-$size"
    python3 -c "import triton; print('triton', triton.__version__)" || echo "no triton: the fused variants will be skipped" >&2
    timeout --signal=INT --kill-after=20 "${BENCH_TIME_LIMIT:-330}" \
        python3 -m bench.fused_kernel --size "$size" --device "${BENCH_DEVICE:-cuda}" --json >"$OUT/$name.json" 2>"$OUT/$name.log"
    local status=$?
    tail -n 30 "$OUT/$name.log"; cat "$OUT/$name.json"
    echo "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo none found)"
    python3 -m bench.fused_kernel --render "$OUT/$name.json" || echo "no complete report (cut at the time limit?): see $name.log"
    echo "fused kernel case exit status: $status"
    return "$status"
}
if [ "$mode" = "fused" ]; then
    fused_kernel_case
    exit $?
fi

suite="${BENCH_SUITE:-gpu}"
size="${BENCH_SIZE:-full}"
slug="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | sed -e 's/NVIDIA //' -e 's/[^A-Za-z0-9]\+/-/g' -e 's/-$//' | tr 'A-Z' 'a-z')"
name="$suite-${slug:-unknown}-$size"
dtypes_arg=()
if [ -n "${BENCH_DTYPES:-}" ]; then dtypes_arg=(--dtypes "$BENCH_DTYPES"); name="$name-${BENCH_DTYPES//,/-}"; fi

timeout --signal=INT --kill-after=20 "${BENCH_TIME_LIMIT:-330}" \
    python3 -m bench run --suite "$suite" --size "$size" "${dtypes_arg[@]}" --out "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"
status=${PIPESTATUS[0]}
echo "bench exit status: $status (124/130: cut at the time limit; the JSON holds what finished)"
ls -la "$OUT"
exit "$status"
