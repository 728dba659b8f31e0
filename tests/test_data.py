"""Corpus preparation and the batches the data module produces."""

import gzip
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch

from sgns.data import Vocabulary, Word2VecDataModule, prepare_corpus
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


@pytest.mark.parametrize("name, opener", [("bom.txt", open), ("bom.txt.gz", gzip.open)])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_word(tmp_path, name, opener):
    """Windows editors begin UTF-8 files with U+FEFF; the whitespace tokenizer keeps every other
    character, so the mark must go before it (it made '\\ufeffthe' a word of its own)."""
    with opener(tmp_path / name, "wt", encoding="utf-8-sig") as out:
        out.write("the cat sat\nthe dog sat\n")
    corpus = prepare_corpus(tmp_path / name, tokenizer="whitespace", min_count=1)
    assert sorted(corpus.vocab.words) == ["cat", "dog", "sat", "the"]
    assert corpus.vocab.counts[corpus.vocab.words.index("the")] == 2


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


def _module(path, example="pairs", **overrides):
    options = dict(path=str(path), min_count=1, window=3, negatives=4, shared_negatives=0, sample=0.0, batch_size=64,
                   update_size=None, chunk_tokens=500, val_fraction=0.0, seed=7)  # fmt: skip
    options.update(overrides)
    dm = Word2VecDataModule(**options)
    dm.example = example
    dm.setup("fit")
    return dm


def _flat(steps, field):
    """A field of every update of every step, concatenated: the epoch's examples in order."""
    return torch.cat([getattr(update, field) for step in steps for update in step])


def test_steps_have_the_right_shapes_and_dtypes(planted):
    path, _ = planted
    dm = _module(path)
    steps = list(dm.train_dataloader())
    assert len(steps) == len(dm.train_dataloader())  # len() is exact
    for step in steps[:-1]:
        (update,) = step
        assert update.center.shape == (64,) and update.context.shape == (64,) and update.negatives.shape == (64, 4)
        assert update.center.dtype == update.context.dtype == update.negatives.dtype == torch.long
        assert update.neg_weight == 1.0 and update.mask is None
    assert 0 < len(steps[-1][0]) <= 64
    vocab = len(dm.vocab)
    assert all(((t >= 0) & (t < vocab)).all() for step in steps for u in step for t in (u.center, u.context, u.negatives))


@pytest.mark.parametrize("pair_order", ["sides", "windows", "pairs"])
def test_an_epoch_covers_every_pair_once_in_shuffled_order(planted, pair_order):
    path, _ = planted
    dm = _module(path, window=1, pair_order=pair_order)
    centres, contexts = _flat(dm.train_dataloader(), "center"), _flat(dm.train_dataloader(), "context")
    ids = torch.from_numpy(np.array(dm.corpus.train.ids)).long()
    # window 1 without subsampling is deterministic: every neighbour pair within a sentence, both ways
    starts = dm.corpus.train.starts
    same = np.ones(len(ids) - 1, dtype=bool)
    same[starts[1:-1] - 1] = False
    left, right = ids[:-1][same], ids[1:][same]
    expected = Counter(zip(torch.cat([left, right]).tolist(), torch.cat([right, left]).tolist()))
    assert Counter(zip(centres.tolist(), contexts.tolist())) == expected
    assert not torch.equal(centres[: len(left)], left)  # shuffled


def test_an_epoch_of_windows_holds_every_centre_once_with_its_window(planted):
    """CBOW: window 1 without subsampling: every token of a sentence is a centre once, its window
    the words next to it in its sentence (slot 0: the left one, slot 1: the right one)."""
    path, _ = planted
    dm = _module(path, example="windows", window=1)
    steps = list(dm.train_dataloader())
    centres, contexts, masks = _flat(steps, "center"), _flat(steps, "context"), _flat(steps, "mask")
    ids = np.array(dm.corpus.train.ids)
    expected = Counter()
    for a, b in zip(dm.corpus.train.starts[:-1], dm.corpus.train.starts[1:]):
        line = ids[a:b].tolist()
        for i, word in enumerate(line):
            expected[(word, line[i - 1] if i else None, line[i + 1] if i + 1 < len(line) else None)] += 1
    got = Counter((c, ctx[0] if m[0] else None, ctx[1] if m[1] else None)
                  for c, ctx, m in zip(centres.tolist(), contexts.tolist(), masks.tolist()))  # fmt: skip
    assert got == expected
    assert masks.any(dim=1).all() and steps[0][0].context.shape[1] == 2
    assert 62 < int(steps[0][0].mask.sum()) <= 64  # a step of 64 pairs: whole windows, up to 64 of their words
    assert int(masks.sum()) == dm.train_set.pairs()  # the pairs of the windows, counted without making them
    for update in (u for step in steps for u in step):  # on the host, each update's window words also come flat
        assert torch.equal(update.words, update.context.masked_select(update.mask))
        assert torch.equal(update.sizes, update.mask.sum(dim=1))


