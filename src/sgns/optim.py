"""Optimiser steps applied to the rows an update touches, from gradients given as rows.

Autograd builds sparse gradient tensors and torch's SparseAdam coalesces and masks them at every
step; for embedding tables the same update is a handful of gathers, one sort and a few scatters.
``apply_sgd`` and ``apply_sparse_adam`` reproduce torch's sparse SGD and SparseAdam steps on the
rows a family's ``row_gradients`` returns, keeping their state in the optimiser (so checkpoints
and both paths agree); tests check them against torch's optimisers.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from sgns.models.base import Update


def _sum_rows(rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique rows and the sum of their gradients (what coalescing a sparse gradient does)."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    return unique, torch.zeros(len(unique), grads.shape[1], dtype=grads.dtype, device=grads.device).index_add_(0, inverse, grads)


@torch.no_grad()
def apply_sparse_adam(optimizer: torch.optim.Optimizer, updates: list[Update]) -> None:
    """torch.optim.SparseAdam's step for (param, rows, row gradients) triples, state kept in ``optimizer``."""
    group = optimizer.param_groups[0]
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    tables: dict[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for update in updates:  # one step per table: its blocks of rows together
        entry = tables.setdefault(update.table, ([], []))
        entry[0].append(update.rows)
        entry[1].append(update.expanded())
    for param, (rows, grads) in tables.items():
        rows, grads = torch.cat(rows), torch.cat(grads)
        state = optimizer.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        rows, grad = _sum_rows(rows, grads)
        exp_avg = state["exp_avg"].index_select(0, rows).lerp_(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        step_size = lr * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
        updated = param.index_select(0, rows).addcdiv_(exp_avg, exp_avg_sq.sqrt_().add_(eps), value=-step_size)
        param.index_copy_(0, rows, updated)


@numba.njit(parallel=True, cache=True)
def _add_rows(table, rows, steps, source, threads):  # pragma: no cover (compiled)
    """table[rows[e]] += steps[source[e]] (source empty: steps[e]), each row in the order of ``rows``.

    Each of ``threads`` threads owns the rows r with r % threads == t and walks the whole list: no
    two threads write one row (no races, no shared cache lines), and every row's sum is taken in the
    same order whatever the number of threads, so the result is the same bit for bit."""
    d = table.shape[1]
    for t in numba.prange(threads):
        for e in range(rows.shape[0]):
            r = rows[e]
            if r % threads == t:
                s = source[e] if source.shape[0] else e
                for j in range(d):
                    table[r, j] += steps[s, j]


_NO_SOURCE = np.empty(0, dtype=np.int64)


@torch.no_grad()
def apply_sgd(optimizer: torch.optim.Optimizer | None, updates: list[Update]) -> None:
    """Plain SGD (word2vec's update) for gradients already scaled by -lr (``gradient_scale``):
    each row moves by the sum of its gradient rows.

    On the CPU a compiled loop adds them (``_add_rows``: 1.1-1.4 times faster than torch's
    ``scatter_add_``, whose threads split each row's columns and so share its cache lines, and a
    shared gradient is read in place instead of copied once per row); elsewhere ``scatter_add_``.
    Both sum each row's gradients in the order given."""
    for param, rows, grads, source in updates:
        if param.device.type == "cpu" and param.is_contiguous() and grads.dtype == param.dtype:
            if len(rows):
                low, high = torch.aminmax(rows)  # (the compiled loop does not check its indices)
                if int(low) < 0 or int(high) >= len(param):
                    raise IndexError(f"rows {int(low)}..{int(high)} outside a table of {len(param)} rows")
            _add_rows(param.detach().numpy(), rows.numpy(), grads.contiguous().numpy(),
                      _NO_SOURCE if source is None else source.numpy(), torch.get_num_threads())  # fmt: skip
        else:
            steps = grads if source is None else grads.index_select(0, source)
            param.scatter_add_(0, rows.unsqueeze(1).expand_as(steps), steps)


def gradient_scale(optimizer: torch.optim.Optimizer) -> float:
    """What ``row_gradients`` should multiply gradients by for this optimiser's fused update:
    -lr for SGD (the gradients become the step itself, saving a pass), 1 for SparseAdam."""
    return -optimizer.param_groups[0]["lr"] if isinstance(optimizer, torch.optim.SGD) else 1.0


FUSED_UPDATES = {torch.optim.SparseAdam: apply_sparse_adam, torch.optim.SGD: apply_sgd}
