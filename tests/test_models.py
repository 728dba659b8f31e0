"""Every model family: its loss is the formula, its closed-form row gradients equal autograd's on that
loss (k negatives per example, K shared by the update, pairs side by side), and the fused SGD and
SparseAdam steps equal torch's optimisers on them."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from sgns.models import CBOW, Batch, FastText, SkipGram
from sgns.models.objectives import HierarchicalSoftmax, huffman_tree, make_objective, sgns_loss
from sgns.optim import apply_sgd, apply_sparse_adam, gradient_scale

V, D = 30, 8
FAMILIES = ["skipgram", "cbow", "cbow_sum", "fasttext"]
WORDS = [f"w{i}{'ing' if i % 3 else 'é'}" for i in range(V)]  # spellings for the subword family: shared n-grams
NEGATIVES = ["per_example", "shared", "runs"]  # k per example, K shared by the update, pairs side by side


COUNTS = [3 * (V - i) + i % 4 // 3 for i in range(V)]  # (sorted by _net) with ties


def _net(family: str, sparse: bool = False, seed: int = 0, objective: str = "ns"):
    torch.manual_seed(seed)
    output = make_objective(objective, sorted(COUNTS, reverse=True))
    if family == "fasttext":  # 13 buckets: n-gram rows collide, as they do in 2,000,000
        net = FastText(V, D, words=WORDS, min_n=2, max_n=4, buckets=13, sparse=sparse, objective=output).double()
    elif family == "skipgram":
        net = SkipGram(V, D, sparse=sparse, objective=output).double()
    else:
        net = CBOW(V, D, cbow_mean=family == "cbow", sparse=sparse, objective=output).double()
    with torch.no_grad():  # random outputs (word2vec starts them at zero): every gradient term is exercised
        for table in net.parameters():
            table.normal_(0, 0.3)
    return net


def _pair(family: str, sparse: bool = False, objective: str = "ns"):
    reference, fused = _net(family, sparse=True, objective=objective), _net(family, sparse=sparse, objective=objective)
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _batch(family: str, negatives: str = "shared", B: int = 64, k: int = 5, K: int = 12, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)  # a small vocabulary: many rows repeat within an update
    center = torch.randint(0, V, (B,), generator=g)
    if negatives == "runs":  # side by side: runs of 1 to 6 pairs with one centre
        center = center.repeat_interleave(torch.randint(1, 7, (B,), generator=g))[:B]
    drawn = torch.randint(0, V, (B, k) if negatives == "per_example" else (1, K), generator=g)
    weight = 1.0 if negatives == "per_example" else k / K
    if family in ("skipgram", "fasttext"):
        return Batch(center, torch.randint(0, V, (B,), generator=g), drawn, weight)
    window = 3  # CBOW windows of 6 slots, a random reach on each side (some windows have one word)
    mask = torch.rand(B, 2 * window, generator=g) < 0.6
    mask[:, window - 1] = True
    context = torch.randint(0, V, (B, 2 * window), generator=g).masked_fill(~mask, 0)
    return Batch(center, context, drawn, weight, mask)


def _dense(table: torch.Tensor, updates) -> torch.Tensor:
    total = torch.zeros_like(table)
    for param, rows, grads in updates:
        if param is table:
            total.index_add_(0, rows, grads)
    return total


def test_the_skipgram_loss_is_the_tutorial_formula():
    """-log σ(v_c·u_o) - (k/K) Σ_j log σ(-v_c·u_j), per pair, negatives shared and per pair, written out."""
    net = _net("skipgram")
    for negatives, weight in (("shared", 5 / 7), ("per_example", 1.0)):
        batch = _batch("skipgram", negatives, B=5, K=7)
        Vw, Uw = net.center_embed.weight, net.outside_embed.weight
        for p, (c, o) in enumerate(zip(batch.center.tolist(), batch.context.tolist())):
            negs = batch.negatives[0 if negatives == "shared" else p].tolist()
            expected = -math.log(torch.sigmoid(Vw[c] @ Uw[o]).item())
            expected -= weight * sum(math.log(torch.sigmoid(-(Vw[c] @ Uw[j])).item()) for j in negs)
            assert net.loss(batch)[p].item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("cbow_mean", [True, False])
def test_the_cbow_loss_scores_the_window_mean_or_sum(cbow_mean):
    net = _net("cbow" if cbow_mean else "cbow_sum")
    batch = _batch("cbow", "shared", B=6, K=7)
    Vw, Uw = net.center_embed.weight, net.outside_embed.weight
    for b in range(6):
        words = batch.context[b][batch.mask[b]]
        h = Vw[words].mean(0) if cbow_mean else Vw[words].sum(0)
        expected = -math.log(torch.sigmoid(h @ Uw[batch.center[b]]).item())
        expected -= (5 / 7) * sum(math.log(torch.sigmoid(-(h @ Uw[j])).item()) for j in batch.negatives[0].tolist())
        assert net.loss(batch)[b].item() == pytest.approx(expected, rel=1e-10)


def test_the_loss_is_stable_for_large_scores():
    loss = sgns_loss(torch.tensor([-200.0]), torch.tensor([[200.0]]))
    assert torch.isfinite(loss).all() and torch.allclose(loss, torch.tensor([400.0]))


def test_skipgram_gradients_match_the_hand_derivation():
    """d/dv_c = (σ(pos)-1) u_o + Σ σ(neg_k) u_k;  d/du_o = (σ(pos)-1) v_c;  d/du_k = σ(neg_k) v_c; summed over pairs."""
    net = _net("skipgram")
    batch = Batch(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[4, 5], [5, 2]]), 1.0)
    net.loss(batch).sum().backward()
    Vw, Uw = net.center_embed.weight.detach(), net.outside_embed.weight.detach()
    gV, gU = torch.zeros_like(Vw), torch.zeros_like(Uw)
    for b in range(2):
        vc, uo = Vw[batch.center[b]], Uw[batch.context[b]]
        gpos = torch.sigmoid(uo @ vc) - 1
        gV[batch.center[b]] += gpos * uo
        gU[batch.context[b]] += gpos * vc
        for k in batch.negatives[b]:
            gneg = torch.sigmoid(Uw[k] @ vc)
            gV[batch.center[b]] += gneg * Uw[k]
            gU[k] += gneg * vc
    assert torch.allclose(net.center_embed.weight.grad, gV, atol=1e-12)
    assert torch.allclose(net.outside_embed.weight.grad, gU, atol=1e-12)


def test_every_cbow_window_word_receives_the_hidden_layers_gradient():
    """gensim's and word2vec.c's CBOW update: each window word's row moves by dL/dh, undivided by
    the window's size with cbow_mean (and divided by it without), on both paths."""
    for family in ("cbow", "cbow_sum"):
        net = _net(family)
        batch = _batch("cbow", "shared", B=1, K=4)
        words = batch.context[0][batch.mask[0]]
        h = net.center_embed.weight[words].mean(0) if family == "cbow" else net.center_embed.weight[words].sum(0)
        h = h.detach().requires_grad_()
        u_c, u_neg = (
            net.outside_embed.weight[batch.center[0]].detach(),
            net.outside_embed.weight[batch.negatives[0]].detach(),
        )
        sgns_loss((h @ u_c).reshape(1), (u_neg @ h).reshape(1, -1), batch.neg_weight).sum().backward()
        expected = h.grad if family == "cbow" else h.grad / len(words)
        net.loss(batch).sum().backward()
        for word in words.unique():
            assert torch.allclose(net.center_embed.weight.grad[word], expected * (words == word).sum(), atol=1e-12)
        _, rows = net.row_gradients(batch)
        assert all(torch.allclose(g, expected, atol=1e-12) for g in rows[0][2])


