"""The fused fast path equals the reference autograd path: loss, gradients and optimiser steps,
with k negatives per pair, K shared by the batch, or K per group of pairs (groups that divide the
batch, and groups that do not), in one update or several; shared negatives also for pairs that
come side by side (runs of one centre, whose shared work the fast path does once per run)."""

import math

import pytest
import torch
import torch.nn.functional as F

from sgns.fused import apply_sgd, apply_sparse_adam, gradient_scale, sgns_row_gradients
from sgns.model import SkipGramModel
from sgns.module import split_batch

# k per pair, K shared, K for each of 8 (even) or 7 (uneven) groups, K shared with pairs side by side
SHARED = [False, True, 8, 7, "runs"]


def _models(vocab=30, dim=8, seed=0):
    torch.manual_seed(seed)
    reference = SkipGramModel(vocab, dim, init="seed", sparse=True).double()
    with torch.no_grad():
        reference.outside_embed.weight.normal_(0, 0.3)
    fused = SkipGramModel(vocab, dim, init="seed").double()
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _batch(vocab=30, B=64, k=5, seed=1, shared=False, K=12):
    g = torch.Generator().manual_seed(seed)  # small vocabulary: many repeated rows in a batch
    shape = (K,) if shared in (True, "runs") else (shared, K) if shared else (B, k)
    negatives = torch.randint(0, vocab, shape, generator=g)
    center = torch.randint(0, vocab, (B,), generator=g)
    if shared == "runs":  # side by side: runs of 1 to 6 pairs with one centre
        center = center.repeat_interleave(torch.randint(1, 7, (B,), generator=g))[:B]
    return center, torch.randint(0, vocab, (B,), generator=g), negatives


def _dense(table: torch.Tensor, updates) -> torch.Tensor:
    total = torch.zeros_like(table)
    for param, rows, grads in updates:
        if param is table:
            total.index_add_(0, rows, grads)
    return total


def test_shared_negative_loss_is_the_formula():
    """-log σ(v·u_o) - (k/K) Σ_j log σ(-v·u_j), averaged over the batch, written out by hand."""
    _, model = _models()
    center, context, negatives = _batch(shared=True, K=7, B=5)
    V, U = model.center_embed.weight, model.outside_embed.weight
    expected = 0.0
    for c, o in zip(center.tolist(), context.tolist()):
        expected += -math.log(torch.sigmoid(V[c] @ U[o]).item())
        expected += -(5 / 7) * sum(math.log(torch.sigmoid(-(V[c] @ U[j])).item()) for j in negatives.tolist())
    assert model(center, context, negatives, negatives_per_pair=5).item() == pytest.approx(expected / 5, rel=1e-12)


def test_grouped_negative_loss_is_the_formula():
    """K negatives per group of consecutive pairs, weighed k/K; 5 pairs in 2 groups: pair p is in group p·2 // 5."""
    _, model = _models()
    center, context, negatives = _batch(shared=2, K=3, B=5)
    V, U = model.center_embed.weight, model.outside_embed.weight
    expected = 0.0
    for p, (c, o) in enumerate(zip(center.tolist(), context.tolist())):
        expected += -math.log(torch.sigmoid(V[c] @ U[o]).item())
        group = negatives[[0, 0, 0, 1, 1][p]].tolist()
        expected += -(5 / 3) * sum(math.log(torch.sigmoid(-(V[c] @ U[j])).item()) for j in group)
    assert model(center, context, negatives, negatives_per_pair=5).item() == pytest.approx(expected / 5, rel=1e-12)


@pytest.mark.parametrize("shared", SHARED)
@pytest.mark.parametrize("scale", [1.0, -0.3])
def test_row_gradients_equal_autograd(shared, scale):
    reference, fused = _models()
    batch = _batch(shared=shared)
    loss = reference(*batch, negatives_per_pair=5)
    (loss * len(batch[0])).backward()  # the objective: the per-pair loss summed over the pairs
    fused_loss, updates = sgns_row_gradients(fused, *batch, negatives_per_pair=5, scale=scale)
    assert torch.allclose(fused_loss, loss)
    assert (len(updates[0][1]) < len(batch[0])) == (shared == "runs")  # centre rows: one per run
    for table, ref_table in ((fused.center_embed.weight, reference.center_embed.weight),
                             (fused.outside_embed.weight, reference.outside_embed.weight)):  # fmt: skip
        assert torch.allclose(_dense(table, updates), scale * ref_table.grad.to_dense(), atol=1e-12)
    assert sgns_row_gradients(fused, *batch, with_loss=False)[0] is None


