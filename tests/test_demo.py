"""``python -m fastopt demo`` and ``python -m fastopt bench --quick``.

The demo runs end to end in ``--quick`` mode into a temporary folder (its figures must be valid
PNGs); the batch-norm network it writes by hand is checked against central differences and
PyTorch; the recurrent part runs fastopt.ElmanRNN and the symmetry part fastopt.symmetry.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
import pytest

import fastopt
from fastopt import bench_quick
from fastopt.__main__ import main
from fastopt.demo import _batchnorm, _progress, _recurrent, default_out_dir, run_demo
from fastopt.demo._common import SIZES, split_digits

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and every chunk's CRC."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in chunk {kind!r}"
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    w, h = struct.unpack(">II", data[16:24])
    return w, h


# ------------------------------------------------------------------------------ end to end
def test_quick_demo_end_to_end(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figs"
    assert main(["demo", "--quick", "--out", str(out), "--seed", "0"]) == 0
    text = capsys.readouterr().out
    for number in (1, 2, 3, 4):
        assert f"== Part {number}" in text
        assert f"[part {number}: " in text  # the one-line summary of each part
    assert "failed" not in text
    assert "nan" not in text.lower().replace("finite", "")
    expected = ["1_ill_conditioning.png", "2_saddles.png", "3_batchnorm.png",
                "4_recurrent.png"]
    for name in expected:
        w, h = _check_png(out / name)
        assert w >= 800 and h >= 400  # readable, not a thumbnail
    # the last line says where the figures went
    assert text.strip().splitlines()[-1].endswith(f"{out.resolve()}/")
    # every figure was really drawn: pixels vary (an empty canvas would be uniform)
    import matplotlib.image

    img = matplotlib.image.imread(out / "4_recurrent.png")
    assert img.std() > 0.05


def test_without_matplotlib_everything_is_printed(tmp_path, capsys, monkeypatch):
    import fastopt.demo as demo

    monkeypatch.setattr(demo, "_figures_module", lambda: None)
    assert run_demo(out=tmp_path / "none", parts=[4], progress=False) == 0
    text = capsys.readouterr().out
    assert "pip install 'fastopt[plot]'" in text
    assert "Gaussian scaled to rho 1.1" in text and "exploding" in text
    assert not (tmp_path / "none").exists()


def test_a_failing_part_is_reported_and_the_others_run(tmp_path, capsys, monkeypatch):
    import fastopt.demo as demo

    def broken(ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(demo, "_figures_module", lambda: None)
    monkeypatch.setattr(demo, "PARTS", [("broken", broken), ("Part 4", _recurrent.run)])
    assert run_demo(out=tmp_path, progress=False) == 1
    text = capsys.readouterr().out
    assert "part 1: failed (RuntimeError: boom)" in text
    assert "[part 4: " in text


def test_bad_epochs():
    with pytest.raises(ValueError, match="epochs"):
        run_demo(epochs=0)
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])


def test_default_out_dir_never_reuses_a_folder_with_files(tmp_path):
    first = default_out_dir(tmp_path)
    assert first == tmp_path / "fastopt-demo"
    first.mkdir()
    assert default_out_dir(tmp_path) == first  # empty: reused
    (first / "old.png").write_bytes(b"x")
    assert default_out_dir(tmp_path) == tmp_path / "fastopt-demo-2"


def test_split_is_stratified_and_disjoint():
    d = split_digits(3)
    assert d.n_train + len(d.y_test) == 1797
    train_share = np.bincount(d.y_train, minlength=10) / d.n_train
    test_share = np.bincount(d.y_test, minlength=10) / len(d.y_test)
    assert np.abs(train_share - test_share).max() < 0.01
    rows = {r.tobytes() for r in d.X_train}
    assert sum(r.tobytes() in rows for r in d.X_test) < 20  # only true duplicate images


# ------------------------------------------------------------------------------ progress bars
def test_progress_off_when_not_a_terminal(capsys):
    bar = _progress.progress(10, "x")  # pytest's captured stdout is not a terminal
    bar.update(3)
    bar.set_postfix_str("hello")
    bar.close()
    assert capsys.readouterr().out == ""


def test_builtin_text_bar():
    stream = io.StringIO()
    bar = _progress._TextBar(4, "work", stream)
    for _ in range(4):
        bar.update(1)
    assert "[" + "#" * _progress._TextBar.width + "] 4/4" in stream.getvalue()
    bar.close()
    assert stream.getvalue().endswith("\r\x1b[K")


# ------------------------------------------------------------------------------ part 3's network
def _digits_batch(n=48):
    d = split_digits(0)
    return d.X_train[:n], d.y_train[:n]


def test_batchnorm_mlp_gradient_matches_central_differences():
    X, y = _digits_batch()
    plain = fastopt.MLP([64, 7, 5, 10])
    net = _batchnorm.BatchNormMLP([64, 7, 5, 10])
    theta = net.init_from(plain.init(0), plain)
    theta += 0.1 * np.random.default_rng(1).standard_normal(theta.size)
    loss, g = net.loss_and_grad(theta, X, y)
    rng = np.random.default_rng(2)
    for i in rng.choice(theta.size, 25, replace=False):
        e = np.zeros_like(theta)
        e[i] = 1e-6
        num = (net.loss_and_grad(theta + e, X, y)[0] - net.loss_and_grad(theta - e, X, y)[0]) / 2e-6
        assert abs(num - g[i]) < 1e-7 + 1e-5 * abs(g[i])
    # the bias feeding a batch norm has zero gradient (the norm removes it)
    b1 = net.unpack(g)[0][1]
    assert np.abs(b1).max() < 1e-12
    # the training pass through the stateful layers computes the same and moves running stats
    loss2, g2 = net.train_step_grad(theta.copy(), X, y)
    assert loss2 == pytest.approx(loss, rel=1e-12) and np.allclose(g2, g, rtol=1e-10, atol=1e-14)
    assert not np.allclose(net.layers[0].running_mean, 0)


def test_batchnorm_mlp_matches_torch():
    torch = pytest.importorskip("torch")
    X, y = _digits_batch()
    sizes = [64, 7, 5, 10]
    plain = fastopt.MLP(sizes)
    net = _batchnorm.BatchNormMLP(sizes)
    theta = net.init_from(plain.init(0), plain)
    theta += 0.1 * np.random.default_rng(1).standard_normal(theta.size)
    blocks = net.unpack(theta)
    params = [torch.tensor(a.copy(), requires_grad=True) for block in blocks for a in block]
    a = torch.tensor(X)
    k = 0
    for _ in range(len(sizes) - 2):
        W, b, gamma, beta = params[k:k + 4]
        k += 4
        z = a @ W + b
        z = torch.nn.functional.batch_norm(z, None, None, gamma, beta, training=True, eps=1e-5)
        a = torch.tanh(z)
    logits = a @ params[k] + params[k + 1]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    loss.backward()
    ref = np.concatenate([p.grad.numpy().ravel() for p in params])
    ours_loss, ours = net.loss_and_grad(theta, X, y)
    assert ours_loss == pytest.approx(loss.item(), rel=1e-12)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_the_demos_batch_norm_network_is_fastopt_network():
    # part 3 trains its hand-written network and measures sharpness with fastopt.Network's exact
    # HVP on the same theta: the two must be one function with one parameter layout
    X, y = _digits_batch()
    plain = fastopt.MLP(SIZES)
    net = _batchnorm.BatchNormMLP(SIZES)
    theta = net.init_from(plain.init(0), plain)
    theta += 0.05 * np.random.default_rng(3).standard_normal(theta.size)
    exact = _batchnorm.exact_network(net)
    assert exact.num_params == net.num_params
    loss, g = exact.loss_and_grad(theta, X, y)
    ref_loss, ref_g = net.loss_and_grad(theta, X, y)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-9, atol=1e-12)


def test_recurrent_and_symmetry_parts_draw_their_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert run_demo(out=tmp_path, epochs=1, quick=True, parts=[1, 4, 5], progress=False) == 0
    text = capsys.readouterr().out
    assert "pixel by pixel" in text and "barrier before aligning" in text
    for name in ("4_recurrent.png", "5_symmetry.png"):
        _check_png(tmp_path / name)


def test_recurrent_initialisations():
    inits = _recurrent.initialisations(16, 0)
    assert [label for label, _, _ in inits][-1].startswith("identity")
    rho = {label: np.abs(np.linalg.eigvals(W)).max() for label, _, W in inits}
    assert rho["Gaussian scaled to rho 0.9"] == pytest.approx(0.9, rel=1e-6)
    assert rho["Gaussian scaled to rho 1.1"] == pytest.approx(1.1, rel=1e-6)
    assert rho["orthogonal"] == pytest.approx(1.0, rel=1e-9)


# ------------------------------------------------------------------------------ bench --quick
@pytest.mark.parametrize("family", bench_quick.FAMILIES, ids=lambda f: f.__name__)
def test_quick_bench_family(family):
    rows = family(True, 1)
    contenders = {r.contender for r in rows}
    assert "numpy reference" in contenders and "fastopt cython" in contenders
    for r in rows:
        assert math.isfinite(r.ms) and r.ms > 0, r
        assert r.error < 1e-3, r  # every contender agrees with the reference (float32 level)


def test_quick_bench_table():
    rows = [bench_quick.Row("op", "numpy reference", 10.0, 0.0),
            bench_quick.Row("op", "fastopt cython", 2.0, 1e-7)]
    lines = bench_quick.format_table(rows)
    assert lines[1] == "op"
    assert "5.00" in lines[3] and "1.0e-07" in lines[3]


def test_bench_cli_dispatch(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_quick, "run_quick_bench", lambda: calls.append("quick") or 0)
    monkeypatch.setattr(bench_quick, "run_bench", lambda args: calls.append(args) or 0)
    assert main(["bench", "--quick"]) == 0
    assert main(["bench", "-k", "spectral"]) == 0
    assert calls == ["quick", ["-k", "spectral"]]


def test_part3_alone_trains_the_same_plain_network_as_part1(tmp_path, capsys, monkeypatch):
    """Part 3 reuses part 1's run for its plain network; run alone it trains it itself, and the
    two must be the same trajectory (same weights, minibatches and rate)."""
    import fastopt.demo as demo

    monkeypatch.setattr(demo, "_figures_module", lambda: None)

    def plain_losses(parts):
        assert run_demo(out=tmp_path, epochs=2, parts=parts, progress=False) == 0
        text = capsys.readouterr().out
        part3 = text[text.index("== Part 3"):]
        rows = [line.split() for line in part3.splitlines() if line[:5].strip() in ("1", "2")]
        return [(r[0], r[1], r[3]) for r in rows[:2]]  # epoch, plain loss, plain accuracy

    assert plain_losses([1, 3]) == plain_losses([3])
