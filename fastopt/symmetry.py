"""Weight-space symmetry of fastopt's curvature models: canonical forms, alignment, barriers.

A network is not identifiable: swapping hidden units i and j of a layer (their incoming weights
and bias, and their outgoing weights) gives the same function, so m hidden layers of n units
have n!^m equivalent parameter vectors; odd activations (tanh, identity) add a sign flip of each
unit, 2^(n m) more. This module puts a theta into one canonical representative of its class,
applies and inverts the symmetries, aligns the hidden units of two networks (Ainsworth et al.,
"Git Re-Basin", 2023: weight matching and activation matching by linear assignment) and measures
the loss barrier on the straight path between them (Entezari et al., 2022).

Every function works on the flat theta of a model and returns a new array; the model's loss,
gradient and function are unchanged by :func:`permute` and :func:`canonicalize` (to rounding of
the reordered sums in the next layer's matrix product).

Examples
--------
>>> import numpy as np
>>> from fastopt import MLP
>>> from fastopt.symmetry import canonicalize, count_equivalent, permute
>>> net = MLP([3, 4, 2], activation="tanh", loss="cross_entropy")
>>> theta = net.init(0)
>>> shuffled = permute(net, theta, [np.array([2, 0, 3, 1])], signs=[np.array([1, -1, 1, -1])])
>>> bool(np.array_equal(canonicalize(net, shuffled).theta, canonicalize(net, theta).theta))
True
>>> count_equivalent(net).count      # 4! orderings times 2^4 signs of the tanh units
384
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ._validate import as_float_array, check_choice, check_int
from .curvature.mlp import MLP

__all__ = [
    "Canonical",
    "Equivalent",
    "InterpolationBarrier",
    "align",
    "canonicalize",
    "count_equivalent",
    "interpolation_barrier",
    "invert",
    "permute",
    "permute_running_stats",
]

# Activations f with f(-z) = -f(z): flipping a unit's incoming weights, bias and outgoing
# weights leaves the function unchanged.
_ODD = ("tanh", "identity")


class _HiddenLayer(NamedTuple):
    """Index blocks of theta that move with the units of one hidden layer.

    ``incoming`` (n_in, n) and ``bias`` (n,) are the unit's own parameters (column j and entry
    j); ``outgoing`` (n, n_next) are its outgoing weights (row j); ``extra`` are per-unit
    parameters that move with the unit but do not change sign (none for an MLP).
    """

    incoming: np.ndarray
    bias: np.ndarray
    outgoing: np.ndarray
    extra: tuple[np.ndarray, ...]
    odd: bool
    signed_extra: tuple[np.ndarray, ...] = ()
    batch_norms: tuple[int, ...] = ()


def _hidden_layers(model: object) -> list[_HiddenLayer]:
    """The hidden layers of ``model`` as index blocks of its theta."""
    if isinstance(model, MLP):
        if model.num_layers < 2:
            raise ValueError(
                f"model: {model!r} has no hidden layer, so no unit permutation symmetry"
            )
        index = np.arange(model.num_params)
        blocks = [(index[o0:o1].reshape(n_in, n_o), index[o1:o2])
                  for (n_in, n_o), (o0, o1, o2) in zip(
                      zip(model.sizes[:-1], model.sizes[1:], strict=True), model._offsets,
                      strict=True)]
        odd = model.activation in _ODD
        return [_HiddenLayer(W, b, blocks[l + 1][0], (), odd)
                for l, (W, b) in enumerate(blocks[:-1])]
    from .curvature.network import Network

    if isinstance(model, Network):
        return _network_layers(model)
    raise TypeError(
        f"model: expected a fastopt MLP or a model with hidden units (fastopt.Network), "
        f"got {type(model).__name__}"
    )


def _network_layers(net) -> list[_HiddenLayer]:
    """Hidden units of a fastopt.Network: the outputs of every Dense layer but the last, with
    the batch norms and activations between it and the next Dense acting unit by unit."""
    from ._codes import Activation
    from .nn import ActivationLayer, BatchNorm, Dense

    views = dict(zip(net.param_layers, net._views(np.arange(net.num_params)), strict=True))
    dense = [i for i, layer in enumerate(net.layers) if isinstance(layer, Dense)]
    bn_layers = [i for i, layer in enumerate(net.layers) if isinstance(layer, BatchNorm)]
    if len(dense) < 2:
        raise ValueError(f"model: {net!r} has no hidden Dense layer, so no unit permutation "
                         "symmetry")
    hidden = []
    for a, b in zip(dense[:-1], dense[1:], strict=True):
        between = range(a + 1, b)
        bns = [i for i in between if isinstance(net.layers[i], BatchNorm)]
        odd = all(net.layers[i].code in (Activation.TANH, Activation.IDENTITY)
                  for i in between if isinstance(net.layers[i], ActivationLayer))
        W, bias = views[a]
        hidden.append(_HiddenLayer(
            W, bias, views[b][0], tuple(views[i][0] for i in bns), odd,
            tuple(views[i][1] for i in bns), tuple(bn_layers.index(i) for i in bns)))
    return hidden


def _check_theta(model: object, theta: object, name: str) -> np.ndarray:
    dtype = np.dtype(getattr(model, "dtype", np.float64))
    theta = as_float_array(theta, name, dtype=dtype)
    if theta.shape != (model.num_params,):
        raise ValueError(f"{name}: expected shape ({model.num_params},) for {model!r}, "
                         f"got {theta.shape}")
    return theta


def _check_perms(layers: list[_HiddenLayer], perms: object, name: str) -> list[np.ndarray]:
    if isinstance(perms, np.ndarray) or not isinstance(perms, Sequence):
        raise TypeError(f"{name}: expected a list of {len(layers)} integer arrays (one per "
                        f"hidden layer), got {type(perms).__name__}")
    if len(perms) != len(layers):
        raise ValueError(f"{name}: expected {len(layers)} arrays (one per hidden layer), "
                         f"got {len(perms)}")
    out = []
    for l, (p, layer) in enumerate(zip(perms, layers, strict=True)):
        n = layer.bias.shape[0]
        p = np.asarray(p)
        if p.dtype.kind not in "iu" or p.shape != (n,):
            raise ValueError(f"{name}[{l}]: expected an integer array of shape ({n},), got "
                             f"dtype {p.dtype} shape {p.shape}")
        if not np.array_equal(np.sort(p), np.arange(n)):
            raise ValueError(f"{name}[{l}]: not a permutation of 0..{n - 1}")
        out.append(p.astype(np.intp))
    return out


def _check_signs(layers: list[_HiddenLayer], signs: object) -> list[np.ndarray]:
    if signs is None:
        return [np.ones(layer.bias.shape[0]) for layer in layers]
    if isinstance(signs, np.ndarray) or not isinstance(signs, Sequence):
        raise TypeError(f"signs: expected a list of {len(layers)} arrays of +1/-1 or None, got "
                        f"{type(signs).__name__}")
    if len(signs) != len(layers):
        raise ValueError(f"signs: expected {len(layers)} arrays (one per hidden layer), "
                         f"got {len(signs)}")
    out = []
    for l, (s, layer) in enumerate(zip(signs, layers, strict=True)):
        n = layer.bias.shape[0]
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (n,) or not np.all(np.abs(s) == 1):
            raise ValueError(f"signs[{l}]: expected {n} values of +1 or -1, got shape {s.shape}")
        if not layer.odd and np.any(s < 0):
            raise ValueError(f"signs[{l}]: a sign flip is a symmetry only for odd activations "
                             f"({', '.join(_ODD)}); this layer's is not odd")
        out.append(s)
    return out


def _gather(model: object, layers: list[_HiddenLayer], perms: list[np.ndarray],
            signs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(index, factor) with permuted theta = theta[index] * factor."""
    index = np.arange(model.num_params)
    factor = np.ones(model.num_params)
    for layer, p, s in zip(layers, perms, signs, strict=True):
        # new unit i is old unit p[i], with sign s[i]
        index[layer.incoming] = index[layer.incoming[:, p]]
        factor[layer.incoming] = factor[layer.incoming[:, p]] * s
        index[layer.bias] = index[layer.bias[p]]
        factor[layer.bias] = factor[layer.bias[p]] * s
        for block in layer.extra:
            index[block] = index[block[p]]
        for block in layer.signed_extra:
            index[block] = index[block[p]]
            factor[block] = factor[block[p]] * s
        index[layer.outgoing] = index[layer.outgoing[p, :]]
        factor[layer.outgoing] = factor[layer.outgoing[p, :]] * s[:, None]
    return index, factor


