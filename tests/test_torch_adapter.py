"""fastopt.torch: the deprecated FastBatchNorm factory and the functional batch_norm."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fastopt.torch import FastBatchNorm, batch_norm  # noqa: E402


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_module_matches_torch_batchnorm2d(channels_last, momentum):
    torch.manual_seed(0)
    with pytest.deprecated_call():
        ours = FastBatchNorm(4, momentum=momentum, dtype=torch.float64)
    ref = torch.nn.BatchNorm2d(4, momentum=momentum, dtype=torch.float64)
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.linspace(0.5, 2, 4, dtype=torch.float64))
            m.bias.copy_(torch.linspace(-1, 1, 4, dtype=torch.float64))
    for step in range(2):
        x = torch.randn(3, 4, 5, 6, dtype=torch.float64) * (step + 1)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        ya, yb = ours(xa), ref(xb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-12, atol=1e-12)
        ours.zero_grad()
        ref.zero_grad()
    ours.eval()
    ref.eval()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-10)


def test_functional_without_affine_and_gradcheck():
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: batch_norm(t, training=True), (x,))
    y = batch_norm(x)
    np.testing.assert_allclose(y.detach().numpy().mean(axis=(0, 2)), 0, atol=1e-12)


def test_functional_updates_running_stats_and_falls_back():
    rm, rv = torch.zeros(3), torch.ones(3)
    rm_t, rv_t = rm.clone(), rv.clone()
    x = torch.randn(8, 3) * 2 + 1
    torch.testing.assert_close(batch_norm(x, running_mean=rm, running_var=rv),
                               torch.nn.functional.batch_norm(x, rm_t, rv_t, training=True))
    torch.testing.assert_close((rm, rv), (rm_t, rv_t))
    with pytest.warns(UserWarning, match="float16"):
        y = batch_norm(x.half())
    assert y.dtype == torch.float16
