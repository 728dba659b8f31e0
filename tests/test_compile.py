"""model.compile: torch.compile of the closed-form update (inductor's CPU backend here) makes the
eager update, on the device path a GPU takes."""

import pytest
import torch

from conftest import compose_train, planted_corpus
from sgns.models import device
from sgns.optim import apply_sgd
from sgns.train import train
from test_models import _batch, _pair


@pytest.mark.parametrize(
    "family, objective, bound",
    [("skipgram", "ns", None), ("skipgram", "ns", 4.0), *[pytest.param(f, o, b, marks=pytest.mark.slow) for f, o, b in
     [("cbow", "ns", None), ("fasttext", "ns", None), ("skipgram", "hs", None), ("cbow", "hs", None),
      ("fasttext", "hs", None), ("cbow", "ns", 4.0), ("fasttext", "hs", 4.0)]]],
)  # fmt: skip
def test_the_compiled_update_is_the_eager_one(family, objective, bound, monkeypatch):
    """(``bound``: with the curvature bound, at a step large enough that it cuts rows.)"""
    monkeypatch.setattr(device, "DEVICE_PATH_ON_CPU", True)
    eager, compiled = _pair(family, objective=objective)
    step = torch.compile(compiled.row_gradients)
    scale = -0.2 if bound is None else -bound
    for seed in range(3):
        batch = _batch(family, "shared", seed=seed)
        loss, rows = eager.row_gradients(batch, scale=scale, bound=bound)
        tensor = torch.tensor(scale, dtype=torch.float64)
        compiled_loss, compiled_rows = step(batch, tensor, True, None if bound is None else -tensor)
        apply_sgd(None, rows)
        apply_sgd(None, compiled_rows)
        assert compiled_loss.item() == pytest.approx(loss.item(), rel=1e-9)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-9)


def test_a_run_with_model_compile_trains_as_the_eager_one(tmp_path, monkeypatch):
    monkeypatch.setattr(device, "DEVICE_PATH_ON_CPU", True)
    planted_corpus(tmp_path / "planted.txt", sentences=300)
    tables = []
    for compiled in (False, True):
        run = tmp_path / f"run-{compiled}"
        train(compose_train(run, [f"data.path={tmp_path / 'planted.txt'}", "data.min_count=1", "data.sample=0",
                                  "data.batch_size=256", "data.update_size=64", "model.net.embedding_dim=8",
                                  "trainer.max_epochs=1", "trainer.deterministic=true", "logger=none", "probe_words=[]",
                                  f"model.compile={str(compiled).lower()}"]))  # fmt: skip
        tables.append(torch.load(run / "last.ckpt", weights_only=False)["state_dict"])
    for name, table in tables[0].items():
        assert torch.allclose(table, tables[1][name], atol=1e-5), name
