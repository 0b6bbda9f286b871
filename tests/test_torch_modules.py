"""fastopt.torch.BatchNorm1d/2d/3d against torch's modules; state, pickling, fallback,
convert/revert."""

import copy
import io
import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402

PAIRS = [
    (ft.BatchNorm1d, torch.nn.BatchNorm1d, (6, 4)),
    (ft.BatchNorm1d, torch.nn.BatchNorm1d, (5, 4, 7)),
    (ft.BatchNorm2d, torch.nn.BatchNorm2d, (3, 4, 5, 6)),
    (ft.BatchNorm3d, torch.nn.BatchNorm3d, (2, 4, 3, 2, 3)),
]
FMT = {4: torch.channels_last, 5: torch.channels_last_3d}


def pair_id(p):
    return f"{p[0].__name__}-{len(p[2])}d"


def twins(fast_cls, torch_cls, **kwargs):
    ours = fast_cls(4, dtype=torch.float64, **kwargs)
    ref = torch_cls(4, dtype=torch.float64, **kwargs)
    if ours.affine:
        with torch.no_grad():
            for m in (ours, ref):
                m.weight.copy_(torch.linspace(0.5, 2, 4, dtype=torch.float64))
                m.bias.copy_(torch.linspace(-1, 1, 4, dtype=torch.float64))
    return ours, ref


LAYOUT_CASES = [(p, cl) for p in PAIRS for cl in (False, True) if len(p[2]) >= 4 or not cl]


@pytest.mark.parametrize(("pair", "channels_last"), LAYOUT_CASES,
                         ids=[f"{pair_id(p)}-{'cl' if cl else 'contig'}" for p, cl in LAYOUT_CASES])
@pytest.mark.parametrize("kwargs", [{}, {"momentum": None}, {"affine": False},
                                    {"track_running_stats": False}],
                         ids=["default", "momentum-None", "no-affine", "no-tracking"])
def test_module_matches_torch_over_train_and_eval(pair, kwargs, channels_last):
    fast_cls, torch_cls, shape = pair
    ours, ref = twins(fast_cls, torch_cls, **kwargs)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        x = torch.randn(shape, generator=g, dtype=torch.float64) * (step + 1) + step
        if channels_last:
            x = x.to(memory_format=FMT[len(shape)])
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        dy = torch.randn(shape, generator=g, dtype=torch.float64)
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)
        if ours.affine:
            torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-10, atol=1e-10)
        for key, want in ref.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], want, rtol=1e-12, atol=1e-12)
    ours.eval()
    ref.eval()
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), ref(xb)
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(ya, yb, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pair", PAIRS, ids=pair_id)
def test_gradcheck_every_module_float64(pair):
    fast_cls, _, shape = pair
    bn = fast_cls(4, dtype=torch.float64)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bn, (x,))
    assert torch.autograd.gradgradcheck(bn, (x,))
    bn.eval()
    assert torch.autograd.gradcheck(bn, (x,))


@pytest.mark.parametrize("pair", PAIRS[1:], ids=pair_id)
def test_input_checks_are_torchs(pair):
    fast_cls, torch_cls, shape = pair
    bad = torch.randn(*shape, 2) if len(shape) < 5 else torch.randn(shape[:-1])
    with pytest.raises(ValueError) as want:
        torch_cls(4)(bad)
    with pytest.raises(ValueError) as got:
        fast_cls(4)(bad)
    assert str(got.value) == str(want.value)


def test_batchnorm2d_rejects_3d_input():
    with pytest.raises(ValueError, match="expected 4D input"):
        ft.BatchNorm2d(3)(torch.randn(4, 3, 5))


