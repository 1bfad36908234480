"""Triton source of the fused RMSNorm (imported only where triton is; see engine.kernels.norms)."""

import triton
import triton.language as tl


@triton.jit
def rms_norm(x_ptr, weight_ptr, out_ptr, stride_x, stride_out, rows, dim, eps,
             WITH_SCALE: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # ROWS rows per program, in fp32 as DiffusionGemmaRMSNorm computes it:
    # x * (mean(x^2) + eps) ** -0.5 [* weight], cast back to x's dtype.
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    offs = tl.arange(0, BLOCK)
    ok = (row[:, None] < rows) & (offs[None, :] < dim)
    x = tl.load(x_ptr + row[:, None] * stride_x + offs[None, :], mask=ok, other=0.0).to(tl.float32)
    mean_squared = tl.sum(x * x, axis=1) / dim + eps
    y = x / tl.sqrt(mean_squared)[:, None]
    if WITH_SCALE:
        y = y * tl.load(weight_ptr + offs, mask=offs < dim, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + row[:, None] * stride_out + offs[None, :], y.to(out_ptr.dtype.element_ty), mask=ok)
