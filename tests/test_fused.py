"""The fused fast path equals the reference autograd path: gradients and optimiser steps."""

import torch

from sgns.fused import apply_sgd, apply_sparse_adam, sgns_row_gradients
from sgns.model import SkipGramModel


def _models(vocab=30, dim=8, seed=0):
    torch.manual_seed(seed)
    reference = SkipGramModel(vocab, dim, init="seed", sparse=True).double()
    with torch.no_grad():
        reference.outside_embed.weight.normal_(0, 0.3)
    fused = SkipGramModel(vocab, dim, init="seed").double()
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _batch(vocab=30, B=64, k=5, seed=1):
    g = torch.Generator().manual_seed(seed)  # small vocabulary: many repeated rows in a batch
    return torch.randint(0, vocab, (B,), generator=g), torch.randint(0, vocab, (B,), generator=g), torch.randint(0, vocab, (B, k), generator=g)


def test_row_gradients_equal_autograd():
    reference, fused = _models()
    batch = _batch()
    loss = reference(*batch)
    loss.backward()
    fused_loss, c_rows, c_grads, o_rows, o_grads = sgns_row_gradients(fused, *batch)
    assert torch.allclose(fused_loss, loss)
    dense_c = torch.zeros_like(fused.center_embed.weight).index_add_(0, c_rows, c_grads)
    dense_o = torch.zeros_like(fused.outside_embed.weight).index_add_(0, o_rows, o_grads)
    assert torch.allclose(dense_c, reference.center_embed.weight.grad.to_dense(), atol=1e-12)
    assert torch.allclose(dense_o, reference.outside_embed.weight.grad.to_dense(), atol=1e-12)


def _run(optimizer_cls, apply, steps=5, **kwargs):
    reference, fused = _models()
    ref_opt = optimizer_cls(list(reference.parameters()), **kwargs)
    fused_opt = optimizer_cls(list(fused.parameters()), **kwargs)
    for step in range(steps):
        batch = _batch(seed=step)
        ref_opt.zero_grad()
        reference(*batch).backward()
        ref_opt.step()
        _, c_rows, c_grads, o_rows, o_grads = sgns_row_gradients(fused, *batch)
        apply(fused_opt, [(fused.center_embed.weight, c_rows, c_grads), (fused.outside_embed.weight, o_rows, o_grads)])
    return reference, fused, ref_opt, fused_opt


def test_fused_sparse_adam_equals_torch_sparse_adam():
    reference, fused, ref_opt, fused_opt = _run(torch.optim.SparseAdam, apply_sparse_adam, lr=0.05)
    for p_ref, p_fused in zip(reference.parameters(), fused.parameters()):
        assert torch.allclose(p_ref, p_fused, atol=1e-12)
        assert not torch.equal(p_fused, _models()[1].state_dict()["center_embed.weight"])  # it moved
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(ref_opt.state[p_ref][key], fused_opt.state[p_fused][key], atol=1e-12)
        assert ref_opt.state[p_ref]["step"] == fused_opt.state[p_fused]["step"] == 5


def test_fused_sgd_equals_torch_sparse_sgd():
    reference, fused, _, _ = _run(torch.optim.SGD, apply_sgd, lr=2.0)
    for p_ref, p_fused in zip(reference.parameters(), fused.parameters()):
        assert torch.allclose(p_ref, p_fused, atol=1e-12)
