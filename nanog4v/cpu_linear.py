"""y = x Wᵀ + b with a faster CPU kernel for the one-row products of batch-1 decoding.

Decoding one token multiplies every weight matrix by one vector, so a step costs the time to stream
the weights from memory. PyTorch's default kernels for that one-row product leave most of the memory
bandwidth unused on the CPU (bench/RESULTS.md, 2-core EPYC):

    fp32       MKL's sgemv runs on one thread (~12 GB/s); oneDNN's fused linear uses them all
               (~30 GB/s) but costs ~15 µs more a call, so it takes only matrices of ≥ 2¹⁹ elements
    bf16/fp16  oneDNN repacks the weight on every call (~10-19 GB/s); ATen's own gemv, which runs
               when oneDNN is switched off, reads each weight once (~21-33 GB/s)

Only inference (no autograd graph) with a single row on the CPU takes these paths; training, prefill,
batches, GPUs and code being traced by `torch.compile` (inductor picks its own kernels, and cannot lower
the oneDNN op) use `F.linear`. The values are F.linear's up to summation order (~1e-6 relative).

`cpu_linear.ENABLED = False` (or the environment variable NANOG4V_PLAIN_LINEAR=1 at import) makes `linear`
plain `F.linear` everywhere, e.g. to compare against a reference bit for bit.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

ENABLED = os.environ.get("NANOG4V_PLAIN_LINEAR", "0") != "1"   # False: always plain F.linear

# oneDNN's fused linear op (what torch.compile calls on the CPU); absent from builds without oneDNN
ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
ONEDNN_MIN_WEIGHT = 1 << 19   # elements; a oneDNN call costs ~15 µs, so smaller matrices keep MKL


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through the faster kernel when x is one row on the CPU at inference.

    Switching oneDNN off is process-global for the one call: another thread's matmul in that window
    would also skip oneDNN (slower, same result).
    """
    if not ENABLED or x.device.type != "cpu" or x.numel() != x.shape[-1] or torch.is_grad_enabled() \
            or torch.compiler.is_compiling():
        return F.linear(x, weight, bias)
    onednn = torch.backends.mkldnn.enabled                              # unless the user switched it off
    if x.dtype == torch.float32 and onednn and ONEDNN_LINEAR and weight.numel() >= ONEDNN_MIN_WEIGHT:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    if x.dtype in (torch.bfloat16, torch.float16) and onednn:
        torch.backends.mkldnn.enabled = False
        try:
            return F.linear(x, weight, bias)
        finally:
            torch.backends.mkldnn.enabled = True
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same state-dict keys) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


__all__ = ["ONEDNN_LINEAR", "ONEDNN_MIN_WEIGHT", "linear", "Linear"]
