"""Compiled CPU loops (numba) for the updates whose torch form is paid in memory passes, not arithmetic.

Hierarchical softmax gives every target its own path of about 17 inner nodes, so its torch
form (``objectives.HierarchicalSoftmax.gradients``) gathers and writes [E, d] temporaries for
E = every decision of the update, about ten passes over E × d floats. Here the same batched
update takes two passes over the path rows, a target's h staying in cache:
1. ``hs_gradients``: every decision's score and gradient from the tables as they are (the
   update's snapshot), its share of dL/dh added to ``grad_h``, and the loss if asked;
2. the step it returns: every inner node's SGD step, g × h, added in place (``optim.apply_sgd``
   runs it with the update's other rows, after the divergence guard has read the loss).
It is the same update as the torch form, to float rounding (tests compare the two); it runs on one
thread, so in a lock-free worker nothing waits. ``bag_step`` adds a CBOW window's or a fastText
word's dL/dh to each of its rows without the [E, d] copy that ``scatter_add_`` needs. Used with
SGD in one process on the CPU (a DDP rank sends its rows to the others instead); elsewhere the
torch form.

numba is imported at the first call, so commands that never train do not pay for it, and the
compiled loop is cached next to this file (``cache=True``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

_compiled = None
# Inner nodes whose steps an update sums before writing them: the root and the 254 below it, on
# nearly every path. Written once per update, the rows other workers read most stop moving between
# cores at every target (2 workers on one table: 1.3x the updates of one without this, 1.7x with it).
HOT = 255


def _compile():
    import numba

    @numba.njit(nogil=True, cache=True, fastmath=True)
    def hs_scores(h, owner, targets, points, codes, lengths, output, scale, grad_h, g, with_loss):
        loss = 0.0
        e = 0
        for p in range(len(targets)):  # 1: scores and dL/dh from the snapshot
            t = targets[p]
            h_p, grad_p = h[owner[p]], grad_h[owner[p]]  # [d] views
            for j in range(lengths[t]):
                row = output[points[t, j]]
                f = h_p[0] * 0  # (the tables' precision: float32 products vectorise)
                for k in range(len(row)):
                    f += h_p[k] * row[k]
                if with_loss:  # -log σ(f) for code 0, -log σ(-f) for code 1
                    x = f if codes[t, j] == 0 else -f
                    loss -= min(x, 0.0) - math.log1p(math.exp(-abs(x)))
                # d(scale × loss) / d f: word2vec.c's -(1 - code - σ(f))
                g[e] = (1.0 / (1.0 + math.exp(-f)) - 1.0 + codes[t, j]) * scale
                step = g[e]  # (in the tables' precision)
                e += 1
                for k in range(len(row)):
                    grad_p[k] += step * row[k]
        return loss

    @numba.njit(nogil=True, cache=True, fastmath=True)
    def hs_steps(h, owner, targets, points, lengths, output, g):
        e = 0
        hot = np.zeros((HOT, output.shape[1]), dtype=output.dtype)  # the top of the tree's steps, summed here
        first_hot = output.shape[0] - HOT  # (the inner nodes near the root are the last made)
        for p in range(len(targets)):  # 2: the inner nodes' steps
            t = targets[p]
            h_p = h[owner[p]]
            for j in range(lengths[t]):
                node = points[t, j]
                row = hot[node - first_hot] if node >= first_hot else output[node]
                step = g[e]
                e += 1
                for k in range(len(row)):
                    row[k] += step * h_p[k]
        for i in range(max(0, -first_hot), HOT):  # written once per update, not once per target
            row = output[first_hot + i]
            for k in range(len(row)):
                row[k] += hot[i, k]

    @numba.njit(nogil=True, cache=True, fastmath=True)
    def bag_steps(table, rows, sizes, grad):
        e = 0
        for b in range(len(sizes)):
            g = grad[b]  # [d], read once for the bag's rows
            for _ in range(sizes[b]):
                row = table[rows[e]]
                e += 1
                for k in range(len(row)):
                    row[k] += g[k]

    return hs_scores, hs_steps, bag_steps


def load():
    """The compiled loops (numba imported, and compiled or read from its cache, at the first call)."""
    global _compiled
    if _compiled is None:
        _compiled = _compile()
    return _compiled


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
    owner = (torch.arange(len(targets)) if owner is None else owner).numpy()
    grad_h = torch.zeros_like(h)
    g = np.empty(int(lengths[targets].sum()), dtype=h.numpy().dtype)
    scores, steps, _ = load()
    h_, targets_, points_, lengths_ = h.numpy(), targets.numpy(), points.numpy(), lengths.numpy()
    output_ = output.detach().numpy()
    loss = scores(
        h_, owner, targets_, points_, codes.numpy(), lengths_, output_, float(scale), grad_h.numpy(), g, with_loss
    )
    mean = torch.tensor(loss / max(1, len(targets)), dtype=h.dtype) if with_loss else None
    return mean, grad_h, lambda: steps(h_, owner, targets_, points_, lengths_, output_, g)


def bag_step(table: torch.Tensor, rows: torch.Tensor, sizes: torch.Tensor, steps: torch.Tensor) -> Callable[[], None]:
    """The step adding ``steps[b]`` [N, d] to each of bag b's rows of ``table`` (``rows`` [E], bag by
    bag, ``sizes`` [N]): the SGD step of a CBOW window's or a fastText word's rows without the
    [E, d] copy of every row's step that ``scatter_add_`` needs."""
    table_, rows_, sizes_, steps_ = table.detach().numpy(), rows.numpy(), sizes.numpy(), steps.contiguous().numpy()
    return lambda: load()[2](table_, rows_, sizes_, steps_)