OBJECTIVES = ["ns", "hs"]


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scale", [1.0, -0.3])
def test_row_gradients_equal_autograd(family, negatives, scale, objective):
    reference, fused = _pair(family, objective=objective)
    batch = _batch(family, negatives)
    loss = reference.loss(batch)
    loss.sum().backward()  # the objective: the per-example loss summed over the update
    fused_loss, updates = fused.row_gradients(batch, scale=scale)
    assert torch.allclose(fused_loss, loss.mean())
    if family == "skipgram" and objective == "ns":
        assert (len(updates[0][1]) < len(batch)) == (negatives == "runs")  # centre rows: one per run
    if family == "skipgram" and objective == "hs":  # word2vec.c's roles: each pair's context row in
        assert torch.equal(updates[0][1], batch.context)
    for table, ref_table in zip(fused.parameters(), reference.parameters()):
        assert torch.allclose(_dense(table, updates), scale * ref_table.grad.to_dense(), atol=1e-12)
    assert fused.row_gradients(batch, with_loss=False)[0] is None


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_compiled_update_is_the_same_sgd_update(family, negatives, objective):
    """With CPU SGD in one process the update runs compiled whole (``sgd_update``, kernels.py): the
    same tables and loss as the torch form's rows applied by ``apply_sgd``, with the loss (read by
    the guard while every table is still as it was) and without it (one call)."""
    rows_net, compiled_net = _pair(family, objective=objective)
    for step, with_loss in enumerate([True, False, True, False]):
        batch = _batch(family, negatives, seed=step)
        loss, updates = rows_net.row_gradients(batch, scale=-0.2)
        apply_sgd(None, updates)
        before, read = [table.clone() for table in compiled_net.parameters()], []

        def guard(value, before=before, read=read):
            assert all(torch.equal(a, b) for a, b in zip(before, compiled_net.parameters()))
            read.append(value)

        compiled_loss = compiled_net.sgd_update(batch, [-0.2], with_loss, guard)
        assert read == ([compiled_loss] if with_loss else []) and (compiled_loss is None) != with_loss
        if with_loss:
            assert compiled_loss == pytest.approx(loss.item(), rel=1e-12)
    start = _net(family, objective=objective)
    for a, b, c in zip(rows_net.parameters(), compiled_net.parameters(), start.parameters()):
        assert torch.allclose(a, b, atol=1e-12)
        assert not torch.allclose(b, c)  # every table moved


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_steps_updates_joined_are_those_updates_one_after_another(family, negatives, objective):
    """A step's updates joined (``Batch.join``) run in one compiled call, each with its own step, as
    if run one at a time: the same tables. An empty update among them changes nothing, and a run of
    one centre (skip-gram) or a distinct centre (fastText) that continues across an update's edge
    is two groups, one per update."""
    one_by_one, joined = _pair(family, objective=objective)
    batch = _batch(family, negatives, B=96, seed=3)
    edges = [0, 30, 30, 31, 70, 96]  # (an empty update; an update of one example)
    batch.center[29] = batch.center[30] = batch.center[31]  # (a centre on both sides of two edges)
    updates = []
    for u, (a, b) in enumerate(itertools.pairwise(edges)):
        drawn = batch.negatives[a:b] if negatives == "per_example" else batch.negatives.roll(u, dims=1)
        mask = None if batch.mask is None else batch.mask[a:b]
        updates.append(Batch(batch.center[a:b], batch.context[a:b], drawn, batch.neg_weight, mask))
    scales = [-0.2, -0.15, -0.1, -0.05, -0.01]
    for update, scale in zip(updates, scales):
        one_by_one.sgd_update(update, [scale], False, None)
    joined.sgd_update(Batch.join(updates), scales, False, None)
    start = _net(family, objective=objective)
    for a, b, c in zip(one_by_one.parameters(), joined.parameters(), start.parameters()):
        assert torch.allclose(a, b, atol=1e-12)
        assert not torch.allclose(b, c)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_the_compiled_update_lands_nothing_the_guard_stops(family, objective):
    """A guard that raises (the divergence guard) leaves every table as it was."""
    net = _net(family, objective=objective)
    before = [table.clone() for table in net.parameters()]

    def guard(value):
        raise ArithmeticError(value)

    with pytest.raises(ArithmeticError):
        net.sgd_update(_batch(family), [-0.2], True, guard)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def _run(family, negatives, optimizer_cls, apply, steps=5, objective="ns", **kwargs):
    reference, fused = _pair(family, objective=objective)
    ref_opt, fused_opt = (
        optimizer_cls(list(reference.parameters()), **kwargs),
        optimizer_cls(list(fused.parameters()), **kwargs),
    )
    for step in range(steps):
        batch = _batch(family, negatives, seed=step)
        ref_opt.zero_grad()
        reference.loss(batch).sum().backward()
        ref_opt.step()
        apply(fused_opt, fused.row_gradients(batch, scale=gradient_scale(fused_opt))[1])
    return reference, fused, ref_opt, fused_opt


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_sparse_adam_equals_torch_sparse_adam(family, negatives, objective):
    reference, fused, ref_opt, fused_opt = _run(family, negatives, torch.optim.SparseAdam, apply_sparse_adam, lr=0.05,
                                                objective=objective)  # fmt: skip
    start = _net(family).state_dict()["center_embed.weight"]
    for p_ref, p_fused in zip(reference.parameters(), fused.parameters()):
        assert torch.allclose(p_ref, p_fused, atol=1e-12)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(ref_opt.state[p_ref][key], fused_opt.state[p_fused][key], atol=1e-12)
        assert ref_opt.state[p_ref]["step"] == fused_opt.state[p_fused]["step"] == 5
    assert not torch.equal(fused.center_embed.weight, start)  # it moved


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_fused_sgd_equals_torch_sparse_sgd(family, negatives, objective):
    reference, fused, _, _ = _run(family, negatives, torch.optim.SGD, apply_sgd, lr=0.03, objective=objective)
    for p_ref, p_fused in zip(reference.parameters(), fused.parameters()):
        assert torch.allclose(p_ref, p_fused, atol=1e-12)


