"""Compiled CPU loops (numba): the update of plain SGD in one process, without torch's temporaries.

A torch update is a few dozen operations on [E, d] temporaries; on one thread, for the few
hundred examples a lock-free worker's update holds, their dispatch and memory passes cost more
than the arithmetic. Here the same batched update (the update's snapshot read first, its steps
written after the divergence guard has read the loss) is a handful of loops over the rows:
- ``bag_hidden``: each input's h, the sum of its bag's rows (a CBOW window's, a fastText word's
  n-grams'), the rows a few further on requested from memory while the current ones are summed
  (fastText's 800 MB n-gram table is far larger than the caches: 1.55x on its gather alone);
- ``ns_positives``: negative sampling's positive pairs, their scores and dL/dh from the snapshot;
  ``ns_negatives``: the negatives shared by the update, their scores (three matrix products, in
  ``objectives.py``) turned into gradients in place; ``ns_step``, every output row's step;
- ``hs_gradients``: hierarchical softmax's decisions along every target's path, then its inner
  nodes' steps (the 255 nearest the root summed per update and written once);
- ``bag_step``: dL/dh added to every row of each input's bag, without the [E, d] copy of every
  row's step that ``scatter_add_`` needs.
It is the same update as the torch form, to float rounding (tests compare the two for every
family and objective); it runs on one thread, so in a lock-free worker nothing waits. Used with
SGD in one process on the CPU (a DDP rank sends its rows to the others instead); elsewhere the
torch form.

The loops themselves are in ``loops.py``. numba is imported at the first call, so commands that
never train do not pay for it, and the compiled loops are cached next to them (``cache=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import numpy as np
import torch

_compiled: ModuleType | None = None
DTYPES = (torch.float32, torch.float64)  # the tables' types the loops take (numba has no bfloat16)
LINE = 64  # bytes in a cache line


def load() -> ModuleType:
    """The compiled loops (``loops.py``: numba imported, and each loop compiled or read from its
    cache, at the first call)."""
    global _compiled
    if _compiled is None:
        from sgns import loops

        _compiled = loops
    return _compiled


_ONE_EACH = np.empty(0, dtype=np.int64)  # a bag's sizes when every input has one row


def _each(counts: torch.Tensor | None) -> np.ndarray:
    """A per-input array for the loops (owners, sizes, counts); None: the empty one, "one each"."""
    return _ONE_EACH if counts is None else counts.numpy()


def bag_hidden(
    segments: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]], n: int, mean_of: torch.Tensor | None
) -> torch.Tensor:
    """h [n, d]: each input's sum of its rows over the bag's segments ((table, rows [E], sizes [n]
    or None: one row each), rows input by input), divided by ``mean_of`` [n] (None: the sum)."""
    first = segments[0][0]
    h = torch.zeros(n, first.shape[1], dtype=first.dtype)
    for i, (table, rows, sizes) in enumerate(segments):
        table_ = table.detach().numpy()
        divide = _each(mean_of if i == len(segments) - 1 else None)
        load().bag_sums(table_, rows.numpy(), _each(sizes), h.numpy(), divide, max(1, LINE // table_.itemsize))
    return h


def bag_step(
    table: torch.Tensor, rows: torch.Tensor, sizes: torch.Tensor | None, steps: torch.Tensor
) -> Callable[[], None]:
    """The step adding ``steps[n]`` [N, d] to each of input n's rows of ``table`` (``rows`` [E],
    input by input, ``sizes`` [N]; None: one each)."""
    table_, rows_, steps_ = table.detach().numpy(), rows.numpy(), steps.contiguous().numpy()
    sizes_ = _each(sizes)
    return lambda: load().bag_steps(table_, rows_, sizes_, steps_)


class Pairs(NamedTuple):
    """An update's positive pairs as the loops read them: h [N, d], each target's input (empty: one
    target each), the targets [P], the gradient of each pair's score [P] and the output table."""

    h: np.ndarray
    owner: np.ndarray
    targets: np.ndarray
    g: np.ndarray
    output: np.ndarray


