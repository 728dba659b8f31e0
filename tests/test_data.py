"""Corpus preparation and the batches the data module produces."""

import gzip
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch

from sgns.corpus import Vocabulary, prepare_corpus
from sgns.data import SkipGramDataModule
from sgns.errors import Word2VecError

TEXT = "the cat sat on the mat\nthe dog sat\n\nA Cat, a DOG: the end\n"


def test_vocabulary_order_min_count_and_counts(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(TEXT)
    corpus = prepare_corpus(path, min_count=2)
    expected = Counter(TEXT.lower().replace(",", " ").replace(":", " ").split())
    assert corpus.vocab.words == ["the", "cat", "sat", "dog", "a"]  # by count, ties by first appearance
    assert corpus.vocab.counts.tolist() == [expected[w] for w in corpus.vocab.words]
    assert corpus.raw_tokens == sum(expected.values())
    # out-of-vocabulary tokens are dropped; sentences are the non-empty lines
    assert [corpus.vocab.words[i] for i in corpus.train.ids] == "the cat sat the the dog sat a cat a dog the".split()
    assert corpus.train.ids.dtype == np.int32
    assert np.diff(corpus.train.starts).tolist() == [4, 3, 5]


def test_max_vocab_size_max_tokens_and_gzip(tmp_path):
    path = tmp_path / "c.txt.gz"
    with gzip.open(path, "wt") as out:
        out.write(TEXT)
    corpus = prepare_corpus(path, min_count=1, max_vocab_size=2)
    assert corpus.vocab.words == ["the", "cat"]
    first = prepare_corpus(path, min_count=1, max_tokens=8)
    assert first.raw_tokens == 8 and first.vocab.counts.sum() == 8


def test_long_sentences_are_split(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(" ".join(["w"] * 25) + "\n")
    corpus = prepare_corpus(path, min_count=1, max_sentence_length=10)
    assert np.diff(corpus.train.starts).tolist() == [10, 10, 5]


def test_held_out_lines_are_not_trained_on(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("".join(f"line{i} common word\n" for i in range(200)))
    corpus = prepare_corpus(path, min_count=1, val_fraction=0.1)
    held_out = len(corpus.val.starts) - 1
    assert held_out == 20  # 10 % of 600 tokens, whole lines
    assert corpus.train.n_tokens == 3 * (200 - held_out)
    # the vocabulary is counted on training lines only: held-out "lineN" words are unknown
    assert len(corpus.vocab) == 2 + 200 - held_out
    assert corpus.val.n_tokens == 2 * held_out


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), ("", "empty"), ("a b c\n", "min_count")],
)
def test_bad_corpora_raise_one_clear_error(tmp_path, content, message):
    path = tmp_path / "c.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(Word2VecError, match=message):
        prepare_corpus(path, min_count=5)


def test_vocabulary_file_round_trip(tmp_path):
    vocab = Vocabulary(["the", "cat"], np.array([5, 2]))
    vocab.save(tmp_path / "vocab.txt")
    assert (tmp_path / "vocab.txt").read_text() == "the 5\ncat 2\n"
    again = Vocabulary.load(tmp_path / "vocab.txt")
    assert again.words == vocab.words and again.counts.tolist() == [5, 2]


def _module(path, **overrides):
    options = dict(path=str(path), min_count=1, window=3, negatives=4, sample=0.0, batch_size=64,
                   chunk_tokens=500, val_fraction=0.0, seed=7)  # fmt: skip
    options.update(overrides)
    dm = SkipGramDataModule(**options)
    dm.setup("fit")
    return dm


def test_batches_have_the_right_shapes_and_dtypes(planted):
    path, _ = planted
    dm = _module(path)
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader())  # len() is exact
    for centre, context, negatives in batches[:-1]:
        assert centre.shape == (64,) and context.shape == (64,) and negatives.shape == (64, 4)
        assert centre.dtype == context.dtype == negatives.dtype == torch.long
    assert 0 < len(batches[-1][0]) <= 64
    vocab = len(dm.vocab)
    assert all(((t >= 0) & (t < vocab)).all() for b in batches for t in b)


@pytest.mark.parametrize("pair_order", ["sides", "pairs"])
def test_an_epoch_covers_every_pair_once_in_shuffled_order(planted, pair_order):
    path, _ = planted
    dm = _module(path, window=1, pair_order=pair_order)
    centres = torch.cat([b[0] for b in dm.train_dataloader()])
    contexts = torch.cat([b[1] for b in dm.train_dataloader()])
    ids = torch.from_numpy(np.array(dm.corpus.train.ids)).long()
    # window 1 without subsampling is deterministic: every neighbour pair within a sentence, both ways
    starts = dm.corpus.train.starts
    same = np.ones(len(ids) - 1, dtype=bool)
    same[starts[1:-1] - 1] = False
    left, right = ids[:-1][same], ids[1:][same]
    expected = Counter(zip(torch.cat([left, right]).tolist(), torch.cat([right, left]).tolist()))
    assert Counter(zip(centres.tolist(), contexts.tolist())) == expected
    assert not torch.equal(centres[: len(left)], left)  # shuffled


