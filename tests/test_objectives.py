"""Hierarchical softmax: word2vec.c's Huffman tree, its loss by hand, and every family learning with
it end to end (planted groups, exports gensim reads). The closed form against autograd, for every
family and objective, is in test_models.py; the exact resume in test_reliability.py."""

import math

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors
from gensim.models.fasttext import load_facebook_model

from conftest import compose_train, planted_corpus
from sgns.models import Batch, SkipGram
from sgns.models.objectives import HierarchicalSoftmax, huffman_tree
from sgns.train import train
from sgns.vectors import WordVectors


def test_the_tree_is_word2vec_cs_for_a_vocabulary_worked_by_hand():
    """Counts 5, 3, 2, 1 (word2vec.c's CreateBinaryTree): 2 + 1 make node 0 (count 3; the second
    taken, word 2, gets code 1); node 0 and word 1 tie at 3, the inner node is taken first (word2vec
    compares with <), so word 1 gets code 1 under node 1 (count 6); word 0 and node 1 make the root,
    node 2 (node 1 gets code 1). Paths are read from the root."""
    codes, points, lengths = huffman_tree([5, 3, 2, 1])
    assert lengths.tolist() == [1, 2, 3, 3]
    assert [c[:n].tolist() for c, n in zip(codes, lengths)] == [[0], [1, 1], [1, 0, 1], [1, 0, 0]]
    assert [p[:n].tolist() for p, n in zip(points, lengths)] == [[2], [2, 1], [2, 1, 0], [2, 1, 0]]


def test_frequent_words_get_shorter_paths_and_the_code_is_an_optimal_prefix_code():
    rng = np.random.default_rng(0)
    counts = np.sort(rng.zipf(1.5, 5000).clip(max=10**6) + 4)[::-1]
    codes, points, lengths = huffman_tree(counts)
    assert lengths[0] < lengths[-1] and all(np.diff(lengths) >= 0)  # (counts sorted: lengths never shrink)
    assert math.isclose(np.sum(2.0 ** -lengths), 1.0)  # a full binary tree (Kraft's equality)
    words = {tuple(c[:n]) for c, n in zip(codes, lengths)}
    assert len(words) == len(counts)  # every word its own path
    assert points.max() == len(counts) - 2 and (points[:, 0] == len(counts) - 2).all()  # the root first
    merged, total = sorted(counts.tolist()), 0  # Huffman's cost, by a plain priority merge
    import heapq

    heapq.heapify(merged)
    while len(merged) > 1:
        pair = heapq.heappop(merged) + heapq.heappop(merged)
        total += pair
        heapq.heappush(merged, pair)
    assert int((counts * lengths).sum()) == total


def test_a_vocabulary_out_of_count_order_gets_each_words_path_of_the_sorted_tree():
    """init_from keeps the earlier words' ids before the new ones, so counts need not be sorted: each
    word gets the path it has in the tree of the sorted counts (ties in id order)."""
    counts = [2, 5, 1, 3, 3]  # sorted: 5 (id 1), 3 (id 3), 3 (id 4), 2 (id 0), 1 (id 2)
    order = [1, 3, 4, 0, 2]
    tree = HierarchicalSoftmax(counts)
    codes, points, lengths = huffman_tree([counts[i] for i in order])
    for rank, word in enumerate(order):
        assert tree.lengths[word] == lengths[rank]
        assert tree.codes[word].tolist() == codes[rank].tolist()
        assert tree.points[word].tolist() == points[rank].tolist()


def test_the_loss_is_the_sum_over_the_path_by_hand():
    """Skip-gram with hierarchical softmax in word2vec.c's roles: the context word's row in, the
    decisions along the centre's path out."""
    counts = [9, 5, 3, 2, 1]
    net = SkipGram(5, 4, objective=HierarchicalSoftmax(counts)).double()
    with torch.no_grad():
        net.outside_embed.weight.normal_(0, 0.5)
        net.center_embed.weight.normal_(0, 0.5)
    batch = Batch(torch.tensor([0, 3]), torch.tensor([4, 0]), torch.zeros(1, 0, dtype=torch.long))
    codes, points, lengths = huffman_tree(counts)
    for p, (c, o) in enumerate(zip([0, 3], [4, 0])):
        h = net.center_embed.weight[o]
        expected = 0.0
        for j in range(lengths[c]):
            x = float(h.detach() @ net.outside_embed.weight[points[c, j]].detach())
            expected += math.log1p(math.exp(-(x if codes[c, j] == 0 else -x)))  # -log σ(±x)
        assert net.loss(batch)[p].item() == pytest.approx(expected, rel=1e-12)
    assert net.untrained_loss(batch) == pytest.approx((lengths[0] + lengths[3]) / 2 * math.log(2))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("hs") / "planted.txt"
    return path, planted_corpus(path, sentences=1500)


def _overrides(path, model, *extra):
    return [f"data.path={path}", "data.min_count=1", "data.sample=0", f"model={model}", "model.objective=hs",
            "model.net.embedding_dim=16", "trainer.max_epochs=3", "logger=none", "probe_words=[]",
            *(["model.net.buckets=5000"] if model == "fasttext" else []), *extra]  # fmt: skip


@pytest.mark.parametrize("model", ["skipgram", "cbow", "fasttext"])
def test_every_family_learns_planted_groups_with_hierarchical_softmax(corpus, tmp_path, model):
    path, groups = corpus
    metrics = train(compose_train(tmp_path, _overrides(path, model)))
    vectors = KeyedVectors.load_word2vec_format(str(tmp_path / "vectors.bin"), binary=True)  # gensim reads the export
    for group in groups:
        for word in group:
            near = [w for w, _ in vectors.most_similar(word, topn=len(group) - 1)]
            assert sum(w in group for w in near) >= len(group) - 2, (word, near)
    assert metrics["train/loss"] < math.log(2) * 3  # well below the untrained ln 2 per decision
    if model == "fasttext":
        loaded = load_facebook_model(str(tmp_path / "fasttext.bin"))
        assert loaded.hs == 1 and loaded.negative == 0
        assert np.allclose(loaded.wv[groups[0][0]], WordVectors.load_word2vec_format(tmp_path / "vectors.bin")[groups[0][0]], atol=1e-5)


def test_no_negatives_are_drawn_for_hierarchical_softmax(corpus, tmp_path):
    from hydra.utils import instantiate

    path, _ = corpus
    cfg = compose_train(tmp_path, _overrides(path, "skipgram"))
    data, model = instantiate(cfg.data), instantiate(cfg.model)
    data.follow_model(model)
    data.prepare()
    step = next(iter(data.train_set))
    assert all(update.negatives.numel() == 0 for update in step)


def test_cbow_alpha_follows_its_objective_unless_given(tmp_path):
    """CBOW's measured alphas: 0.1 with negative sampling, 0.05 (word2vec.c's) with HS; a given one stays."""
    alpha = {
        (): 0.1,
        ("model.objective=hs",): 0.05,
        ("model.objective=hs", "model.alpha=0.07"): 0.07,
    }
    for overrides, expected in alpha.items():
        assert compose_train(tmp_path, ["model=cbow", *overrides]).model.alpha == expected
    assert compose_train(tmp_path, ["model.objective=hs"]).model.alpha == 0.025  # skip-gram: word2vec's