def ns_positives(
    h: torch.Tensor,
    owner: torch.Tensor | None,
    targets: torch.Tensor,
    output: torch.Tensor,
    scale: float,
    with_loss: bool,
) -> tuple[float | None, torch.Tensor, Pairs]:
    """Negative sampling's positive pairs for inputs h [N, d] and targets [P] (target p's input
    ``owner[p]``; None: p), from the snapshot: their summed loss (None unless ``with_loss``), their
    part of dL/dh [N, d] of ``scale`` × the loss, and the pairs with each one's gradient of its
    score, for ``ns_step``."""
    h = h.contiguous()
    grad_h = torch.zeros_like(h)
    h_, output_ = h.numpy(), output.detach().numpy()
    pairs = Pairs(h_, _each(owner), targets.numpy(), np.empty(len(targets), dtype=h_.dtype), output_)
    loss = load().ns_positives(
        *pairs[:3], output_, float(scale), grad_h.numpy(), pairs.g, with_loss, max(1, LINE // output_.itemsize)
    )
    return (loss if with_loss else None), grad_h, pairs


def ns_negatives(
    scores: torch.Tensor, count: torch.Tensor | None, weight: float, scale: float, with_loss: bool
) -> float | None:
    """The negatives shared by an update, from the scores [N, K] of its inputs against them, in place:
    each score becomes the gradient of ``scale`` × its term -w log σ(-f), ``count[n]`` times (None:
    once); returns their summed loss (None unless ``with_loss``)."""
    loss = load().ns_negatives(scores.numpy(), _each(count), float(weight), float(scale), with_loss)
    return loss if with_loss else None


def ns_step(pairs: Pairs, negatives: torch.Tensor, negative_steps: torch.Tensor) -> Callable[[], None]:
    """The output rows' step: each pair's gradient × h of its input added to its target's row, and
    ``negative_steps`` [K, d] to the K negatives' rows."""
    negatives_, steps_ = negatives.numpy(), negative_steps.contiguous().numpy()
    return lambda: load().ns_steps(*pairs, negatives_, steps_)


def hs_gradients(
    h: torch.Tensor,
    owner: torch.Tensor | None,
    targets: torch.Tensor,
    points: torch.Tensor,
    codes: torch.Tensor,
    lengths: torch.Tensor,
    output: torch.Tensor,
    scale: float,
    with_loss: bool,
) -> tuple[torch.Tensor | None, torch.Tensor, Callable[[], None]]:
    """Hierarchical softmax's SGD update for inputs h [N, d] and targets [P] (target p's input
    ``owner[p]``; None: p) on the inner nodes ``output`` [V-1, d]: the mean loss (None unless
    ``with_loss``), dL/dh [N, d] of ``scale`` × the summed loss, and the step of the inner nodes,
    to run once the loss has been read."""
    h = h.contiguous()
    owner_ = _each(owner)
    grad_h = torch.zeros_like(h)
    g = np.empty(int(lengths[targets].sum()), dtype=h.numpy().dtype)
    compiled = load()
    h_, targets_, points_, lengths_ = h.numpy(), targets.numpy(), points.numpy(), lengths.numpy()
    output_ = output.detach().numpy()
    loss = compiled.hs_scores(
        h_, owner_, targets_, points_, codes.numpy(), lengths_, output_, float(scale), grad_h.numpy(), g, with_loss
    )
    mean = torch.tensor(loss / max(1, len(targets)), dtype=h.dtype) if with_loss else None
    return mean, grad_h, lambda: compiled.hs_steps(h_, owner_, targets_, points_, lengths_, output_, g)


def warm(dtype: torch.dtype) -> None:
    """Compile every loop for tables of ``dtype``, or read it from numba's cache, now (about 0.3 s,
    most of it numba's own start): lock-free workers forked after this inherit the loops instead
    of each loading them at its first update."""
    table, rows, one = torch.zeros(2, 1, dtype=dtype), torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)
    h = bag_hidden([(table, rows, one)], 1, one)
    bag_step(table, rows, None, h)()
    _, grad_h, pairs = ns_positives(h, None, rows, table, 0.0, True)
    ns_negatives(grad_h, None, 1.0, 0.0, True)
    ns_negatives(grad_h, one, 1.0, 0.0, True)
    ns_step(pairs, rows, grad_h)()
    ns_step(ns_positives(h, rows, rows, table, 0.0, False)[2], rows, grad_h)()  # (with owners)
    points, codes = torch.zeros(2, 1, dtype=torch.int32), torch.zeros(2, 1, dtype=torch.int8)
    hs_gradients(h, None, rows, points, codes, one, table, 0.0, True)[2]()
