"""The fast path: SGNS gradients in closed form, applied only to the rows a batch touches.

Autograd builds sparse gradient tensors and torch's SparseAdam coalesces and masks them at
every step; for embedding tables the same update is a handful of gathers, one sort and a few
scatters. ``sgns_row_gradients`` computes the exact gradients of the batch-mean loss, and
``apply_sparse_adam`` / ``apply_sgd`` reproduce torch's SparseAdam and sparse SGD steps on
those rows, keeping their state in the optimiser (so checkpoints and both paths agree).
Tests check both against autograd and torch's optimisers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sgns.model import SkipGramModel


@torch.no_grad()
def sgns_row_gradients(
    model: SkipGramModel, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and per-row gradients of the batch-mean SGNS loss.

    Returns (loss, center rows, their gradients [B, d], outside rows, their gradients [B(1+k), d]);
    rows may repeat, and a repeated row's gradients are to be summed.
    """
    V, U = model.center_embed.weight, model.outside_embed.weight
    B, k = negatives.shape
    v_c = V.index_select(0, center)  # [B, d]
    u_o = U.index_select(0, context)  # [B, d]
    u_neg = U.index_select(0, negatives.reshape(-1)).view(B, k, -1)  # [B, k, d]
    pos = (v_c * u_o).sum(dim=1)
    neg = torch.bmm(u_neg, v_c.unsqueeze(2)).squeeze(2)
    loss = -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(dim=1)).mean()
    g_pos = (torch.sigmoid(pos) - 1) / B  # d loss / d pos
    g_neg = torch.sigmoid(neg) / B  # d loss / d neg
    grad_center = g_pos.unsqueeze(1) * u_o + torch.bmm(g_neg.unsqueeze(1), u_neg).squeeze(1)
    grad_outside = torch.cat([g_pos.unsqueeze(1) * v_c, (g_neg.unsqueeze(2) * v_c.unsqueeze(1)).view(B * k, -1)])
    return loss, center, grad_center, torch.cat([context, negatives.reshape(-1)]), grad_outside


def _sum_rows(rows: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique rows and the sum of their gradients (what coalescing a sparse gradient does)."""
    unique, inverse = torch.unique(rows, return_inverse=True)
    return unique, torch.zeros(len(unique), grads.shape[1], dtype=grads.dtype, device=grads.device).index_add_(0, inverse, grads)


@torch.no_grad()
def apply_sparse_adam(optimizer: torch.optim.Optimizer, updates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """torch.optim.SparseAdam's step for (param, rows, row gradients) triples, state kept in ``optimizer``."""
    group = optimizer.param_groups[0]
    lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
    for param, rows, grads in updates:
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
def apply_sgd(optimizer: torch.optim.Optimizer, updates: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """Plain SGD (word2vec's update): each row moves by -lr × its summed gradient."""
    lr = optimizer.param_groups[0]["lr"]
    for param, rows, grads in updates:
        param.index_add_(0, rows, grads, alpha=-lr)


FUSED_UPDATES = {torch.optim.SparseAdam: apply_sparse_adam, torch.optim.SGD: apply_sgd}
