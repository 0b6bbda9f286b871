"""Inputs shared by the torch op tests on CPU (test_torch_ops.py) and on CUDA
(test_torch_cuda.py); import after ``pytest.importorskip("torch")``."""

import torch

# (shape, memory format): ranks 2-5, contiguous and channels-last
LAYOUTS = [
    ((7, 3), None),
    ((4, 5, 6), None),
    ((4, 5, 6), "transposed"),
    ((3, 4, 5, 2), None),
    ((3, 4, 5, 2), torch.channels_last),
    ((2, 3, 2, 3, 2), torch.channels_last_3d),
]


def make_x(shape, fmt, dtype, seed=0, device="cpu"):
    """A seeded input in layout ``fmt`` (None, a torch memory format, or "transposed": (N, C, L)
    with (N, L, C) memory) on ``device`` (``.to`` keeps the layout)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2 + 0.5
    if fmt == "transposed":
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    elif fmt is not None:
        x = x.to(memory_format=fmt)
    return x.to(device)


def params(c, dtype, seed=1, device="cpu"):
    """Seeded (weight, bias, running_mean, running_var) of ``c`` channels."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(c, generator=g, dtype=dtype) + 0.5
    b = torch.randn(c, generator=g, dtype=dtype)
    rm = torch.randn(c, generator=g, dtype=dtype)
    rv = torch.rand(c, generator=g, dtype=dtype) + 0.5
    return tuple(t.to(device) for t in (w, b, rm, rv))
