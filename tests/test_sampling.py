"""Subsampling, dynamic windows and negative sampling follow their formulas and distributions."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

from sgns.data.sampling import (
    AliasSampler,
    _reaches,
    cbow_windows,
    keep_probabilities,
    noise_distribution,
    skipgram_pair_count,
    skipgram_pairs,
    subsample,
)
from sgns.models import device

COUNTS = np.array([50_000, 20_000, 5_000, 1_000, 300, 40, 7, 5])


def test_keep_probability_is_the_c_and_gensim_formula():
    t, total = 1e-3, COUNTS.sum()
    f = COUNTS / total
    expected = np.minimum(1.0, np.sqrt(t / f) + t / f)
    assert np.allclose(keep_probabilities(COUNTS, t), expected)
    # word2vec.c writes it as (sqrt(c / (t T)) + 1) (t T) / c
    c = COUNTS[0]
    assert keep_probabilities(COUNTS, t)[0] == pytest.approx((math.sqrt(c / (t * total)) + 1) * (t * total) / c)
    assert (keep_probabilities(COUNTS, 0.0) == 1).all()


def test_subsampling_keeps_each_word_with_its_probability():
    keep = keep_probabilities(COUNTS, 1e-3)
    tokens = torch.from_numpy(np.repeat(np.arange(len(COUNTS)), 20_000))
    kept, _ = subsample(tokens, torch.zeros_like(tokens), torch.from_numpy(keep), torch.Generator().manual_seed(0))
    observed = np.bincount(kept.numpy(), minlength=len(COUNTS))
    for word, p in enumerate(keep):  # each word: 20,000 Bernoulli(p) draws
        assert stats.binomtest(int(observed[word]), 20_000, p).pvalue > 1e-4, (word, observed[word], p)


@pytest.mark.parametrize("exponent", [0.75, 0.5, 1.0])
def test_negatives_follow_unigram_power(exponent):
    probs = noise_distribution(COUNTS, exponent)
    assert np.allclose(probs, COUNTS**exponent / (COUNTS**exponent).sum())
    draws = AliasSampler(probs).sample((400_000,), torch.Generator().manual_seed(1)).numpy()
    observed = np.bincount(draws, minlength=len(COUNTS))
    assert stats.chisquare(observed, probs * len(draws)).pvalue > 1e-4
    # the same draws are clearly NOT from another exponent: the test can fail
    other = noise_distribution(COUNTS, exponent + 0.1)
    assert stats.chisquare(observed, other * len(draws)).pvalue < 1e-6


def test_alias_sampler_handles_a_large_skewed_vocabulary():
    counts = 1e6 / np.arange(1, 50_001)  # Zipf
    probs = noise_distribution(counts)
    draws = AliasSampler(probs).sample((2_000_000,), torch.Generator().manual_seed(2)).numpy()
    observed = np.bincount(draws, minlength=len(probs))
    assert observed[0] / len(draws) == pytest.approx(probs[0], rel=0.02)
    assert observed[:100].sum() / len(draws) == pytest.approx(probs[:100].sum(), rel=0.01)


def test_dynamic_window_distance_distribution():
    """A reach b ~ U{1..W} per centre: P(distance = d) ∝ (W - d + 1)."""
    W, n = 5, 200_000
    tokens = torch.arange(n)
    centres, contexts = skipgram_pairs(tokens, torch.zeros(n, dtype=torch.long), W, torch.Generator().manual_seed(3))
    distance = (contexts - centres).abs().numpy()
    observed = np.bincount(distance, minlength=W + 1)[1:]
    weights = np.array([W - d + 1 for d in range(1, W + 1)], dtype=float)
    assert stats.chisquare(observed, weights / weights.sum() * observed.sum()).pvalue > 1e-4
    assert len(centres) / n == pytest.approx(W + 1, rel=0.01)  # average pairs per centre ≈ W + 1
    # symmetric: as many pairs to the left as to the right
    assert ((contexts > centres).sum() / len(centres)).item() == pytest.approx(0.5, abs=0.005)


def test_windows_do_not_cross_sentences():
    tokens = torch.arange(30)
    sentence = torch.tensor([0] * 3 + [1] * 20 + [2] * 7)
    centres, contexts = skipgram_pairs(tokens, sentence, 5, torch.Generator().manual_seed(4))
    assert (sentence[centres] == sentence[contexts]).all()
    assert len(centres) > 0 and not (centres == contexts).any()


def test_maximal_window_gives_every_pair_within_reach():
    torch.manual_seed(0)
    tokens = torch.arange(6)
    centres, contexts = skipgram_pairs(tokens, torch.zeros(6, dtype=torch.long), 1, torch.Generator())
    assert sorted(zip(centres.tolist(), contexts.tolist())) == sorted(
        [(i, i + 1) for i in range(5)] + [(i + 1, i) for i in range(5)]
    )


@pytest.mark.parametrize("n, window", [(0, 5), (1, 5), (2, 1), (57, 5), (3000, 3), (20000, 10)])
def test_pair_count_equals_the_pairs_built_from_the_same_draws(n, window):
    g = torch.Generator().manual_seed(n)
    tokens = torch.randint(0, 50, (n,), generator=g)
    sentence = torch.sort(torch.randint(0, max(1, n // 7), (n,), generator=g)).values
    built = skipgram_pairs(tokens, sentence, window, torch.Generator().manual_seed(1))[0]
    assert skipgram_pair_count(sentence, window, torch.Generator().manual_seed(1)) == len(built)


@pytest.mark.parametrize("order", ["sides", "windows"])
def test_pairs_by_side_or_by_window_are_the_same_pairs_together(order):
    """sides / windows: the very pairs of the same reach draws; each side of a centre's window
    (each whole window) together, left to right; the sides (windows) in a shuffled order."""
    n, window = 3000, 5
    tokens = torch.arange(n)  # ids are positions
    sentence = torch.sort(torch.randint(0, 30, (n,), generator=torch.Generator().manual_seed(0))).values
    plain = skipgram_pairs(tokens, sentence, window, torch.Generator().manual_seed(1))
    centres, contexts = skipgram_pairs(tokens, sentence, window, torch.Generator().manual_seed(1), order)
    assert Counter(zip(centres.tolist(), contexts.tolist())) == Counter(zip(plain[0].tolist(), plain[1].tolist()))
    side = torch.sign(contexts - centres) if order == "sides" else torch.zeros_like(centres)
    starts = torch.ones(len(centres), dtype=torch.bool)
    starts[1:] = (centres[1:] != centres[:-1]) | (side[1:] != side[:-1])
    run = torch.cumsum(starts, 0) - 1
    assert int(run[-1]) + 1 == len(set(zip(centres.tolist(), side.tolist())))  # one run per side (window) of a centre
    count = torch.bincount(run)
    per_side = (window + 1) / 2  # a side's mean length (a window holds two, less at sentence ends)
    assert (count <= window * (1 if order == "sides" else 2)).all()
    assert 0.9 * per_side < count.float().mean() / (1 if order == "sides" else 2) <= per_side
    same_run = ~starts[1:]
    step = contexts[1:][same_run] - contexts[:-1][same_run]
    assert (step == 1).all() if order == "sides" else ((step == 1) | (step == 2)).all()  # left to right (over the centre)
    first = centres[starts]
    assert not torch.equal(first, first.sort().values)  # shuffled


@pytest.mark.parametrize("shuffle", [False, True])
def test_cbow_windows_are_the_pairs_of_the_same_draws_window_by_window(shuffle, monkeypatch):
    """Each CBOW window holds exactly the contexts that skip-gram pairs its centre with under the
    same reach draws (a centre without any, at a one-word sentence, left out); shuffled, the same
    windows in a random order. The CPU's compiled pass and the device path's torch form (run here
    on the CPU) give the very same windows."""
    n, window = 3000, 5
    tokens = torch.arange(n, dtype=torch.int32)  # ids are positions
    sentence = torch.sort(torch.randint(0, 400, (n,), generator=torch.Generator().manual_seed(0))).values
    centres, contexts = skipgram_pairs(tokens, sentence, window, torch.Generator().manual_seed(1))
    expected = {}
    for c, o in zip(centres.tolist(), contexts.tolist()):
        expected.setdefault(c, []).append(o)
    made = cbow_windows(tokens, sentence, window, torch.Generator().manual_seed(1), shuffle)
    got = {int(c): sorted(w[m].tolist()) for c, w, m in zip(*made)}
    assert got == {c: sorted(w) for c, w in expected.items()} and len(made[0]) == len(expected)
    offsets = torch.tensor([*range(-window, 0), *range(1, window + 1)])
    assert torch.equal(torch.where(made[2], made[0].unsqueeze(1) + offsets, 0), made[1].long())  # slot s: its offset
    assert (made[0].diff() > 0).all() != shuffle  # in order, or shuffled
    monkeypatch.setattr(device, "DEVICE_PATH_ON_CPU", True)
    torch_form = cbow_windows(tokens, sentence, window, torch.Generator().manual_seed(1), shuffle)
    assert all(torch.equal(a, b) for a, b in zip(made, torch_form))


def test_the_host_keeps_the_tokens_the_device_path_keeps(monkeypatch):
    """Subsampling's compiled pass on the host keeps exactly the tokens (and their sentence ids) that
    the torch form keeps from the same draws."""
    counts = np.array([5000, 900, 300, 40, 7, 2])
    keep_prob = torch.as_tensor(keep_probabilities(counts, 1e-2))
    tokens = torch.randint(0, len(counts), (20_000,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    sentence = torch.arange(20_000) // 13
    host = subsample(tokens, sentence, keep_prob, torch.Generator().manual_seed(3))
    monkeypatch.setattr(device, "DEVICE_PATH_ON_CPU", True)
    torch_form = subsample(tokens, sentence, keep_prob, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(host, torch_form))
    assert 0.05 < len(host[0]) / len(tokens) < 0.9


@pytest.mark.parametrize("n", [1, 2, 500])
def test_the_host_cuts_the_reaches_at_sentence_ends_as_the_device_path(n, monkeypatch):
    """Each centre's reach, cut at its sentence's ends (how many contexts it has on each side): the
    host's compiled pass and the torch form give the same from the same draws."""
    sentence = torch.sort(torch.randint(0, max(1, n // 6), (n,), generator=torch.Generator().manual_seed(n))).values
    host = _reaches(sentence, 5, torch.Generator().manual_seed(1))
    monkeypatch.setattr(device, "DEVICE_PATH_ON_CPU", True)
    torch_form = _reaches(sentence, 5, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(host, torch_form))
    assert n < 500 or 0 < int(host[0].sum()) < 5 * n
