"""Part 3: batch normalization (Ioffe and Szegedy, 2015; Goodfellow et al., section 8.7.1).

The plain MLP of part 1 and the same network with a batch-norm layer before each tanh, trained
side by side (same initial weights, same minibatches, same learning rate): loss curves, test
accuracy and sharpness (the Hessian's largest eigenvalue) over training.

The batch-norm network is written here in numpy around fastopt's batch-norm kernels: the
layer ``fastopt.BatchNorm`` (running statistics for evaluation) in training, the functions
``batch_norm_forward`` / ``batch_norm_backward`` for the loss as a pure function of theta. Its
sharpness comes from the exact Hessian-vector products of ``fastopt.Network`` with the same
layers and the same parameter layout (tests/test_demo.py checks that the two agree).
"""

from __future__ import annotations

import warnings

import numpy as np

from ._common import SIZES, Context, accuracy
from ._ill_conditioning import BATCH, LEARNING_RATE  # part 1's run is the plain network's
from ._progress import progress


def _softmax_xent(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y]).mean())
    p[np.arange(n), y] -= 1.0
    return loss, p / n


class BatchNormMLP:
    """``Dense -> BatchNorm -> tanh`` twice, then ``Dense``; softmax cross-entropy; float64.

    ``theta`` holds, layer by layer: ``W`` (n_in, n_out) row-major and ``b`` of each dense
    layer, ``weight`` and ``bias`` of each batch norm (the layout of ``fastopt.Network``).
    """

    def __init__(self, sizes: list[int]) -> None:
        from .. import BatchNorm

        self.sizes = sizes
        self.slices = []  # per hidden block (W, b, gamma, beta), then the output (W, b)
        off = 0
        for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            shapes = [(n_in, n_out), (n_out,)]
            if l < len(sizes) - 2:
                shapes += [(n_out,), (n_out,)]
            block = []
            for shape in shapes:
                size = int(np.prod(shape))
                block.append((off, off + size, shape))
                off += size
            self.slices.append(block)
        self.num_params = off
        # training-mode layers that keep the running statistics used at test time
        self.layers = [BatchNorm(n, dtype=np.float64, backend="cython") for n in sizes[1:-1]]

    def unpack(self, theta: np.ndarray) -> list[list[np.ndarray]]:
        return [[theta[a:b].reshape(shape) for a, b, shape in block] for block in self.slices]

    def init_from(self, plain_theta: np.ndarray, plain) -> np.ndarray:
        """The plain MLP's weights, batch norms at weight 1 and bias 0."""
        theta = np.empty(self.num_params)
        for (W, b), block in zip(plain.unpack(plain_theta), self.unpack(theta), strict=True):
            block[0][...] = W
            block[1][...] = b
            if len(block) == 4:
                block[2][...] = 1.0
                block[3][...] = 0.0
        return theta

    def _pass(self, theta, X, y, mode: str):
        """mode "grad": pure loss and gradient (batch statistics, nothing updated); "train":
        the same through the stateful layers (running statistics updated); "eval": logits with
        the running statistics."""
        from .. import batch_norm_backward, batch_norm_forward

        blocks = self.unpack(theta)
        a = X
        saved = []
        for l, block in enumerate(blocks[:-1]):
            W, b, gamma, beta = block
            z = a @ W + b
            if mode == "grad":
                out = batch_norm_forward(z, gamma, beta, backend="cython")
                zn, stats = out.y, (out.mean, out.invstd)
            else:
                bn = self.layers[l]
                bn.weight, bn.bias = gamma, beta  # views into theta: the layer trains them
                zn, stats = bn.forward(z, training=(mode == "train")), None
            h = np.tanh(zn)
            saved.append((a, z, stats, h))
            a = h
        W, b = blocks[-1]
        logits = a @ W + b
        if mode == "eval":
            return logits
        loss, dlogits = _softmax_xent(logits, y)
        grad = np.empty_like(theta)
        gblocks = self.unpack(grad)
        gblocks[-1][0][...] = a.T @ dlogits
        gblocks[-1][1][...] = dlogits.sum(axis=0)
        da = dlogits @ W.T
        for l in range(len(blocks) - 2, -1, -1):
            W, b, gamma, beta = blocks[l]
            a_in, z, stats, h = saved[l]
            dzn = da * (1.0 - h * h)
            if mode == "grad":
                g = batch_norm_backward(dzn, z, stats[0], stats[1], gamma, backend="cython")
                dz, dgamma, dbeta = g.dx, g.dweight, g.dbias
            else:
                bn = self.layers[l]
                dz = bn.backward(dzn)
                dgamma, dbeta = bn.grad_weight, bn.grad_bias
            gb = gblocks[l]
            gb[0][...] = a_in.T @ dz
            gb[1][...] = dz.sum(axis=0)
            gb[2][...] = dgamma
            gb[3][...] = dbeta
            da = dz @ W.T
        return loss, grad

    def loss_and_grad(self, theta, X, y):
        return self._pass(theta, X, y, "grad")

    def train_step_grad(self, theta, X, y):
        return self._pass(theta, X, y, "train")

    def predict(self, theta, X):
        return self._pass(theta, X, None, "eval")


def exact_network(bn_net: BatchNormMLP):
    """``fastopt.Network`` with the demo's layers (Dense, BatchNorm, Tanh per hidden layer) and
    its parameter layout, for exact HVPs through training-mode batch norm."""
    from .. import Network, nn

    layers = []
    for n_in, n_out in zip(bn_net.sizes[:-2], bn_net.sizes[1:-1], strict=True):
        layers += [nn.Dense(n_in, n_out), nn.BatchNorm(n_out), nn.Tanh()]
    layers.append(nn.Dense(bn_net.sizes[-2], bn_net.sizes[-1]))
    return Network(layers, loss="cross_entropy", dtype=np.float64)