@pytest.mark.parametrize("pair_order", ["sides", "pairs"])
def test_pairs_come_side_by_side_or_one_by_one(planted, pair_order):
    """sides: a side of a centre's window (reach 1..5: 3 pairs on average) is a run of one centre."""
    path, _ = planted
    centres = torch.cat([b[0] for b in _module(path, window=5, pair_order=pair_order).train_dataloader()])
    mean_run = len(centres) / len(torch.unique_consecutive(centres))
    assert mean_run > 2.5 if pair_order == "sides" else mean_run < 1.2


def test_epochs_are_reproducible_and_differ(planted):
    path, _ = planted
    a, b = _module(path, sample=1e-2), _module(path, sample=1e-2)
    first = [t.clone() for t in next(iter(a.train_set))]
    assert all(torch.equal(x, y) for x, y in zip(first, next(iter(b.train_set))))
    a.train_set.set_epoch(1)
    assert not torch.equal(first[0], next(iter(a.train_set))[0])


def test_subsampling_thins_frequent_words_in_batches(tmp_path):
    path = tmp_path / "c.txt"
    rng = np.random.default_rng(0)
    words = np.where(rng.random(20_000) < 0.5, "the", np.array([f"w{i}" for i in rng.integers(0, 500, 20_000)]))
    path.write_text(" ".join(words) + "\n")
    plain = torch.cat([b[0] for b in _module(path, batch_size=4096).train_dataloader()])
    thinned = torch.cat([b[0] for b in _module(path, batch_size=4096, sample=1e-3).train_dataloader()])
    assert (plain == 0).float().mean() > 0.45  # "the" is word 0
    assert (thinned == 0).float().mean() < 0.25


def test_validation_pairs_are_fixed(planted):
    path, _ = planted
    dm = _module(path, val_fraction=0.05)
    first = [t.clone() for t in next(iter(dm.val_dataloader()))]
    assert all(torch.equal(x, y) for x, y in zip(first, next(iter(dm.val_dataloader()))))
    assert len(dm.val_set) > 0


@pytest.mark.parametrize("name, value", [("window", 0), ("negatives", 0), ("batch_size", -3), ("min_count", 0), ("sample", -1.0),
                                         ("device", "gpu0"), ("update_pairs", 0), ("negative_groups", 0),
                                         ("pair_order", "random")])  # fmt: skip
def test_nonsense_values_are_refused(name, value):
    with pytest.raises(Word2VecError, match=f"data.{name}"):
        SkipGramDataModule(**{name: value})


@pytest.mark.parametrize("update_pairs, updates", [(None, 1), (64, 1), (16, 4), (20, 4)])
def test_shared_negatives_one_draw_per_batch_and_exact_pair_count(planted, update_pairs, updates):
    """K shared negatives per update: a batch of 64 pairs in updates of update_pairs carries
    K x ceil(64 / update_pairs) of them (the short last batch too: the model splits every batch alike)."""
    path, _ = planted
    dm = _module(path, sample=1e-2, shared_negatives=16, update_pairs=update_pairs)
    assert dm.updates == updates
    batches = list(dm.train_dataloader())
    pairs = dm.train_set.pairs()  # counted without building the pairs
    assert sum(len(b[0]) for b in batches) == pairs and len(batches) == len(dm.train_set) == -(-pairs // 64)
    for centre, context, negatives in batches:
        assert negatives.shape == (16 * updates,) and negatives.dtype == centre.dtype == context.dtype == torch.long
    assert not torch.equal(batches[0][2], batches[1][2])


def test_negative_groups_draw_k_for_each_group_of_every_update(planted):
    """negative_groups=3, K=4, batches of 64 in updates of 16: [4 updates x 3 groups, 4] per batch."""
    path, _ = planted
    batches = list(_module(path, shared_negatives=4, negative_groups=3, update_pairs=16).train_dataloader())
    assert all(b[2].shape == (12, 4) for b in batches) and len(batches) > 1
    assert not torch.equal(batches[0][2], batches[1][2])


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_batches_are_made_on_the_requested_device_with_the_same_statistics(planted, device):
    """data.device: every tensor of every batch is born there; the pairs are the same multiset
    (window 1, no subsampling: deterministic), the negatives come from the same noise law."""
    path, _ = planted
    on_cpu = list(_module(path, window=1, shared_negatives=16, device="cpu").train_dataloader())
    here = _module(path, window=1, shared_negatives=16, device=device)
    batches = list(here.train_dataloader())
    assert {t.device.type for b in batches for t in b} == {torch.device(device).type}
    assert len(batches) == len(on_cpu) == len(here.train_set)
    pairs = lambda bs: Counter(zip(torch.cat([b[0] for b in bs]).tolist(), torch.cat([b[1] for b in bs]).tolist()))  # noqa: E731
    assert pairs(batches) == pairs(on_cpu)
    drawn = torch.cat([b[2] for b in batches]).cpu()
    assert ((drawn >= 0) & (drawn < len(here.vocab))).all()


def test_device_auto_follows_the_trainer(planted):
    path, _ = planted
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    dm = SkipGramDataModule(path=str(path), min_count=1, batch_size=64, val_fraction=0.0, device="auto")
    dm.trainer = trainer
    dm.setup("fit")
    assert dm.train_set.device == trainer.strategy.root_device
    with pytest.raises(Word2VecError, match="data.num_workers=2 needs batches made on the CPU"):
        SkipGramDataModule(path=str(path), min_count=1, num_workers=2, device="cuda:0").setup("fit")