@pytest.mark.parametrize("pair_order, runs", [("sides", (2.5, 3.1)), ("windows", (4.5, 6.1)), ("pairs", (1, 1.2))])
def test_pairs_come_side_by_side_window_by_window_or_one_by_one(planted, pair_order, runs):
    """sides: a side of a centre's window (reach 1..5: 3 pairs on average) is a run of one centre;
    windows: its whole window (6 on average, less in these 10-word sentences); pairs: runs of one."""
    path, _ = planted
    centres = _flat(_module(path, window=5, pair_order=pair_order).train_dataloader(), "center")
    mean_run = len(centres) / len(torch.unique_consecutive(centres))
    assert runs[0] < mean_run < runs[1]


def test_epochs_are_reproducible_and_differ(planted):
    path, _ = planted
    a, b = _module(path, sample=1e-2), _module(path, sample=1e-2)
    first = next(iter(a.train_set))[0]
    again = next(iter(b.train_set))[0]
    assert all(torch.equal(getattr(first, f), getattr(again, f)) for f in ("center", "context", "negatives"))
    a.train_set.set_epoch(1)
    assert not torch.equal(first.center, next(iter(a.train_set))[0].center)


def test_subsampling_thins_frequent_words_in_batches(tmp_path):
    path = tmp_path / "c.txt"
    rng = np.random.default_rng(0)
    words = np.where(rng.random(20_000) < 0.5, "the", np.array([f"w{i}" for i in rng.integers(0, 500, 20_000)]))
    path.write_text(" ".join(words) + "\n")
    plain = _flat(_module(path, batch_size=4096).train_dataloader(), "center")
    thinned = _flat(_module(path, batch_size=4096, sample=1e-3).train_dataloader(), "center")
    assert (plain == 0).float().mean() > 0.45  # "the" is word 0
    assert (thinned == 0).float().mean() < 0.25


def test_validation_steps_are_fixed(planted):
    path, _ = planted
    dm = _module(path, val_fraction=0.05)
    first = next(iter(dm.val_dataloader()))[0]
    again = next(iter(dm.val_dataloader()))[0]
    assert all(torch.equal(getattr(first, f), getattr(again, f)) for f in ("center", "context", "negatives"))
    assert len(dm.val_set) > 0


@pytest.mark.parametrize("name, value", [("window", 0), ("negatives", 0), ("batch_size", -3), ("min_count", 0), ("sample", -1.0),
                                         ("device", "gpu0"), ("update_size", 0), ("pair_order", "random")])  # fmt: skip
def test_nonsense_values_are_refused(name, value):
    with pytest.raises(Word2VecError, match=f"data.{name}"):
        Word2VecDataModule(**{name: value})


def _pairs(update) -> int:
    return len(update) if update.mask is None else int(update.mask.sum())


