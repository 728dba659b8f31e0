"""The device path (sgns.models.device): on a GPU an update reads no tensor's value back to the host
and makes no tensor whose size depends on data, for every family and objective; and it makes the
host path's update. Both checked on the CPU, which takes the device path when the tests ask."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

from conftest import compose_train, planted_corpus
from sgns.models import device
from sgns.module import Word2VecModule
from sgns.optim import apply_sgd
from sgns.train import train
from test_models import FAMILIES, NEGATIVES, OBJECTIVES, _batch, _pair

Tensor = torch.Tensor
READS = {Tensor.item, Tensor.tolist, Tensor.numpy, Tensor.cpu, Tensor.__bool__, Tensor.__int__, Tensor.__float__,
         Tensor.__index__}  # fmt: skip
SIZED_BY_DATA = {torch.nonzero, Tensor.nonzero, torch.masked_select, Tensor.masked_select, torch.unique, Tensor.unique,
                 torch.unique_consecutive, Tensor.unique_consecutive, torch.bincount, Tensor.bincount, torch.argwhere,
                 Tensor.argwhere}  # fmt: skip


class HostReads(TorchFunctionMode):
    """Fails on a read of a tensor's value by the host (``.item()``, ``int()``, ``.tolist()``, ...) and
    on an op whose output's size depends on the data (``nonzero``, ``unique``, boolean indexing, a
    ``repeat_interleave`` not told its output size)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__qualname__", repr(func))
        if func in READS or func in SIZED_BY_DATA:
            raise AssertionError(f"the device path read back to the host: {name}")
        if func in (torch.repeat_interleave, Tensor.repeat_interleave) and "output_size" not in kwargs:
            if len(args) > 1 and isinstance(args[1], Tensor):
                raise AssertionError("the device path read back to the host: repeat_interleave without output_size")
        if func is Tensor.__getitem__ and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, Tensor) and i.dtype == torch.bool for i in index):
                raise AssertionError("the device path read back to the host: boolean indexing")
        if func is torch.where and len(args) == 1:
            raise AssertionError("the device path read back to the host: torch.where(condition)")
        return func(*args, **kwargs)


@pytest.fixture
def device_path(monkeypatch):
    monkeypatch.setattr(device, "DEVICE_PATH_ON_CPU", True)


def test_the_guard_catches_what_todays_fasttext_did():
    """Before the device path the subword family counted its n-gram rows on the host (int of a sum)
    and found the update's distinct centres with torch.unique; CBOW selected its window words by mask."""
    count = torch.tensor([3, 1, 2])
    for read in (lambda: int(count.sum()), lambda: torch.unique(count), lambda: count[count > 1]):
        with pytest.raises(AssertionError, match="read back to the host"), HostReads():
            read()


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_an_update_on_the_device_path_reads_nothing_back_and_is_the_host_paths(
    family, negatives, objective, monkeypatch
):
    host, on_device = _pair(family, objective=objective)
    for step in range(3):
        batch = _batch(family, negatives, seed=step)
        reference = host.loss(batch)  # the autograd path's per-example loss
        loss, updates = host.row_gradients(batch, scale=-0.2)
        monkeypatch.setattr(device, "DEVICE_PATH_ON_CPU", True)
        with HostReads():
            device_reference = on_device.loss(batch)
            device_loss, device_updates = on_device.row_gradients(batch, scale=-0.2)
            apply_sgd(None, device_updates)
        monkeypatch.setattr(device, "DEVICE_PATH_ON_CPU", False)
        apply_sgd(None, updates)
        assert torch.allclose(device_reference, reference, atol=1e-12)
        assert device_loss.item() == pytest.approx(loss.item(), rel=1e-12)
    for a, b in zip(host.parameters(), on_device.parameters()):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("model", ["skipgram", "cbow", "fasttext"])
def test_training_steps_on_the_device_path_read_nothing_back(tmp_path, device_path, monkeypatch, model, objective):
    """Inside ``training_step``, on every step that does not log its loss (the logged ones, and each
    epoch's last, read it)."""
    guarded, original = [], Word2VecModule.training_step

    def training_step(self, step, batch_idx):
        if self.reads_loss(batch_idx):
            return original(self, step, batch_idx)
        guarded.append(batch_idx)
        with HostReads():
            return original(self, step, batch_idx)

    monkeypatch.setattr(Word2VecModule, "training_step", training_step)
    planted_corpus(tmp_path / "planted.txt", sentences=400)
    cfg = compose_train(tmp_path / "run", [
        f"data.path={tmp_path / 'planted.txt'}", "data.min_count=1", "data.sample=0", "data.batch_size=256",
        "data.update_size=64", f"model={model}", f"model.objective={objective}", "model.net.embedding_dim=8",
        "trainer.max_epochs=2", "trainer.deterministic=true", "trainer.log_every_n_steps=5", "logger=none",
        "probe_words=[]", *(["model.net.buckets=500"] if model == "fasttext" else [])])  # fmt: skip
    train(cfg)
    assert len(guarded) >= 10
