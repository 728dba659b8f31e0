"""The compiled loops (kernels.py, loops.py): read from numba's cache by the next process, and all of
them loaded by ``kernels.warm`` before lock-free workers fork, so that no worker compiles or loads
one itself. (That they make the torch form's update: tests/test_models.py.)"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from sgns import kernels
from sgns.models import CBOW, Batch, FastText, SkipGram
from sgns.models.objectives import make_objective

LOOPS = ["ns_updates", "hs_updates", "matmul"]


def _warm_in_a_new_process() -> dict[str, list[int]]:
    code = (
        "import json, torch\nfrom sgns import kernels\nkernels.warm(torch.float32)\nloops = kernels.load()\n"
        f"print(json.dumps({{n: [sum(getattr(loops, n).stats.cache_hits.values()), "
        f"sum(getattr(loops, n).stats.cache_misses.values())] for n in {LOOPS!r}}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_a_second_process_reads_every_loop_from_the_cache():
    """Every loop is found in numba's cache by the next process, not compiled again (a loop that
    called the prefetch intrinsic from inside a closure was compiled anew in every process: about a
    second of every run, and of every lock-free worker)."""
    _warm_in_a_new_process()  # (compiles what the cache lacks)
    hits_and_misses = _warm_in_a_new_process()
    assert all(hits >= 1 and misses == 0 for hits, misses in hits_and_misses.values()), hits_and_misses


@pytest.mark.parametrize("objective", ["ns", "hs"])
def test_warm_loads_every_loop_that_training_runs(objective):
    """After ``warm`` a training update of every family compiles nothing more: what a lock-free
    worker needs, it inherits from the process that forked it."""
    kernels.warm(torch.float32)
    loops = kernels.load()
    before = {name: len(getattr(loops, name).signatures) for name in LOOPS}

    V, g = 40, torch.Generator().manual_seed(0)
    words = [f"w{i}ing" for i in range(V)]
    counts = sorted(range(1, V + 1), reverse=True)
    center = torch.randint(0, V, (64,), generator=g).repeat_interleave(3)[:64]
    negatives = torch.randint(0, V, (1, 8), generator=g)
    pairs = Batch(center, torch.randint(0, V, (64,), generator=g), negatives, 5 / 8)
    mask = torch.rand(64, 4, generator=g) < 0.7
    mask[:, 1] = True
    windows = Batch(center, torch.randint(0, V, (64, 4), generator=g), negatives, 5 / 8, mask)
    for net, batch in [
        (SkipGram(V, 16, objective=make_objective(objective, counts)), pairs),
        (CBOW(V, 16, objective=make_objective(objective, counts)), windows),
        (CBOW(V, 16, cbow_mean=False, objective=make_objective(objective, counts)), windows),
        (FastText(V, 16, words=words, buckets=50, objective=make_objective(objective, counts)), pairs),
    ]:
        for with_loss in (True, False):
            loss = net.sgd_update(batch, [-0.025], with_loss, lambda _: None)
            assert (loss is None) != with_loss and (loss is None or math.isfinite(loss))
    assert {name: len(getattr(loops, name).signatures) for name in LOOPS} == before


def test_scores_are_summed_in_the_tables_precision():
    """Every score (h · u) is summed in the tables' own precision, as word2vec.c's: a float64 sum of
    float32 products (started from the integer 0) vectorised half as wide, 2.4x the time."""
    numba = pytest.importorskip("numba")
    dot = kernels.load().dot
    for dtype, kind in ((np.float32, numba.float32), (np.float64, numba.float64)):
        a, b = np.arange(1, 101, dtype=dtype) / 100, np.full(100, 0.5, dtype=dtype)
        assert dot(a, b) == pytest.approx(float(a.astype(np.float64) @ b), rel=1e-6)
        returns = {signature.return_type for signature in dot.nopython_signatures if signature.args[0].dtype == kind}
        assert returns == {kind}
