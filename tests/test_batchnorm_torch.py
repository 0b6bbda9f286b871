"""Batch norm against PyTorch (skipped without torch): functions and the stateful layer."""

import numpy as np
import pytest
from conftest import compiled_backends

from fastopt import BatchNorm, batch_norm_backward, batch_norm_forward

torch = pytest.importorskip("torch")

BACKENDS = compiled_backends("batchnorm")


def torch_forward_backward(x, w, b, dy, rm, rv, training, momentum=0.1, eps=1e-5):
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    y = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training, momentum, eps)
    y.backward(torch.tensor(dy))
    return (y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy(),
            trm.numpy(), trv.numpy())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(16, 6), (8, 5, 9), (4, 6, 5, 7), (2, 3, 4, 5, 3)])
def test_functions_match_torch_float64(backend, training, shape):
    rng = np.random.default_rng(sum(shape))
    c = shape[1]
    x = rng.standard_normal(shape) * 3 + 2
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    dy = rng.standard_normal(shape)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    y_t, dx_t, dw_t, db_t, rm_t, rv_t = torch_forward_backward(x, w, b, dy, rm, rv, training)
    rm_f, rv_f = rm.copy(), rv.copy()
    y, mean, invstd = batch_norm_forward(x, w, b, training=training, running_mean=rm_f,
                                         running_var=rv_f, backend=backend)
    dx, dw, db = batch_norm_backward(dy, x, mean, invstd, w, training=training, backend=backend)
    for got, want in [(y, y_t), (dx, dx_t), (dw, dw_t), (db, db_t), (rm_f, rm_t), (rv_f, rv_t)]:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_matches_torch_float32(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5, 6, 8)).astype(np.float32)  # NHWC, C = 8
    w, b = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    to_nchw = (0, 3, 1, 2)
    y_t, dx_t, dw_t, db_t, *_ = torch_forward_backward(
        x.transpose(to_nchw).copy(), w, b, dy.transpose(to_nchw).copy(),
        np.zeros(8, np.float32), np.ones(8, np.float32), True)
    y, mean, invstd = batch_norm_forward(x, w, b, axis=-1, backend=backend)
    dx, dw, db = batch_norm_backward(dy, x, mean, invstd, w, axis=-1, backend=backend)
    np.testing.assert_allclose(y.transpose(to_nchw), y_t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx.transpose(to_nchw), dx_t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, dw_t, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, db_t, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
def test_layer_matches_torch_module_over_steps(momentum, track):
    rng = np.random.default_rng(7)
    bn = BatchNorm(4, momentum=momentum, track_running_stats=track, dtype=np.float64)
    tbn = torch.nn.BatchNorm2d(4, momentum=momentum, track_running_stats=track).double()
    for step in range(3):
        x = rng.standard_normal((5, 4, 3, 3)) * (step + 1) + step
        dy = rng.standard_normal(x.shape)
        tx = torch.tensor(x, requires_grad=True)
        tbn.train()
        ty = tbn(tx)
        ty.backward(torch.tensor(dy))
        y = bn.forward(x, training=True)
        dx = bn.backward(dy)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(bn.grad_weight, tbn.weight.grad.numpy(), rtol=1e-10)
        tbn.weight.grad = None
        tbn.bias.grad = None
        if track:
            np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), rtol=1e-12)
            np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=1e-12)
            assert bn.num_batches_tracked == int(tbn.num_batches_tracked)
    x = rng.standard_normal((5, 4, 3, 3))
    tbn.eval()
    tx = torch.tensor(x, requires_grad=True)
    ty = tbn(tx)
    dy = rng.standard_normal(x.shape)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(bn.forward(x, training=False), ty.detach().numpy(), rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(bn.backward(dy), tx.grad.numpy(), rtol=1e-10, atol=1e-10)