@pytest.mark.parametrize("example", ["pairs", "windows"])
@pytest.mark.parametrize("update_size, updates", [(None, 1), (64, 1), (16, 4), (20, 4)])
def test_steps_are_cut_into_updates_each_with_its_shared_negatives(planted, example, update_size, updates):
    """Steps of 64 pairs (a CBOW window counts its words) in updates of update_size pairs:
    ceil(64 / update_size) updates, each with its own K negatives [1, K] weighing k/K; the
    epoch's pair count is known without making the examples."""
    path, _ = planted
    dm = _module(path, example, sample=1e-2, shared_negatives=16, update_size=update_size)
    assert dm.updates_per_step == updates
    steps = list(dm.train_dataloader())
    pairs = dm.train_set.pairs()  # counted without making the examples
    assert sum(_pairs(u) for step in steps for u in step) == pairs and len(steps) == len(dm.train_set) == -(-pairs // 64)
    size = update_size or 64
    for k, step in enumerate(steps[:-1]):
        assert len(step) in (updates, updates - (example == "windows")) and len({u.negatives for u in step}) == len(step)
        assert all(u.negatives.shape == (1, 16) and u.neg_weight == 4 / 16 for u in step)
        if example == "pairs":
            assert [len(u) for u in step][:-1] == [size] * (updates - 1)
        else:  # whole windows: an update holds the windows that end within its pairs (so up to a window
            # more than update_size), and the steps end on the stream's marks
            assert all(0 < _pairs(u) < size + 4 * 3 for u in step)  # (the last: up to two windows more)
            done = sum(_pairs(u) for s in steps[: k + 1] for u in s)
            assert 64 * (k + 1) - 2 * 3 < done <= 64 * (k + 1)
    assert not torch.equal(steps[0][0].negatives, steps[0][-1].negatives if updates > 1 else steps[1][0].negatives)


@pytest.mark.parametrize(
    "update_size, world_size, expected",
    [(256, 1, 32), (2048, 1, 32), (2049, 1, 33), (8192, 1, 128), (4096, 2, 128), (None, 1, 32)],
)
def test_shared_negatives_auto_grow_with_the_whole_update(planted, update_size, world_size, expected):
    """data.shared_negatives=auto (the default): one shared negative per 64 of an update's pairs, all
    ranks' shares counted, never fewer than 32; 8,192 pairs with 32 diverged (docs/benchmarks.md)."""
    path, _ = planted
    dm = _module(path, shared_negatives="auto", update_size=update_size)  # (None: one update of the step's 64)
    assert Word2VecDataModule(path=str(path)).hparams.shared_negatives == "auto"
    dm.train_set.set_rank(0, world_size)
    step = next(iter(dm.train_dataloader()))
    assert all(u.negatives.shape == (1, expected) and u.neg_weight == 4 / expected for u in step)


@pytest.mark.parametrize("example", ["pairs", "windows"])
@pytest.mark.parametrize("shared", [16, 0])
def test_a_steps_joined_updates_are_its_updates_joined(planted, example, shared):
    """The step the data module hands over carries its updates already joined (``Step.joined``, taken
    by the compiled CPU update): exactly what ``Batch.join`` makes of them, edges included."""
    from sgns.models.base import Batch

    path, _ = planted
    dm = _module(path, example, sample=1e-2, shared_negatives=shared, update_size=16)
    for step in list(dm.train_dataloader())[:3]:
        expected = Batch.join(step)
        assert step.joined is not None and len(step) > 1
        for field in ("center", "context", "negatives", "mask", "words", "sizes", "offsets"):
            mine, theirs = getattr(step.joined, field), getattr(expected, field)
            assert (mine is None) == (theirs is None) and (mine is None or torch.equal(mine, theirs)), field
        assert step.joined.shares_negatives() == expected.shares_negatives() == bool(shared)


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("example", ["pairs", "windows"])
@pytest.mark.parametrize("device", _devices())
def test_batches_are_made_on_the_requested_device_with_the_same_statistics(planted, device, example):
    """data.device: every tensor of every step is born there; the examples are the same multiset
    (window 1, no subsampling: deterministic), the negatives come from the same noise law."""
    path, _ = planted
    on_cpu = list(_module(path, example, window=1, shared_negatives=16, device="cpu").train_dataloader())
    here = _module(path, example, window=1, shared_negatives=16, device=device)
    steps = list(here.train_dataloader())
    tensors = [t for step in steps for u in step for t in (u.center, u.context, u.negatives, u.mask) if t is not None]
    assert {t.device.type for t in tensors} == {torch.device(device).type}
    assert len(steps) == len(on_cpu) == len(here.train_set)
    examples = lambda ss: Counter(zip(_flat(ss, "center").tolist(), map(tuple, _flat(ss, "context").tolist())  # noqa: E731
                                      if example == "windows" else _flat(ss, "context").tolist()))  # fmt: skip
    assert examples(steps) == examples(on_cpu)
    drawn = _flat(steps, "negatives").cpu()
    assert ((drawn >= 0) & (drawn < len(here.vocab))).all()


def test_device_and_example_follow_the_trainer(planted):
    from sgns.models import CBOW
    from sgns.module import Word2VecModule

    path, _ = planted
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    dm = Word2VecDataModule(path=str(path), min_count=1, batch_size=64, val_fraction=0.0, device="auto")
    dm.trainer = trainer
    trainer.strategy.connect(Word2VecModule(CBOW, torch.optim.SGD))
    dm.setup("fit")
    assert dm.train_set.device == trainer.strategy.root_device and dm.example == "windows"


def test_steps_made_on_the_training_device_are_handed_over_as_they_are(planted):
    """Batches are made where training runs, so Lightning's transfer to the device hands a step
    over untouched (its own walk over every tensor of 16 updates cost 3 % of a CPU worker's time);
    a step made elsewhere is moved, every tensor of it."""
    path, _ = planted
    dm = _module(path, example="windows", window=1)
    step = next(iter(dm.train_dataloader()))
    assert dm.transfer_batch_to_device(step, torch.device("cpu"), 0) is step
    moved = dm.transfer_batch_to_device(step, torch.device("meta"), 0)
    assert all(u.center.is_meta and u.context.is_meta and u.mask.is_meta for u in moved)
