"""Optimiser steps applied to the rows an update touches, from gradients given as rows.

Autograd builds sparse gradient tensors and torch's SparseAdam coalesces and masks them at every
step; for embedding tables the same update is a handful of gathers, one sort and a few scatters.
``apply_sgd`` and ``apply_sparse_adam`` reproduce torch's sparse SGD and SparseAdam steps on the
rows a family's ``row_gradients`` returns, keeping their state in the optimiser (so checkpoints
and both paths agree); tests check them against torch's optimisers.
"""

from __future__ import annotations

import math

import torch

from sgns.models.base import Update


def _sum_rows(rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique rows and the sum of their gradients (what coalescing a sparse gradient does)."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    return unique, torch.zeros(len(unique), grads.shape[1], dtype=grads.dtype, device=grads.device).index_add_(
        0, inverse, grads
    )


@torch.no_grad()
def apply_sparse_adam(optimizer: torch.optim.Optimizer, updates: list[Update]) -> None:
    """torch.optim.SparseAdam's step for (param, rows, row gradients) triples, state kept in ``optimizer``."""
    group = optimizer.param_groups[0]
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    tables: dict[torch.Tensor, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for param, rows, grads in updates:  # one step per table: its blocks of rows together
        entry = tables.setdefault(param, ([], []))
        entry[0].append(rows)
        entry[1].append(grads)
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


@torch.no_grad()
def apply_sgd(optimizer: torch.optim.Optimizer, updates: list[Update]) -> None:
    """Plain SGD (word2vec's update) for gradients already scaled by -lr (``gradient_scale``):
    each row moves by the sum of its rows (``scatter_add_``; ``index_add_`` costs the same on CPU with torch 2.13)."""
    for param, rows, steps in updates:
        param.scatter_add_(0, rows.unsqueeze(1).expand_as(steps), steps)


def gradient_scale(optimizer: torch.optim.Optimizer) -> float:
    """What ``row_gradients`` should multiply gradients by for this optimiser's fused update:
    -lr for SGD (the gradients become the step itself, saving a pass), 1 for SparseAdam."""
    return -optimizer.param_groups[0]["lr"] if isinstance(optimizer, torch.optim.SGD) else 1.0


FUSED_UPDATES = {torch.optim.SparseAdam: apply_sparse_adam, torch.optim.SGD: apply_sgd}
