"""The bf16 Linear path for CPUs without bf16 GEMMs keeps bf16 semantics (and stays plain elsewhere)."""

import pytest
import torch

from model import ops


@pytest.mark.parametrize("native", [False, True])
def test_model_bf16_linear_matches_autocast(monkeypatch, native):
    monkeypatch.setattr(ops, "cpu_has_native_bf16_gemm", lambda: native)
    torch.manual_seed(0)
    ours = ops.Linear(24, 40)
    ref = torch.nn.Linear(24, 40)
    ref.load_state_dict(ours.state_dict())
    x1 = torch.randn(3, 5, 24, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops._use_fp32_gemm(x1) is (not native)
        y1, y2 = ours(x1), ref(x2)
    assert y1.dtype == y2.dtype == torch.bfloat16
    g = torch.randn_like(y1, dtype=torch.float32)
    y1.float().mul(g).sum().backward()
    y2.float().mul(g).sum().backward()
    # both are bf16-input products with wide accumulation: equal up to bf16 output rounding
    torch.testing.assert_close(y1.float(), y2.float(), atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(x1.grad, x2.grad, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=5e-2, rtol=1e-2)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=5e-2, rtol=1e-2)
    assert ours.weight.grad.dtype == torch.float32 and x1.grad.dtype == torch.float32
    # outside autocast it is nn.Linear exactly
    assert not ops._use_fp32_gemm(x1)
    torch.testing.assert_close(ours(x1), ref(x1), rtol=0, atol=0)
