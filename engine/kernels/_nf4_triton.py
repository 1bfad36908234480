"""Triton source of the fused NF4 GEMM (imported only where triton is; see engine.kernels.nf4_moe)."""

import triton
import triton.language as tl


@triton.jit
def _decode(flat, mask, packed_ptr, absmax_ptr, code_ptr, nested_absmax_ptr, nested_code_ptr, nested_offset_ptr,
            BLOCKSIZE: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr):
    # bitsandbytes packs two 4-bit codes per byte, the even element in the high nibble.
    byte = tl.load(packed_ptr + (flat >> 1), mask=mask, other=0).to(tl.int32)
    nibble = tl.where((flat & 1) == 0, byte >> 4, byte & 15)
    value = tl.load(code_ptr + nibble)
    block = flat // BLOCKSIZE
    if DOUBLE_QUANT:
        q = tl.load(absmax_ptr + block, mask=mask, other=0).to(tl.int32)
        scale = tl.load(nested_code_ptr + q) * tl.load(nested_absmax_ptr + block // NESTED_BLOCKSIZE, mask=mask, other=0.0)
        scale += tl.load(nested_offset_ptr)
    else:
        scale = tl.load(absmax_ptr + block, mask=mask, other=0.0)
    return tl.where(mask, value * scale, 0.0)


@triton.jit
def nf4_gemm(
    a_ptr, stride_a,
    packed_ptr, absmax_ptr, code_ptr, nested_absmax_ptr, nested_code_ptr, nested_offset_ptr,
    out_ptr, stride_out,
    sorted_slots_ptr, block_experts_ptr, num_padded_ptr, route_weights_ptr,
    num_rows, N, K, weight_rows, a_div,
    BLOCKSIZE: tl.constexpr, NESTED_BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
    ROUTED: tl.constexpr, A_FROM_SLOT: tl.constexpr, OUT_TO_SLOT: tl.constexpr,
    GATED: tl.constexpr, ACTIVATION: tl.constexpr, ROUTE_WEIGHTS: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # out[row, n] = sum_k a[row, k] * W[expert, n, k]; W is NF4 in the flattened order of
    # (experts, weight_rows, K), decoded here per tile. GATED: W's rows are [gate; up] and the
    # program computes act(gate[n]) * up[n] for n < N = weight_rows / 2.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    if ROUTED:
        num_padded = tl.load(num_padded_ptr)
        if pid_m * BLOCK_M >= num_padded:
            return
        slot = tl.load(sorted_slots_ptr + offs_m)
        row_ok = slot < num_rows
        expert = tl.load(block_experts_ptr + pid_m).to(tl.int64)
    else:
        slot = offs_m
        row_ok = offs_m < num_rows
        expert = 0
    if A_FROM_SLOT:
        a_rows = slot // a_div
    else:
        a_rows = offs_m
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    expert_base = expert * weight_rows * K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if GATED:
        acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        a = tl.load(a_ptr + a_rows[:, None].to(tl.int64) * stride_a + offs_k[None, :],
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & col_ok[None, :]
        # (BLOCK_K, BLOCK_N) tile of W^T: flat index of W[expert, n, k].
        flat = expert_base + offs_n[None, :].to(tl.int64) * K + offs_k[:, None]
        w = _decode(flat, w_mask, packed_ptr, absmax_ptr, code_ptr, nested_absmax_ptr, nested_code_ptr,
                    nested_offset_ptr, BLOCKSIZE, NESTED_BLOCKSIZE, DOUBLE_QUANT)
        if DOT_FP32:
            a32 = a.to(tl.float32)
            acc += tl.dot(a32, w, input_precision="ieee")
        else:
            acc += tl.dot(a, w.to(a.dtype))
        if GATED:
            w_up = _decode(flat + N * K, w_mask, packed_ptr, absmax_ptr, code_ptr, nested_absmax_ptr,
                           nested_code_ptr, nested_offset_ptr, BLOCKSIZE, NESTED_BLOCKSIZE, DOUBLE_QUANT)
            if DOT_FP32:
                acc_up += tl.dot(a32, w_up, input_precision="ieee")
            else:
                acc_up += tl.dot(a, w_up.to(a.dtype))
    if GATED:
        if ACTIVATION == 0:  # gelu_pytorch_tanh, with tanh(y) = 1 - 2 / (exp(2y) + 1)
            y = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
            acc = 0.5 * acc * (2.0 - 2.0 / (tl.exp(2.0 * y) + 1.0))
        else:  # silu
            acc = acc / (1.0 + tl.exp(-acc))
        acc = acc * acc_up
    if OUT_TO_SLOT:
        out_rows = slot
    else:
        out_rows = offs_m
    if ROUTE_WEIGHTS:
        acc = acc * tl.load(route_weights_ptr + slot, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    out_mask = row_ok[:, None] & col_ok[None, :]
    tl.store(out_ptr + out_rows[:, None].to(tl.int64) * stride_out + offs_n[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def align_by_expert(flat_ptr, sorted_slots_ptr, block_experts_ptr, num_padded_ptr, slots, num_experts, capacity,
                    BLOCK_M: tl.constexpr, EXPERTS_POW2: tl.constexpr, CHUNK: tl.constexpr):
    # Program e < num_experts writes expert e's run of the padded order (its slots in token order,
    # then padding, and the expert of each of its blocks); program num_experts writes the tail
    # past the used length and the used length itself. Every program counts all experts itself
    # (a few thousand ids), so one launch does it all, with no atomics and no host read.
    e = tl.program_id(0)
    experts = tl.arange(0, EXPERTS_POW2)
    counts = tl.zeros((EXPERTS_POW2,), dtype=tl.int32)
    for s0 in range(0, slots, CHUNK):
        offs = s0 + tl.arange(0, CHUNK)
        ids = tl.load(flat_ptr + offs, mask=offs < slots, other=-1).to(tl.int32)
        counts += tl.sum((ids[None, :] == experts[:, None]).to(tl.int32), axis=1)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    total = tl.sum(padded, axis=0)
    start = tl.sum(tl.where(experts < e, padded, 0), axis=0)
    lanes = tl.arange(0, CHUNK)
    if e < num_experts:
        count = tl.sum(tl.where(experts == e, counts, 0), axis=0)
        mine = tl.sum(tl.where(experts == e, padded, 0), axis=0)
        seen = count * 0
        for s0 in range(0, slots, CHUNK):
            offs = s0 + lanes
            ids = tl.load(flat_ptr + offs, mask=offs < slots, other=-1).to(tl.int32)
            hit = (ids == e).to(tl.int32)
            rank = seen + tl.cumsum(hit, axis=0) - 1
            tl.store(sorted_slots_ptr + start + rank, offs.to(tl.int64), mask=hit > 0)
            seen += tl.sum(hit, axis=0)
        pad = tl.arange(0, BLOCK_M)
        tl.store(sorted_slots_ptr + start + count + pad, (pad * 0 + slots).to(tl.int64), mask=pad < mine - count)
        first_block = start // BLOCK_M
        for b0 in range(0, mine // BLOCK_M, CHUNK):
            b = b0 + lanes
            tl.store(block_experts_ptr + first_block + b, (b * 0 + e).to(tl.int64), mask=b < mine // BLOCK_M)
    else:
        for p0 in range(total, capacity, CHUNK):
            p = p0 + lanes
            tl.store(sorted_slots_ptr + p, (p * 0 + slots).to(tl.int64), mask=p < capacity)
        for b0 in range(total // BLOCK_M, capacity // BLOCK_M, CHUNK):
            b = b0 + lanes
            tl.store(block_experts_ptr + b, (b * 0 + num_experts - 1).to(tl.int64), mask=b < capacity // BLOCK_M)
        tl.store(num_padded_ptr, total.to(tl.int64))