def run(ctx: Context) -> str:
    from .. import MLP, hessian_extremes

    d = ctx.data
    epochs = ctx.epochs
    plain = MLP(SIZES, activation="tanh", loss="cross_entropy")
    theta_plain = plain.init(np.random.default_rng(ctx.seed))
    bn_net = BatchNormMLP(SIZES)
    theta_bn = bn_net.init_from(theta_plain, plain)
    Xm, ym = ctx.measure_batch()
    exact = exact_network(bn_net)
    method = "exact HVPs (fastopt.Network)"
    ctx.say(f"MLP {SIZES} tanh, with and without batch norm before each tanh "
            f"({plain.num_params} and {bn_net.num_params} parameters), from the same weights: "
            f"SGD, learning rate {LEARNING_RATE}, minibatch {BATCH}, {epochs} epochs.")
    ctx.say(f"Sharpness lambda_max on {len(ym)} training images: plain network by Lanczos on "
            f"exact HVPs; batch-norm network (batch statistics, training mode) by {method}.")
    which = sorted({0, epochs // 4, epochs // 2, (3 * epochs) // 4, epochs})
    # Part 1 trained this very plain network (same weights, minibatches and rate) and part 2
    # measured its sharpness at the same epochs: reuse them instead of computing them twice.
    part1 = ctx.shared.get("part1")
    reuse = (part1 is not None and len(part1["checkpoints"]) == epochs + 1
             and np.array_equal(part1["theta0"], theta_plain))
    known_sharpness = dict(ctx.shared.get("part2_lambda_max", {})) if reuse else {}
    rng = np.random.default_rng(ctx.seed + 1)
    rec = {k: [] for k in ("loss_plain", "loss_bn", "acc_plain", "acc_bn")}
    sharp = {"epoch": [], "plain": [], "bn": []}
    n_batches = d.n_train // BATCH
    bar = progress(epochs * n_batches + len(which), "part 3: side by side",
                   enabled=ctx.progress_enabled)

    def measure(epoch: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if epoch in known_sharpness:
                sp = known_sharpness[epoch]
            else:
                sp = hessian_extremes(plain, theta_plain, Xm, ym, tol=1e-3, maxiter=80,
                                      backend="cython").lambda_max
            sb = hessian_extremes(exact, theta_bn, Xm, ym, tol=1e-3, maxiter=80).lambda_max
        sharp["epoch"].append(epoch)
        sharp["plain"].append(sp)
        sharp["bn"].append(sb)
        bar.update(1)

    try:
        measure(0)
        for epoch in range(1, epochs + 1):
            order = rng.permutation(d.n_train)
            for j in range(n_batches):
                idx = order[j * BATCH:(j + 1) * BATCH]
                Xb, yb = d.X_train[idx], d.y_train[idx]
                if not reuse:
                    _, g = plain.loss_and_grad(theta_plain, Xb, yb, backend="cython")
                    theta_plain -= LEARNING_RATE * g
                _, g = bn_net.train_step_grad(theta_bn, Xb, yb)
                theta_bn -= LEARNING_RATE * g
                bar.update(1)
            if reuse:
                theta_plain = part1["checkpoints"][epoch].copy()
                rec["loss_plain"].append(part1["record"]["loss"][epoch - 1])
            else:
                rec["loss_plain"].append(plain.loss(theta_plain, d.X_train, d.y_train,
                                                    backend="cython"))
            rec["loss_bn"].append(bn_net.loss_and_grad(theta_bn, d.X_train, d.y_train)[0])
            rec["acc_plain"].append(accuracy(plain.forward(theta_plain, d.X_test), d.y_test))
            rec["acc_bn"].append(accuracy(bn_net.predict(theta_bn, d.X_test), d.y_test))
            bar.set_postfix_str(f"epoch {epoch} loss {rec['loss_plain'][-1]:.3f} / "
                                f"{rec['loss_bn'][-1]:.3f}")
            if epoch in which:
                measure(epoch)
    finally:
        bar.close()
    ctx.say(f"{'epoch':>5} {'loss plain':>10} {'loss BN':>9} {'acc plain':>9} {'acc BN':>7}")
    for e in range(epochs):
        ctx.say(f"{e + 1:5d} {rec['loss_plain'][e]:10.4f} {rec['loss_bn'][e]:9.4f} "
                f"{rec['acc_plain'][e]:9.3f} {rec['acc_bn'][e]:7.3f}")
    ctx.say(f"{'epoch':>5} {'lambda_max plain':>16} {'lambda_max BN':>14}   (2 / lr = "
            f"{2 / LEARNING_RATE:g}: the step's stability bound on a quadratic)")
    for e, sp, sb in zip(sharp["epoch"], sharp["plain"], sharp["bn"], strict=True):
        ctx.say(f"{e:5d} {sp:16.4f} {sb:14.4f}")
    if ctx.figures is not None:
        path = ctx.figure_path("3_batchnorm.png")
        ctx.figures.batchnorm(path, rec, sharp, LEARNING_RATE, method)
        ctx.say(f"figure: {path}")
    return (f"part 3: final training loss {rec['loss_plain'][-1]:.4f} plain vs "
            f"{rec['loss_bn'][-1]:.4f} with batch norm, test accuracy {rec['acc_plain'][-1]:.3f}"
            f" vs {rec['acc_bn'][-1]:.3f}; sharpness at the end {sharp['plain'][-1]:.3g} vs "
            f"{sharp['bn'][-1]:.3g}")