def permute(model: object, theta: np.ndarray, perms: Sequence[np.ndarray], *,
            signs: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Apply unit permutations (and sign flips) to every hidden layer of ``model``.

    Parameters
    ----------
    model : MLP or fastopt.Network
        For a Network, the units of each Dense layer but the last move together with the batch
        norms after it (weight and bias; :func:`permute_running_stats` for their running
        statistics) and the rows of the next Dense layer.
    theta : ndarray (num_params,)
    perms : list of integer arrays, one per hidden layer
        ``perms[l][i]`` is the old index of the unit that becomes unit ``i`` of hidden layer
        ``l``.
    signs : list of arrays of +1/-1, optional
        Sign of each new unit (flips its incoming weights, bias and outgoing weights); only for
        odd activations (tanh, identity).

    Returns
    -------
    ndarray (num_params,)
        A new theta computing the same function. :func:`invert` undoes it.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP
    >>> from fastopt.symmetry import permute
    >>> net = MLP([2, 3, 1], activation="tanh", loss="mse")
    >>> theta = net.init(0)
    >>> X = np.random.default_rng(1).standard_normal((4, 2))
    >>> moved = permute(net, theta, [np.array([1, 2, 0])])
    >>> bool(np.allclose(net.forward(moved, X), net.forward(theta, X)))
    True
    """
    layers = _hidden_layers(model)
    theta = _check_theta(model, theta, "theta")
    perms = _check_perms(layers, perms, "perms")
    signs = _check_signs(layers, signs)
    index, factor = _gather(model, layers, perms, signs)
    return (theta[index] * factor).astype(theta.dtype, copy=False)


def permute_running_stats(model: object, perms: Sequence[np.ndarray], *,
                          signs: Sequence[np.ndarray] | None = None
                          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """A Network's batch-norm running statistics after :func:`permute` with the same arguments.

    The running mean and variance of a batch norm move with its units, and a sign flip negates
    the mean. Set them with ``model.set_running_stats(...)`` so that eval mode computes the same
    function after the permutation.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import Network, nn
    >>> from fastopt.symmetry import permute_running_stats
    >>> net = Network([nn.Dense(2, 3), nn.BatchNorm(3), nn.Tanh(), nn.Dense(3, 1)], loss="mse")
    >>> net.set_running_stats([(np.array([1., 2., 3.]), np.array([4., 5., 6.]))])
    >>> mean, var = permute_running_stats(net, [np.array([2, 0, 1])],
    ...                                   signs=[np.array([1., -1., 1.])])[0]
    >>> mean.tolist(), var.tolist()
    ([3.0, -1.0, 2.0], [6.0, 4.0, 5.0])
    """
    layers = _hidden_layers(model)
    perms = _check_perms(layers, perms, "perms")
    signs = _check_signs(layers, signs)
    stats = [(m.copy(), v.copy()) for m, v in getattr(model, "running_stats", [])]
    for layer, p, s in zip(layers, perms, signs, strict=True):
        for j in layer.batch_norms:
            mean, var = stats[j]
            stats[j] = ((mean[p] * s).astype(mean.dtype), var[p])
    return stats


def invert(perms: Sequence[np.ndarray], signs: Sequence[np.ndarray] | None = None
           ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The permutations and signs that undo ``permute(model, theta, perms, signs=signs)``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP
    >>> from fastopt.symmetry import invert, permute
    >>> net = MLP([2, 3, 1], activation="tanh", loss="mse")
    >>> theta = net.init(0)
    >>> perms, signs = [np.array([1, 2, 0])], [np.array([1.0, -1.0, 1.0])]
    >>> back, back_signs = invert(perms, signs)
    >>> moved = permute(net, theta, perms, signs=signs)
    >>> bool(np.array_equal(permute(net, moved, back, signs=back_signs), theta))
    True
    """
    inverse = []
    for l, p in enumerate(perms):
        p = np.asarray(p)
        if p.ndim != 1 or p.dtype.kind not in "iu" or not np.array_equal(
                np.sort(p), np.arange(len(p))):
            raise ValueError(f"perms[{l}]: not a permutation array")
        q = np.empty_like(p, dtype=np.intp)
        q[p] = np.arange(len(p))
        inverse.append(q)
    if signs is None:
        return inverse, None
    # new unit i = sign s[i] * old unit p[i]; old unit j = s[q[j]] * new unit q[j]
    return inverse, [np.asarray(s, dtype=np.float64)[q] for s, q in zip(signs, inverse,
                                                                        strict=True)]


class Canonical(NamedTuple):
    """Result of :func:`canonicalize`: ``theta == permute(model, original, perms, signs=signs)``.
    """

    theta: np.ndarray
    perms: list[np.ndarray]
    signs: list[np.ndarray] | None


def canonicalize(model: object, theta: np.ndarray) -> Canonical:
    """One representative of theta's class under unit permutations and sign flips.

    Layer by layer from the input: for odd activations, each unit's sign is chosen so that the
    first nonzero of (bias, incoming weights) is positive; then the units are sorted
    lexicographically by (bias, incoming weights). The incoming weights of layer l + 1 are
    already in layer l's canonical order when it is sorted, so two thetas that differ only by a
    symmetry map to the same canonical theta (exactly, bit for bit, up to the sign of zeros).
    Units with identical parameters are interchangeable and keep their relative order.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP
    >>> from fastopt.symmetry import canonicalize
    >>> net = MLP([2, 3, 1], activation="relu", loss="mse")
    >>> theta = net.pack([(np.array([[1., 3., 2.], [0., 0., 0.]]), np.zeros(3)),
    ...                   (np.array([[10.], [30.], [20.]]), np.zeros(1))])
    >>> net.unpack(canonicalize(net, theta).theta)[1][0].ravel().tolist()
    [10.0, 20.0, 30.0]
    """
    layers = _hidden_layers(model)
    theta = _check_theta(model, theta, "theta")
    current = theta.copy()
    perms: list[np.ndarray] = []
    signs: list[np.ndarray] = []
    any_odd = any(layer.odd for layer in layers)
    identity = [np.arange(layer.bias.shape[0]) for layer in layers]
    ones = [np.ones(layer.bias.shape[0]) for layer in layers]
    for l, layer in enumerate(layers):
        keys = np.vstack([current[layer.bias][None, :], current[layer.incoming]]
                         + [current[e][None, :] for e in layer.signed_extra])  # (1+n_in+.., n)
        s = np.ones(keys.shape[1])
        if layer.odd:
            nonzero = keys != 0
            first = np.where(nonzero.any(axis=0), nonzero.argmax(axis=0), 0)
            s = np.where(keys[first, np.arange(keys.shape[1])] < 0, -1.0, 1.0)
            keys = keys * s
        keys = np.vstack([keys] + [current[e][None, :] for e in layer.extra])
        # np.lexsort sorts by the last key first: give it the rows in reverse
        order = np.lexsort(keys[::-1])
        step_perms = [p.copy() for p in identity]
        step_signs = [v.copy() for v in ones]
        step_perms[l] = order
        step_signs[l] = s[order]
        index, factor = _gather(model, layers, step_perms, step_signs)
        current = (current[index] * factor).astype(theta.dtype, copy=False)
        perms.append(order)
        signs.append(s[order])
    # the layer-by-layer steps compose: each step only reorders its own layer's units
    return Canonical(current, perms, signs if any_odd else None)


class Equivalent(NamedTuple):
    """Result of :func:`count_equivalent`."""

    count: int
    log10: float
    permutations: int
    sign_flips: int


def count_equivalent(model: object) -> Equivalent:
    """The number of parameter vectors equivalent to a generic theta of ``model``.

    Unit permutations give prod_l n_l! (the notes' n!^m for m layers of n units); odd
    activations multiply by 2^(sum_l n_l) sign flips. Exact Python integers; ``log10`` for a
    sense of scale. "Generic" means no two units of a layer have identical parameters and no
    unit is all zeros, so every symmetry gives a different vector. Continuous symmetries (the
    positive rescaling of ReLU units, any invertible map between linear layers, the scale of a
    weight feeding batch norm) are not counted: they make the set infinite.

    Examples
    --------
    >>> from fastopt import MLP
    >>> from fastopt.symmetry import count_equivalent
    >>> count_equivalent(MLP([784, 10, 10, 10], activation="relu")).count == 3628800 ** 2
    True
    >>> round(count_equivalent(MLP([64, 256, 256, 10], activation="tanh")).log10)
    1168
    """
    layers = _hidden_layers(model)
    perms = 1
    flips = 1
    for layer in layers:
        n = layer.bias.shape[0]
        perms *= math.factorial(n)
        if layer.odd:
            flips *= 2 ** n
    count = perms * flips
    return Equivalent(count, _log10(count), perms, flips)


def _log10(n: int) -> float:
    """log10 of a positive int of any size (str(n) is capped at 4300 digits)."""
    shift = max(n.bit_length() - 64, 0)
    return math.log10(n >> shift) + shift * math.log10(2.0)


def _hidden_activations(model: object, theta: np.ndarray, X: np.ndarray) -> list[np.ndarray]:
    """Post-activation values of every hidden layer on X (float64), for activation matching."""
    if not isinstance(model, MLP):
        return _network_activations(model, theta, X)
    from .reference.curvature import activation

    a = np.asarray(X, dtype=np.float64)
    out = []
    for W, b in model.unpack(theta)[:-1]:
        a = activation(model._act_code, a @ W.astype(np.float64) + b)[0]
        out.append(a)
    return out


def _network_activations(net, theta: np.ndarray, X: np.ndarray) -> list[np.ndarray]:
    """A Network's hidden units on X: each prefix up to the next Dense layer run as a network
    of its own (training-mode batch statistics of X, as in the loss)."""
    from .curvature.network import Network
    from .nn import Dense

    dense = [i for i, layer in enumerate(net.layers) if isinstance(layer, Dense)]
    offsets = net._offsets
    out = []
    for b in dense[1:]:
        prefix = Network(net.layers[:b], loss="mse", dtype=net.dtype, training=net.training)
        if not net.training:
            prefix.set_running_stats(net.running_stats[:sum(
                1 for i in range(b) if hasattr(net.layers[i], "momentum"))])
        out.append(np.asarray(prefix.forward(theta[:offsets[b]], X), dtype=np.float64))
    return out


def _assign(similarity: np.ndarray, odd: bool, unsigned: np.ndarray | float = 0.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Permutation (and signs) of b's units maximizing
    sum_i s_i similarity[i, p[i]] + unsigned[i, p[i]] (``unsigned``: the terms of parameters
    that keep their sign when a unit flips, a batch norm's weight)."""
    from scipy.optimize import linear_sum_assignment

    score = (np.abs(similarity) if odd else similarity) + unsigned
    rows, cols = linear_sum_assignment(score, maximize=True)
    p = cols[np.argsort(rows)]
    s = np.where(similarity[np.arange(len(p)), p] < 0, -1.0, 1.0) if odd else np.ones(len(p))
    return p, s


def align(model: object, theta_a: np.ndarray, theta_b: np.ndarray, *,
          method: str = "weights", X: np.ndarray | None = None, max_sweeps: int = 100,
          ) -> Canonical:
    """Permute the hidden units of ``theta_b`` to match those of ``theta_a``.

    ``method="weights"`` (weight matching): maximize sum_l <W_l^a, P_l W_l^b P_{l-1}^T> plus the
    biases' inner products over the permutations, by coordinate ascent: each hidden layer's
    permutation solves a linear assignment problem with the others fixed, in sweeps until none
    changes (at most ``max_sweeps``). ``method="activations"``: each layer's permutation
    maximizes the correlation of the two networks' hidden activations on ``X`` (one assignment
    per layer). For odd activations (tanh) a unit may also flip its sign. Assignments by
    ``scipy.optimize.linear_sum_assignment``.

    Returns
    -------
    Canonical
        ``theta`` is theta_b aligned (the same function as theta_b), with the permutations and
        signs applied to theta_b.

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP
    >>> from fastopt.symmetry import align, permute
    >>> net = MLP([3, 5, 5, 2], activation="relu")
    >>> theta = net.init(0)
    >>> rng = np.random.default_rng(1)
    >>> shuffled = permute(net, theta, [rng.permutation(5), rng.permutation(5)])
    >>> bool(np.array_equal(align(net, theta, shuffled).theta, theta))
    True
    """
    layers = _hidden_layers(model)
    method = check_choice(method, "method", ("weights", "activations"))
    theta_a = _check_theta(model, theta_a, "theta_a")
    theta_b = _check_theta(model, theta_b, "theta_b")
    max_sweeps = check_int(max_sweeps, "max_sweeps")
    n_units = [layer.bias.shape[0] for layer in layers]
    perms = [np.arange(n) for n in n_units]
    signs = [np.ones(n) for n in n_units]
    if method == "activations":
        if X is None:
            raise ValueError("X: method='activations' needs inputs X to compare activations on")
        acts_a = _hidden_activations(model, theta_a, X)
        acts_b = _hidden_activations(model, theta_b, X)
        for l, (aa, ab) in enumerate(zip(acts_a, acts_b, strict=True)):
            za = (aa - aa.mean(0)) / (aa.std(0) + 1e-12)
            zb = (ab - ab.mean(0)) / (ab.std(0) + 1e-12)
            perms[l], signs[l] = _assign(za.T @ zb / len(za), layers[l].odd)
    else:
        _weight_matching(layers, theta_a, theta_b, perms, signs, max_sweeps)
    any_odd = any(layer.odd for layer in layers)
    aligned = permute(model, theta_b, perms, signs=signs if any_odd else None)
    return Canonical(aligned, perms, signs if any_odd else None)


def _weight_matching(layers: list[_HiddenLayer], theta_a: np.ndarray, theta_b: np.ndarray,
                     perms: list[np.ndarray], signs: list[np.ndarray], max_sweeps: int) -> None:
    """Coordinate ascent of the weight-matching objective; updates ``perms``/``signs``.

    Hidden layer l's incoming rows are layer l-1's units and its outgoing columns are layer
    l+1's, so each layer's similarity needs only its own blocks with the neighbours' current
    permutations applied (no gather of the whole theta).
    """
    # float32 models match in float32 (BLAS twice as fast; the assignment only needs the order)
    work = np.float32 if theta_a.dtype == np.float32 else np.float64
    a = theta_a.astype(work, copy=False)
    b = theta_b.astype(work, copy=False)
    a_in = [a[layer.incoming] for layer in layers]
    b_in = [b[layer.incoming] for layer in layers]
    a_out = [a[layer.outgoing] for layer in layers]
    b_out = [b[layer.outgoing] for layer in layers]
    m = len(layers)
    # the parts of each similarity that no other layer's permutation changes, computed once:
    # the biases (and per-unit extras), the first layer's incoming and the last one's outgoing
    fixed = [np.outer(a[layer.bias], b[layer.bias])
             + sum((np.outer(a[e], b[e]) for e in layer.signed_extra), 0.0) for layer in layers]
    unsigned = [sum((np.outer(a[e], b[e]) for e in layer.extra), 0.0) for layer in layers]
    fixed[0] = fixed[0] + a_in[0].T @ b_in[0]
    fixed[-1] = fixed[-1] + a_out[-1] @ b_out[-1].T
    for _ in range(max_sweeps):
        changed = False
        for l in range(m):
            similarity = fixed[l].copy()
            if l > 0:
                incoming = b_in[l][perms[l - 1]] * signs[l - 1][:, None].astype(work)
                similarity += a_in[l].T @ incoming
            if l + 1 < m:
                outgoing = b_out[l][:, perms[l + 1]] * signs[l + 1].astype(work)
                similarity += a_out[l] @ outgoing.T
            p, s = _assign(similarity.astype(np.float64, copy=False), layers[l].odd,
                           unsigned[l])
            if not (np.array_equal(p, perms[l]) and np.array_equal(s, signs[l])):
                changed = True
            perms[l], signs[l] = p, s
        if not changed:
            return


class InterpolationBarrier(NamedTuple):
    """Result of :func:`interpolation_barrier` (``aligned_*`` are None when ``align=None``)."""

    t: np.ndarray
    loss: np.ndarray
    barrier: float
    aligned_loss: np.ndarray | None
    aligned_barrier: float | None
    accuracy: np.ndarray | None
    aligned_accuracy: np.ndarray | None
    lambda_max: np.ndarray | None
    aligned_lambda_max: np.ndarray | None
    theta_b_aligned: np.ndarray | None


def _path(model, theta_a, theta_b, X, y, t, *, accuracy: bool, sharpness: bool, backend: str):
    losses, accs, lmax = [], [], []
    for ti in t:
        theta = ((1.0 - ti) * theta_a.astype(np.float64)
                 + ti * theta_b.astype(np.float64)).astype(theta_a.dtype)
        losses.append(model.loss(theta, X, y, backend=backend))
        if accuracy:
            accs.append(float(np.mean(np.argmax(model.forward(theta, X), axis=1) == y)))
        if sharpness:
            from .curvature import hessian_extremes

            lmax.append(hessian_extremes(model, theta, X, y, backend=backend).lambda_max)
    return (np.array(losses), np.array(accs) if accuracy else None,
            np.array(lmax) if sharpness else None)


def interpolation_barrier(model: object, theta_a: np.ndarray, theta_b: np.ndarray,
                          X: np.ndarray, y: np.ndarray, *, points: int = 25,
                          align: str | None = "weights", sharpness: bool = False,
                          backend: str = "auto") -> InterpolationBarrier:
    """Losses on the straight path (1 - t) theta_a + t theta_b, before and after alignment.

    The barrier is the largest loss on the path minus the mean of the two ends' losses
    (Entezari et al., 2022). With ``align`` ("weights" or "activations", see :func:`align`;
    activation matching uses ``X``), theta_b is first aligned to theta_a and the path measured
    again: aligned networks of the same architecture are often joined by a nearly flat path.
    For the cross-entropy loss the accuracy along each path is reported too; ``sharpness=True``
    adds the Hessian's largest eigenvalue at each point (one Lanczos run per point).

    Examples
    --------
    >>> import numpy as np
    >>> from fastopt import MLP
    >>> from fastopt.symmetry import interpolation_barrier, permute
    >>> net = MLP([2, 6, 2], activation="tanh")
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((32, 2)), rng.integers(0, 2, 32)
    >>> theta = net.init(0)
    >>> twin = permute(net, theta, [rng.permutation(6)])   # the same function, units shuffled
    >>> result = interpolation_barrier(net, theta, twin, X, y, points=5)
    >>> bool(result.aligned_barrier < 1e-12)
    True
    """
    theta_a = _check_theta(model, theta_a, "theta_a")
    theta_b = _check_theta(model, theta_b, "theta_b")
    points = check_int(points, "points")
    if points < 2:
        raise ValueError(f"points: need at least 2 (the two ends), got {points}")
    if align is not None:
        align = check_choice(align, "align", ("weights", "activations"))
    t = np.linspace(0.0, 1.0, points)
    classify = getattr(model, "loss_name", None) == "cross_entropy"
    loss, acc, lmax = _path(model, theta_a, theta_b, X, y, t, accuracy=classify,
                            sharpness=sharpness, backend=backend)
    barrier = float(loss.max() - 0.5 * (loss[0] + loss[-1]))
    if align is None:
        return InterpolationBarrier(t, loss, barrier, None, None, acc, None, lmax, None, None)
    aligned = globals()["align"](model, theta_a, theta_b, method=align, X=X).theta
    a_loss, a_acc, a_lmax = _path(model, theta_a, aligned, X, y, t, accuracy=classify,
                                  sharpness=sharpness, backend=backend)
    a_barrier = float(a_loss.max() - 0.5 * (a_loss[0] + a_loss[-1]))
    return InterpolationBarrier(t, loss, barrier, a_loss, a_barrier, acc, a_acc, lmax, a_lmax,
                                aligned)