def test_shared_negatives_weigh_like_k_per_example_in_expectation():
    """Averaged over many draws of K shared negatives, the negative term equals that of k per example."""
    torch.manual_seed(0)
    v = torch.randn(50, 8) * 0.5
    u = torch.randn(40, 8) * 0.5
    scores = F.logsigmoid(-(v @ u.T))  # every (centre, candidate) pair; negatives drawn uniformly
    exact = 5 * scores.mean(dim=1)  # E[Σ_{k=5} log σ(-v·u_j)]
    draws = torch.randint(0, 40, (20000, 16))
    shared = (5 / 16) * scores[:, draws].sum(dim=2).mean(dim=1)
    assert torch.allclose(shared, exact, rtol=0.01)  # Monte Carlo error about 0.3 %


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("negatives", NEGATIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_an_empty_update_sends_empty_rows(family, negatives, objective):
    """Under DDP a short update can leave a rank no examples; it still joins every exchange."""
    _, fused = _pair(family, objective=objective)
    batch = _batch(family, negatives)
    per_example = negatives == "per_example"
    empty = Batch(batch.center[:0], batch.context[:0], batch.negatives[:0] if per_example else batch.negatives,
                  batch.neg_weight, None if batch.mask is None else batch.mask[:0])  # fmt: skip
    _, updates = fused.row_gradients(empty, scale=-0.5, with_loss=False)
    shared = 0 if per_example or objective == "hs" else batch.negatives.numel()  # (the update's shared negatives' rows)
    assert [len(rows) for _, rows, _ in updates] == [0] * (len(updates) - 1) + [shared]
    assert all(not grads.any() for _, _, grads in updates)


@pytest.mark.parametrize("family", ["skipgram", "cbow"])
def test_word2vec_initialisation(family):
    d = 50
    net = SkipGram(1000, d) if family == "skipgram" else CBOW(1000, d)
    weights = net.center_embed.weight
    assert weights.abs().max() <= 0.5 / d and weights.std() > 0.25 / d  # U(±0.5/d): std 0.29/d
    assert (net.outside_embed.weight == 0).all()
    assert torch.equal(net.word_vectors(), weights.detach())


def test_the_fasttext_input_is_the_mean_of_the_word_and_its_ngram_rows():
    """h = (v_w + Σ_g z_g) / (1 + n), the n-gram rows g being gensim's hashes of <w>'s 2..4-grams;
    its loss is skip-gram's on h, and every row of the word receives dL/dh undivided (fastText's update)."""
    from gensim.models.fasttext import ft_ngram_hashes

    net = _net("fasttext")
    batch = _batch("fasttext", "shared", B=4, K=5)
    Vw, Nw, Uw = net.center_embed.weight, net.ngram_embed.weight, net.outside_embed.weight
    for p, (c, o) in enumerate(zip(batch.center.tolist(), batch.context.tolist())):
        rows = ft_ngram_hashes(WORDS[c], 2, 4, 13)
        h = (Vw[c] + Nw[rows].sum(0)) / (1 + len(rows))
        expected = -math.log(torch.sigmoid(h @ Uw[o]).item())
        expected -= (5 / 5) * sum(math.log(torch.sigmoid(-(h @ Uw[j])).item()) for j in batch.negatives[0].tolist())
        assert net.loss(batch)[p].item() == pytest.approx(expected, rel=1e-10)
        assert torch.allclose(net.word_vectors()[c], h.detach())
    one = Batch(batch.center[:1], batch.context[:1], batch.negatives, 1.0)
    h = net.word_vectors()[one.center[0]].clone().requires_grad_()
    sgns_loss(
        (h @ Uw[one.context[0]].detach()).reshape(1), (Uw[one.negatives[0]].detach() @ h).reshape(1, -1)
    ).sum().backward()
    _, updates = net.row_gradients(one)
    assert torch.allclose(updates[0][2][0], h.grad) and all(torch.allclose(g, h.grad) for g in updates[1][2])
    assert len(updates[1][1]) == len(ft_ngram_hashes(WORDS[int(one.center[0])], 2, 4, 13))


def test_fasttext_initialisation_is_fasttexts():
    d = 50
    net = FastText(1000, d, words=[f"w{i}" for i in range(1000)], buckets=5000)
    for table in (net.center_embed.weight, net.ngram_embed.weight):
        assert table.abs().max() <= 1.0 / d and table.std() > 0.5 / d  # U(±1/d): std 0.58/d
    assert (net.outside_embed.weight == 0).all()


def test_a_fasttext_table_far_larger_than_its_vocabulary_uses_is_announced(caplog):
    """On the embedded 60k-token corpus, fastText's 2M buckets made an 800 MB last.ckpt (rewritten
    at every epoch end) and an 800 MB fasttext.bin for 1,788 words, without a word."""
    words = ["alpha", "beta", "gamma"]
    with caplog.at_level("WARNING", logger="sgns"):
        FastText(3, 16, words, buckets=2_000_000)
    # <alpha> and <gamma> have 5 + 4 + 3 + 2 n-grams of 3..6 characters, <beta> 4 + 3 + 2 + 1: 38, all distinct
    assert "make a 128 MB n-gram table" in caplog.text and "words use 38 of the rows" in caplog.text
    assert "model.net.buckets=100000 makes them about 6 MB" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sgns"):
        FastText(3, 16, words, buckets=200_000)  # 13 MB: not worth a line
    assert caplog.text == ""


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_table_is_declared(family, objective):
    """A family's TABLES name all its parameters, so the digest, export and checkpoint keys miss none."""
    net = _net(family, objective=objective)
    assert {name for name, _ in net.named_parameters()} == {f"{a}.weight" for a in net.TABLES.values()}
    assert all(table is getattr(net, net.TABLES[role]).weight for role, table in net.tables().items())
    state = {f"net.{name}": value for name, value in net.state_dict().items()}
    assert all(net.state_key(role) in state for role in net.TABLES)