def _run(optimizer_cls, apply, shared, steps=5, **kwargs):
    reference, fused = _models()
    ref_opt = optimizer_cls(list(reference.parameters()), **kwargs)
    fused_opt = optimizer_cls(list(fused.parameters()), **kwargs)
    for step in range(steps):
        batch = _batch(seed=step, shared=shared)
        ref_opt.zero_grad()
        (reference(*batch) * len(batch[0])).backward()
        ref_opt.step()
        _, updates = sgns_row_gradients(fused, *batch, scale=gradient_scale(fused_opt))
        apply(fused_opt, updates)
    return reference, fused, ref_opt, fused_opt


@pytest.mark.parametrize("shared", SHARED)
def test_fused_sparse_adam_equals_torch_sparse_adam(shared):
    reference, fused, ref_opt, fused_opt = _run(torch.optim.SparseAdam, apply_sparse_adam, shared, lr=0.05)
    for p_ref, p_fused in zip(reference.parameters(), fused.parameters()):
        assert torch.allclose(p_ref, p_fused, atol=1e-12)
        assert not torch.equal(p_fused, _models()[1].state_dict()["center_embed.weight"])  # it moved
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(ref_opt.state[p_ref][key], fused_opt.state[p_fused][key], atol=1e-12)
        assert ref_opt.state[p_ref]["step"] == fused_opt.state[p_fused]["step"] == 5


@pytest.mark.parametrize("shared", SHARED)
def test_fused_sgd_equals_torch_sparse_sgd(shared):
    reference, fused, _, _ = _run(torch.optim.SGD, apply_sgd, shared, lr=0.03)
    for p_ref, p_fused in zip(reference.parameters(), fused.parameters()):
        assert torch.allclose(p_ref, p_fused, atol=1e-12)


@pytest.mark.parametrize("shared", SHARED)
def test_micro_batches_are_consecutive_sgd_steps_on_their_pairs(shared):
    """Splitting a batch into parts: each part is one SGD step on the summed loss of its own
    pairs (a per-pair step of lr), taken after the previous part's step."""
    batch = _batch(B=60, shared=shared, K=12)
    parts = split_batch(batch, 3)
    assert [len(p[0]) for p in parts] == [20, 20, 20]
    assert torch.equal(torch.cat([p[2] for p in parts]), batch[2])  # negatives split, not repeated
    reference, fused = _models()
    opt = torch.optim.SGD(list(reference.parameters()), lr=0.03)
    for part in parts:
        opt.zero_grad()
        (reference(*part) * len(part[0])).backward()
        opt.step()
        _, updates = sgns_row_gradients(fused, *part, scale=-0.03)
        apply_sgd(None, updates)
    for p_ref, p_fused in zip(reference.parameters(), fused.parameters()):
        assert torch.allclose(p_ref, p_fused, atol=1e-12)


def test_shared_negatives_weigh_like_k_per_pair_in_expectation():
    """Averaged over many draws of K shared negatives, the negative term equals that of k per pair."""
    torch.manual_seed(0)
    v = torch.randn(50, 8) * 0.5
    u = torch.randn(40, 8) * 0.5
    scores = F.logsigmoid(-(v @ u.T))  # every (centre, candidate) pair; negatives drawn uniformly
    exact = 5 * scores.mean(dim=1)  # E[Σ_{k=5} log σ(-v·u_j)]
    draws = torch.randint(0, 40, (20000, 16))
    shared = (5 / 16) * scores[:, draws].sum(dim=2).mean(dim=1)
    assert torch.allclose(shared, exact, rtol=0.01)  # Monte Carlo error about 0.3 %


@pytest.mark.parametrize("shared", SHARED)
def test_a_rank_with_no_pairs_sends_empty_updates(shared):
    """Under DDP the last, short step can leave a rank no pairs; it still joins every gather."""
    _, fused = _models()
    center, context, negatives = _batch(shared=shared)
    empty = (center[:0], context[:0], negatives if shared else negatives[:0])
    _, updates = sgns_row_gradients(fused, *empty, scale=-0.5, with_loss=False)
    assert [len(rows) for _, rows, _ in updates] == [0, 0, negatives.numel() if shared else 0]
    assert all(not grads.any() for _, _, grads in updates)
