"""Real training parity: a conv-BatchNorm2d-ReLU network on the UCI digits, 100 SGD steps with
torch's batch norm and with the converted model, same seed."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from fastopt.datasets import load_digits  # noqa: E402

STEPS = 100


def make_net():
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 10))


def train(convert: bool, channels_last: bool = False):
    X, y = load_digits(images=True, dtype=np.float32)
    X = torch.from_numpy(X).unsqueeze(1)
    y = torch.from_numpy(y)
    order = np.random.default_rng(0).permutation(len(X))
    train_idx, test_idx = order[:1500], order[1500:]
    torch.manual_seed(0)
    net = make_net()
    if convert:
        net = ft.convert(net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(STEPS):
        idx = torch.from_numpy(rng.choice(train_idx, 64, replace=False))
        xb = X[idx]
        if channels_last:
            xb = xb.to(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    with torch.no_grad():
        pred = net(X[test_idx]).argmax(1)
    return np.array(losses), int((pred == y[test_idx]).sum()), net


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny batches: one thread each keeps torch's and fastopt's pools from contending.
    before = torch.get_num_threads(), fastopt.get_num_threads()
    torch.set_num_threads(1)
    fastopt.set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    fastopt.set_num_threads(before[1])


@pytest.fixture(scope="module")
def reference(one_thread):
    return train(convert=False)


@pytest.mark.parametrize("channels_last", [False, True])
def test_loss_curves_and_accuracy_agree(reference, channels_last):
    want_losses, want_correct, _ = reference
    losses, correct, net = train(convert=True, channels_last=channels_last)
    assert type(net[1]) is ft.BatchNorm2d
    assert losses[-1] < 0.5 * losses[0]  # it did learn
    np.testing.assert_allclose(losses, want_losses, rtol=1e-3)
    assert correct == want_correct
    assert correct > 0.8 * 297
