"""The SGNS loss and its gradients against hand-derived formulas."""

import torch

from sgns.model import SkipGramModel, sgns_loss


def _sigmoid(x):
    return 1.0 / (1.0 + torch.exp(-x))


def test_loss_matches_the_tutorial_formula():
    pos = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    neg = torch.tensor([[0.1, -0.4], [2.5, 0.0], [-3.0, 1.0]], dtype=torch.float64)
    expected = -torch.log(_sigmoid(pos)) - torch.log(_sigmoid(-neg)).sum(dim=1)
    assert torch.allclose(sgns_loss(pos, neg), expected, atol=1e-12)


def test_loss_is_stable_for_large_scores():
    loss = sgns_loss(torch.tensor([-200.0]), torch.tensor([[200.0]]))
    assert torch.isfinite(loss).all() and torch.allclose(loss, torch.tensor([400.0]))


def test_scores_are_dot_products_and_bmm():
    torch.manual_seed(0)
    model = SkipGramModel(10, 4, init="seed").double()
    c, o, n = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([[5, 6, 7], [8, 9, 0]])
    pos, neg = model.scores(c, o, n)
    V, U = model.center_embed.weight, model.outside_embed.weight
    assert torch.allclose(pos, (V[c] * U[o]).sum(1))
    for b in range(2):
        assert torch.allclose(neg[b], U[n[b]] @ V[c[b]])


def test_gradients_match_hand_derivation():
    """d/dv_c = (σ(pos)-1) u_o + Σ σ(neg_k) u_k;  d/du_o = (σ(pos)-1) v_c;  d/du_k = σ(neg_k) v_c; mean over B."""
    torch.manual_seed(1)
    model = SkipGramModel(6, 3, init="seed").double()
    with torch.no_grad():
        model.center_embed.weight.normal_()
        model.outside_embed.weight.normal_()
    c, o, n = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[4, 5], [5, 2]])
    model(c, o, n, negatives_per_pair=2).backward()  # k = 2 per pair: each weighs k/K = 1
    V, U = model.center_embed.weight.detach(), model.outside_embed.weight.detach()
    gV, gU = torch.zeros_like(V), torch.zeros_like(U)
    B = len(c)
    for b in range(B):
        vc, uo = V[c[b]], U[o[b]]
        gpos = _sigmoid(uo @ vc) - 1
        gV[c[b]] += gpos * uo / B
        gU[o[b]] += gpos * vc / B
        for k in n[b]:
            gneg = _sigmoid(U[k] @ vc)
            gV[c[b]] += gneg * U[k] / B
            gU[k] += gneg * vc / B
    assert torch.allclose(model.center_embed.weight.grad, gV, atol=1e-12)
    assert torch.allclose(model.outside_embed.weight.grad, gU, atol=1e-12)


def test_sparse_and_dense_gradients_agree():
    torch.manual_seed(2)
    dense, sparse = SkipGramModel(20, 5, init="seed"), SkipGramModel(20, 5, init="seed", sparse=True)
    sparse.load_state_dict(dense.state_dict())
    batch = torch.randint(0, 20, (8,)), torch.randint(0, 20, (8,)), torch.randint(0, 20, (8, 3))
    dense(*batch).backward()
    sparse(*batch).backward()
    assert sparse.outside_embed.weight.grad.is_sparse
    assert torch.allclose(sparse.outside_embed.weight.grad.to_dense(), dense.outside_embed.weight.grad, atol=1e-7)


def test_initialisations():
    d = 50
    w2v, seed = SkipGramModel(1000, d, init="word2vec"), SkipGramModel(1000, d, init="seed")
    for model in (w2v, seed):
        weights = model.center_embed.weight
        assert weights.abs().max() <= 0.5 / d and weights.std() > 0.25 / d  # U(±0.5/d): std 0.29/d
    assert (w2v.outside_embed.weight == 0).all()
    assert seed.outside_embed.weight.abs().max() <= 0.5 / d and seed.outside_embed.weight.std() > 0.25 / d