def test_pickle_save_load_deepcopy_and_isinstance():
    bn = ft.BatchNorm2d(3, momentum=None)
    bn(torch.randn(4, 3, 2, 2))
    buf = io.BytesIO()
    torch.save(bn, buf)
    buf.seek(0)
    clones = [pickle.loads(pickle.dumps(bn)), copy.deepcopy(bn),
              torch.load(buf, weights_only=False)]
    x = torch.randn(5, 3, 2, 2)
    bn.eval()
    for c in clones:
        assert type(c) is ft.BatchNorm2d
        assert isinstance(c, torch.nn.BatchNorm2d)
        assert isinstance(c, torch.nn.modules.batchnorm._BatchNorm)
        c.eval()
        torch.testing.assert_close(c(x), bn(x))
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var",
                                     "num_batches_tracked"]


def test_state_dicts_are_interchangeable():
    ours, ref = ft.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    ours(torch.randn(6, 3, 2, 2) * 3 + 1)
    ref.load_state_dict(ours.state_dict())
    ref(torch.randn(6, 3, 2, 2))
    ours.load_state_dict(ref.state_dict())
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)


def make_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 6),
                            torch.nn.BatchNorm1d(6, momentum=None)),
        torch.nn.Linear(6, 3))


def test_convert_and_revert_share_state_and_keep_results():
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    keys = list(net.state_dict())
    x = torch.randn(8, 1, 6, 6)
    want = net(x)
    weight = net[1].weight
    net.eval()
    fast = ft.convert(net)
    assert fast is net and type(net[1]) is ft.BatchNorm2d and type(net[3][2]) is ft.BatchNorm1d
    assert net[1].weight is weight and not net[1].training  # shared, mode kept
    assert list(net.state_dict()) == keys
    net.train()
    torch.testing.assert_close(net(x), want)  # the second batch moves the running stats
    (net(x) ** 2).sum().backward()
    opt.step()  # the optimizer built before conversion trains the converted modules
    assert not torch.equal(net[1].weight.detach(), torch.linspace(1, 1, 4))
    back = ft.revert(net)
    assert type(back[1]) is torch.nn.BatchNorm2d and type(back[3][2]) is torch.nn.BatchNorm1d
    other = make_net()
    other.load_state_dict(back.state_dict())
    ft.convert(other).load_state_dict(back.state_dict())
    root = ft.convert(torch.nn.BatchNorm3d(2))
    assert type(root) is ft.BatchNorm3d


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_unsupported_dtypes_fall_back_with_one_warning_per_module(dtype):
    a, b = ft.BatchNorm2d(3).to(dtype), ft.BatchNorm2d(3).to(dtype)
    ref = torch.nn.BatchNorm2d(3).to(dtype)
    x = torch.randn(4, 3, 2, 2).to(dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    fallback = [w for w in caught if issubclass(w.category, ft.FallbackWarning)]
    assert len(fallback) == 2 and str(dtype) in str(fallback[0].message)
    for _ in range(3):
        yr = ref(x)
    assert ya.dtype == dtype
    torch.testing.assert_close(ya, yr)
    torch.testing.assert_close(a.running_var, ref.running_var)


def test_other_devices_fall_back_without_copy():
    bn = ft.BatchNorm2d(3, device="meta")
    x = torch.randn(4, 3, 2, 2, device="meta")
    with pytest.warns(ft.FallbackWarning, match="meta"):
        y = bn(x)
    assert y.device.type == "meta"  # torch's kernel ran on the device: no copy to the CPU
    mixed = ft.BatchNorm1d(3)  # float32 parameters, float64 input: torch's own error
    with pytest.warns(ft.FallbackWarning), pytest.raises(RuntimeError):
        mixed(torch.randn(4, 3, dtype=torch.float64))


def test_fast_batch_norm_is_deprecated_but_works():
    with pytest.deprecated_call():
        bn = ft.FastBatchNorm(3)
    assert isinstance(bn, torch.nn.modules.batchnorm._BatchNorm)
    assert bn(torch.randn(5, 3, 2, 2, 2)).shape == (5, 3, 2, 2, 2)
    pickle.loads(pickle.dumps(bn))
