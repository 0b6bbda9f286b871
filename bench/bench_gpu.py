"""GPU benchmark of fastopt's numba.cuda paths against PyTorch (cuDNN/cuBLAS) and JAX.

One command, a few minutes on a GPU; without a CUDA GPU (torch.cuda.is_available() false) it
prints why and exits 0::

    env -u NUMBA_ENABLE_CUDASIM PYTHONPATH=. python bench/bench_gpu.py [--repeat 20] [--json F]

Cases (float32):

- ``batchnorm 128x256x28x28``: training forward + backward; fastopt (``batch_norm_forward`` /
  ``batch_norm_backward`` on torch tensors, zero-copy) vs ``torch.nn.functional.batch_norm``
  forward + autograd backward (cuDNN);
- ``spectral_norm 64x256x256`` and ``spectral_norm 4096x4096``: fastopt ``spectral_norm``
  (tol 1e-6) vs ``torch.linalg.matrix_norm(ord=2)`` (SVD) and power iteration in torch (batched
  ``bmm``, until the relative change is below 1e-6, checked every 10 steps);
- ``hvp MLP [784, 1024, 1024, 1024, 10] N=1024``: fastopt ``MLP.hvp`` (tanh, cross-entropy, one
  direction; GEMMs through torch's cuBLAS) vs torch double backward and, where JAX sees a GPU,
  ``jax.jvp(jax.grad(loss))`` under ``jit``.

Each contender runs in a process of its own (``--one CASE CONTENDER``); the parent prints, per
case, the median time of each contender, its speed ratio against the torch baseline (> 1: fastopt
faster), and its fraction of the device's rate measured in the same run: device-to-device copy
bandwidth (read + write, 1 GiB) for the memory-bound cases, float32 matmul rate (8192^2, TF32 off)
for the HVP. Bytes and flops counted: batch norm 3 reads + 2 writes of x-sized float32 arrays
(the minimum for forward + backward), spectral norm one read of W per pass (fastopt's pass count:
iterations + 2; torch power iteration: 2 per step), HVP the GEMM flops of the R-operator.

``--dry-run`` runs everything on the CPU at tiny shapes (torch CPU tensors, fastopt's host path):
it checks the script, not any speed.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from _gpu_child import parse_args, run_cases, write_json  # bench/: the script's directory

CASES = {
    "floor-bandwidth": ("floor",),
    "floor-matmul": ("floor",),
    "batchnorm": ("fastopt", "torch"),
    "spectral-batched": ("fastopt", "torch-matrix_norm", "torch-power"),
    "spectral-4096": ("fastopt", "torch-matrix_norm", "torch-power"),
    "hvp": ("fastopt", "torch", "jax"),
}
LABELS = {
    "batchnorm": "batchnorm 128x256x28x28 fwd+bwd",
    "spectral-batched": "spectral_norm 64x256x256",
    "spectral-4096": "spectral_norm 4096x4096",
    "hvp": "hvp MLP [784, 1024, 1024, 1024, 10] N=1024",
}
BASELINE = {"batchnorm": "torch", "spectral-batched": "torch-matrix_norm",
            "spectral-4096": "torch-matrix_norm", "hvp": "torch"}
FULL = dict(bn=(128, 256, 28, 28), batched=(64, 256, 256), big=(4096, 4096),
            sizes=[784, 1024, 1024, 1024, 10], N=1024, bw_bytes=1 << 30, mm=8192)
DRY = dict(bn=(4, 3, 5, 5), batched=(3, 16, 16), big=(64, 64), sizes=[12, 16, 16, 3], N=8,
           bw_bytes=1 << 20, mm=64)


# --------------------------------------------------------------------------------- measurement
def _timer(device):
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def measure(fn, repeat):
        fn()
        fn()  # warm-up: compilation, caches, cuBLAS handles
        sync()
        times = []
        for _ in range(repeat):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return measure


def _one(case, contender, repeat, dry):
    import numpy as np
    import torch

    shapes = DRY if dry else FULL
    device = "cpu" if dry else "cuda"
    measure = _timer(device)
    info = {}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device)

    if case == "floor-bandwidth":
        n = shapes["bw_bytes"] // 4
        x, y = randn(n), torch.empty(n, device=device)
        t = measure(lambda: y.copy_(x), repeat)
        info["bandwidth"] = 2 * n * 4 / t
    elif case == "floor-matmul":
        n = shapes["mm"]
        a, b = randn(n, n), randn(n, n)
        c = torch.empty(n, n, device=device)
        t = measure(lambda: torch.matmul(a, b, out=c), repeat)
        info["flops"] = 2 * n**3 / t
    elif case == "batchnorm":
        shape = shapes["bn"]
        C = shape[1]
        x, dy = randn(*shape), randn(*shape)
        info["bytes"] = 5 * x.numel() * 4
        if contender == "torch":
            w = torch.ones(C, device=device, requires_grad=True)
            b = torch.zeros(C, device=device, requires_grad=True)
            rm, rv = torch.zeros(C, device=device), torch.ones(C, device=device)
            xg = x.clone().requires_grad_(True)

            def run():
                y = torch.nn.functional.batch_norm(xg, rm, rv, w, b, training=True)
                y.backward(dy)
        else:
            from fastopt import batch_norm_backward, batch_norm_forward

            w, b = np.ones(C, np.float32), np.zeros(C, np.float32)
            rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
            xs, dys = (x, dy) if not dry else (x.numpy(), dy.numpy())

            def run():
                out = batch_norm_forward(xs, w, b, axis=1, running_mean=rm, running_var=rv)
                batch_norm_backward(dys, xs, out.mean, out.invstd, w, axis=1)
        t = measure(run, repeat)
    elif case.startswith("spectral"):
        shape = shapes["batched"] if case == "spectral-batched" else shapes["big"]
        W = randn(*shape) / shape[-1] ** 0.5
        nbytes = W.numel() * 4
        if contender == "torch-matrix_norm":
            t = measure(lambda: torch.linalg.matrix_norm(W, ord=2), repeat)
            info["bytes"] = nbytes  # at least one read
        elif contender == "torch-power":
            W3 = W if W.dim() == 3 else W[None]
            steps = [0]

            def run():
                v = torch.ones(W3.shape[0], W3.shape[2], 1, device=device)
                v = v / v.norm(dim=1, keepdim=True)
                prev = torch.zeros(W3.shape[0], device=device)
                for it in range(1, 1001):
                    u = torch.bmm(W3, v)
                    s = u.norm(dim=1).squeeze(-1)
                    u = u / s[:, None, None]
                    v = torch.bmm(W3.transpose(1, 2), u)
                    v = v / v.norm(dim=1, keepdim=True)
                    if it % 10 == 0:
                        if bool(((s - prev).abs() <= 1e-6 * s).all()):
                            break
                        prev = s
                steps[0] = it
            t = measure(run, repeat)
            info["bytes"] = 2 * steps[0] * nbytes
            info["iterations"] = steps[0]
        else:
            from fastopt import spectral_norm

            Wf = W if not dry else W.numpy()
            res = spectral_norm(Wf, tol=1e-6)
            iters = np.max(np.asarray(res.iterations))
            t = measure(lambda: spectral_norm(Wf, tol=1e-6), repeat)
            info["bytes"] = (int(iters) + 2) * nbytes
            info["iterations"] = int(iters)
    elif case == "hvp":
        sizes, N = shapes["sizes"], shapes["N"]
        P = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        X = randn(N, sizes[0])
        y = torch.randint(0, sizes[-1], (N,), generator=gen).to(device)
        theta = randn(P) * 0.03
        v = randn(P)
        info["flops"] = _hvp_flops(sizes, N)
        if contender == "torch":
            def loss_of(th):
                a, off = X, 0
                for i, (n_in, n_o) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
                    W_ = th[off:off + n_in * n_o].view(n_in, n_o)
                    b_ = th[off + n_in * n_o:off + n_in * n_o + n_o]
                    off += n_in * n_o + n_o
                    a = a @ W_ + b_
                    if i < len(sizes) - 2:
                        a = torch.tanh(a)
                return torch.nn.functional.cross_entropy(a, y)

            def run():
                th = theta.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(loss_of(th), th, create_graph=True)
                (hv,) = torch.autograd.grad(g @ v, th)
                return hv
            t = measure(run, repeat)
        elif contender == "jax":
            try:
                import jax
                import jax.numpy as jnp
            except ImportError:
                return {"skipped": "jax not installed"}
            if not dry and not any(d.platform == "gpu" for d in jax.devices()):
                return {"skipped": "jax sees no GPU"}
            Xj, yj = jnp.asarray(X.cpu().numpy()), jnp.asarray(y.cpu().numpy())
            thj, vj = jnp.asarray(theta.cpu().numpy()), jnp.asarray(v.cpu().numpy())

            def jloss(th):
                a, off = Xj, 0
                for i, (n_in, n_o) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
                    W_ = th[off:off + n_in * n_o].reshape(n_in, n_o)
                    b_ = th[off + n_in * n_o:off + n_in * n_o + n_o]
                    off += n_in * n_o + n_o
                    a = jnp.dot(a, W_, precision="highest") + b_
                    if i < len(sizes) - 2:
                        a = jnp.tanh(a)
                logz = jax.nn.logsumexp(a, axis=1)
                return jnp.mean(logz - jnp.take_along_axis(a, yj[:, None], axis=1)[:, 0])

            hvp = jax.jit(lambda th, vv: jax.jvp(jax.grad(jloss), (th,), (vv,))[1])
            t = measure(lambda: hvp(thj, vj).block_until_ready(), repeat)
        else:
            from fastopt import MLP

            net = MLP(sizes, activation="tanh", loss="cross_entropy", dtype=np.float32)
            args = (theta, X, y, v) if not dry else (theta.numpy(), X.numpy(), y.numpy(),
                                                     v.numpy())
            t = measure(lambda: net.hvp(*args), repeat)
    else:
        raise SystemExit(f"unknown case {case!r}")
    if case.startswith("floor"):
        return info
    info["seconds"] = t
    return info


def _hvp_flops(sizes, N, k=1):
    """GEMM flops of fastopt's HVP (R-operator): forward Z, R-forward (ZR from layer 1 on, AV),
    backward G (R-streams), Gr, DA, DAR, DV (from layer 1 on)."""
    total = 0
    for l, (n_in, n_o) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        mac = N * n_in * n_o
        total += mac * (1 + k)  # Z0, AV
        total += mac * k  # G
        if l > 0:
            total += mac * k  # ZR
            total += mac * k  # Gr
            total += mac * (1 + k + k)  # DA0, DAR, DV
    return 2 * total


# --------------------------------------------------------------------------------- the driver
def main(argv=None):
    args = parse_args(__doc__.split("\n")[0], argv)
    if args.one:
        print(json.dumps(_one(*args.one, args.repeat, args.dry_run)))
        return 0
    if not args.dry_run:
        try:
            import torch
        except ImportError:
            print("bench_gpu: skipped (PyTorch not installed: it is the baseline)")
            return 0
        if not torch.cuda.is_available():
            print("bench_gpu: skipped (no CUDA GPU: torch.cuda.is_available() is False)")
            return 0
        print(f"device: {torch.cuda.get_device_name()}")
    results = run_cases(__file__, CASES, args, 18)
    bw = results[("floor-bandwidth", "floor")].get("bandwidth")
    mm = results[("floor-matmul", "floor")].get("flops")
    print(f"\nsame-run rates: copy bandwidth {bw / 1e9 if bw else float('nan'):.0f} GB/s, "
          f"float32 matmul {mm / 1e12 if mm else float('nan'):.1f} TFLOP/s\n")
    print(f"{'case':45s} {'contender':18s} {'ms':>9s} {'vs base':>8s} {'of rate':>8s}")
    for case, label in LABELS.items():
        base = results[(case, BASELINE[case])].get("seconds")
        for contender in CASES[case]:
            r = results[(case, contender)]
            if "seconds" not in r:
                print(f"{label:45s} {contender:18s} {r}")
                continue
            t = r["seconds"]
            ratio = base / t if base else float("nan")
            if "flops" in r and mm:
                frac = r["flops"] / t / mm
            elif "bytes" in r and bw:
                frac = r["bytes"] / t / bw
            else:
                frac = float("nan")
            print(f"{label:45s} {contender:18s} {t * 1e3:9.3f} {ratio:7.2f}x {frac:8.1%}")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
