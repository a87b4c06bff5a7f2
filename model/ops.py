"""Linear layers with a fast bf16 path on CPUs that lack bf16 matrix instructions.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` PyTorch sends bf16 matmuls to oneDNN only when the
CPU has AVX-512 BF16 / AMX; elsewhere (AVX2 machines, most CI runners) they fall back to a generic gemm that
runs at 0.5-8 GFLOP/s, 10-100x below the fp32 BLAS. ``Linear`` keeps bf16 semantics there (inputs and
weights rounded to bf16, fp32 accumulation, bf16 output, as a bf16 GEMM computes) but runs the products
through the fp32 BLAS. On GPUs and bf16-capable CPUs it is exactly ``nn.Linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16_gemm() -> bool:
    """True when oneDNN can run bf16 GEMMs natively on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private API; assume the fast path exists if it is gone
        return True


def _use_fp32_gemm(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and not cpu_has_native_bf16_gemm()
    )


class _Bf16LinearViaFp32(torch.autograd.Function):
    """y = bf16(x) @ bf16(W)^T + b with fp32 accumulation, computed by the fp32 BLAS."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            xb = x.to(torch.bfloat16)  # what autocast would feed the GEMM
            wf = weight.to(torch.bfloat16).float()
            y = F.linear(xb.float(), wf, None if bias is None else bias.to(torch.bfloat16).float())
        ctx.save_for_backward(xb, weight)
        ctx.has_bias = bias is not None
        ctx.x_dtype = x.dtype
        return y.to(torch.bfloat16)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xb, weight = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):
            g = grad.to(torch.bfloat16).float()  # autocast's backward sees a bf16 gradient too
            g2 = g.reshape(-1, g.shape[-1])  # (N, out)
            grad_x = grad_w = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_x = (g @ weight.to(torch.bfloat16).float()).to(torch.bfloat16).to(ctx.x_dtype)
            if ctx.needs_input_grad[1]:
                grad_w = (g2.t() @ xb.reshape(-1, xb.shape[-1]).float()).to(weight.dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) with the fp32-BLAS bf16 path described above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_fp32_gemm(x):
            return _Bf16LinearViaFp32.apply(x, self.weight, self.bias)
        return super().forward(x)
