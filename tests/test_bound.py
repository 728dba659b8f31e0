"""The curvature bound (``model.step_bound=curvature``, ``models/bound.py``): each distinct row's
summed step is cut to the Newton step of the update's loss along that step's own line, for every
family and objective, and a large update it keeps from diverging trains."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose_train
from sgns.errors import Diverged
from sgns.models import device
from sgns.optim import apply_sgd
from sgns.train import train
from test_host_reads import HostReads
from test_models import FAMILIES, NEGATIVES, OBJECTIVES, _batch, _net

LR = 4.0  # large enough that many rows of a 64-example update over 30 words are cut


def _losses_along(net, batch, table, row, e, t):
    """Each example's loss [B] with only ``row`` of ``table`` moved by t e."""
    with torch.no_grad():
        saved = table[row].clone()
        table[row] += t * e
        value = net.loss(batch)
        table[row] = saved
    return value


def _shares(net, batch):
    """Each example's ∂h / ∂row for every input table's rows ({table: [B, rows]}) and its bag's sum of them [B]."""
    bag = net.bag(batch, grouped=False)
    B = len(bag.targets)
    shares, total = {}, torch.zeros(B, dtype=torch.float64)
    for table, rows, sizes, weights in bag.segments:
        owner = torch.arange(B) if sizes is None else torch.repeat_interleave(torch.arange(B), sizes)
        a = torch.ones(len(rows), dtype=torch.float64) if weights is None else weights.double()
        if bag.size is not None and bag.mean:
            a = a / bag.size[owner]
        matrix = shares.setdefault(table.weight, torch.zeros(B, len(table.weight), dtype=torch.float64))
        matrix.index_put_((owner, rows), a, accumulate=True)
        total.index_add_(0, owner, a)
    return shares, total


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_each_rows_step_is_cut_to_its_newton_step(family, negatives, objective):
    """An output row's curvature is the loss's along its step; an input row's, each example's times
    A / a (its bag's shares over its own: the rows of a bag move together), which is skip-gram's
    own (one row, A = a = 1). The step is cut to -slope / curvature, never lengthened or turned."""
    net = _net(family, objective=objective)
    batch = _batch(family, negatives)
    shares, bag_total = _shares(net, batch)
    _, plain = net.row_gradients(batch, -LR, with_loss=False)
    _, cut = net.row_gradients(batch, -LR, with_loss=False, bound=LR)
    cuts = 0
    for table in {id(t): t for t, _, _ in plain}.values():  # (an output table may take two entries)
        rows = torch.cat([r for t, r, _ in plain if t is table])
        steps = torch.cat([s for t, _, s in plain if t is table])
        steps_cut = torch.cat([s for t, _, s in cut if t is table])
        assert torch.equal(rows, torch.cat([r for t, r, _ in cut if t is table]))
        for row in rows.unique().tolist():
            S = steps[rows == row].sum(0)
            if S.norm() < 1e-9:
                continue
            e = S / S.norm()
            delta = 1e-3  # each example's loss along e: its slope and curvature by central differences
            up, mid, down = (_losses_along(net, batch, table, row, e, t) for t in (delta, 0.0, -delta))
            slope, curvature = (up - down) / (2 * delta), (up - 2 * mid + down) / delta**2
            if table in shares:
                a = shares[table][:, row]
                curvature = torch.where(a > 0, curvature * bag_total / a.clamp_min(1e-300), 0.0)
            slope, curvature = slope.sum().item(), curvature.sum().item()
            newton = max(0.0, -slope / curvature) if curvature > 0 else float("inf")
            expected = min(S.norm().item(), newton)
            got = steps_cut[rows == row].sum(0)
            assert got.norm().item() == pytest.approx(expected, rel=1e-4, abs=1e-9), (table.shape, row)
            assert torch.allclose(got, e * got.norm(), atol=1e-9)  # cut, not turned
            cuts += expected < S.norm().item() * (1 - 1e-6)
    assert cuts >= 3  # (a test of the cut, not of rows it leaves alone)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_small_step_is_not_cut(family):
    """At word2vec's alpha a step over a few pairs is far below its Newton step: the bound changes nothing."""
    net = _net(family)
    with torch.no_grad():
        for table in net.parameters():
            table.mul_(0.3)
    batch = _batch(family, "per_example", B=4)
    _, plain = net.row_gradients(batch, -0.025, with_loss=False)
    _, cut = net.row_gradients(batch, -0.025, with_loss=False, bound=0.025)
    for (_, _, steps), (_, _, steps_cut) in zip(plain, cut):
        assert torch.equal(steps, steps_cut)


LARGE = ["data.batch_size=32768", "data.update_size=32768", "trainer.deterministic=true", "trainer.max_epochs=3"]


def test_a_large_update_that_diverges_without_the_bound_trains_with_it(tmp_path):
    """The bundled corpus in updates of 32,768 pairs (its every seventh of an epoch): plain SGD's summed
    steps diverge within two epochs; with ``auto`` (the bound, at that size) the loss falls well below
    the untrained (1 + k) ln 2."""
    with pytest.raises(Diverged):
        train(compose_train(tmp_path / "none", [*LARGE, "model.step_bound=none"]))
    metrics = train(compose_train(tmp_path / "auto", LARGE))
    assert metrics["train/loss"] < 0.8 * 6 * math.log(2)


class _Data:
    def __init__(self, update_size, batch_size=1024):
        self.update_size, self.hparams = update_size, SimpleNamespace(batch_size=batch_size)


@pytest.mark.parametrize(
    "setting, optimizer, update_size, world_size, expected",
    [
        ("auto", "sgd", 8192, 1, False),  # the largest size measured to train without it
        ("auto", "sgd", 8193, 1, True),
        ("auto", "sgd", 4096, 4, True),  # all ranks' shares: one update of 16,384
        ("auto", "sgd", None, 1, False),  # one update per step of the batch's 1,024
        ("auto", "sparse_adam", 32768, 1, False),  # (Adam's step is not SGD's: nothing to bound)
        ("none", "sgd", 32768, 1, False),
        ("curvature", "sgd", 256, 1, True),
    ],
)
def test_auto_bounds_the_updates_above_8192_pairs(setting, optimizer, update_size, world_size, expected):
    cfg = compose_train(Path("unused"), [f"model.step_bound={setting}", f"model/optimizer={optimizer}"])
    module = instantiate(cfg.model)
    trainer = SimpleNamespace(datamodule=_Data(update_size), world_size=world_size)
    assert module.bounds_steps(trainer) is expected


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_bound_on_the_device_path_reads_nothing_back_and_is_the_host_paths(
    family, negatives, objective, monkeypatch
):
    host, on_device = _net(family, objective=objective), _net(family, objective=objective)
    batch = _batch(family, negatives)
    _, updates = host.row_gradients(batch, -LR, with_loss=False, bound=LR)
    monkeypatch.setattr(device, "DEVICE_PATH_ON_CPU", True)
    with HostReads():
        _, device_updates = on_device.row_gradients(batch, -LR, with_loss=False, bound=LR)
        apply_sgd(None, device_updates)
    monkeypatch.setattr(device, "DEVICE_PATH_ON_CPU", False)
    apply_sgd(None, updates)
    for a, b in zip(host.parameters(), on_device.parameters()):
        assert torch.allclose(a, b, atol=1e-12)
