"""Corpus sources through datasets: formats, tokenizers, parallel passes, the on-disk cache."""

import gzip
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import sgns.data.memory
import sgns.data.prepare
from sgns.data.prepare import prepare_corpus
from sgns.data.sources import Source
from sgns.data.tokenize import TOKENIZERS
from sgns.errors import Word2VecError

LINES = ["The cat sat on the mat.", "", "A dog, a cat: the end!", "the dog sat on a log", "cats and dogs"] * 20


def _same(a, b) -> None:
    assert a.vocab.words == b.vocab.words and a.vocab.counts.tolist() == b.vocab.counts.tolist()
    assert np.array_equal(a.train.ids, b.train.ids) and np.array_equal(a.train.starts, b.train.starts)
    assert np.array_equal(a.val.ids, b.val.ids) and a.raw_tokens == b.raw_tokens


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


def test_json_lines_parquet_lists_and_globs_give_the_text_file_corpus(tmp_path, text_file):
    reference = prepare_corpus(text_file, min_count=2, cache_dir=tmp_path / "cache")
    half = len(LINES) // 2
    for i, part in enumerate([LINES[:half], LINES[half:]]):
        with gzip.open(tmp_path / f"part{i}.jsonl.gz", "wt") as out:
            out.writelines(json.dumps({"id": n, "body": line}) + "\n" for n, line in enumerate(part))
        pq.write_table(pa.table({"body": part, "n": list(range(len(part)))}), tmp_path / f"part{i}.parquet")
    for path in [str(tmp_path / "part*.jsonl.gz"), [str(tmp_path / "part0.parquet"), str(tmp_path / "part1.parquet")]]:
        corpus = prepare_corpus(source=Source(path=path, text_column="body"), min_count=2, cache_dir=tmp_path / "cache")
        _same(corpus, reference)


def test_missing_text_column_names_the_columns(tmp_path):
    pq.write_table(pa.table({"body": ["a b"]}), tmp_path / "x.parquet")
    with pytest.raises(Word2VecError, match=r"no column 'text'.*\['body'\]"):
        prepare_corpus(tmp_path / "x.parquet", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("path, message", [("nothing/*.txt", "no corpus file matches"), ("missing.txt", "not found")])
def test_unmatched_globs_and_missing_files_are_one_error(tmp_path, path, message):
    with pytest.raises(Word2VecError, match=message):
        prepare_corpus(str(tmp_path / path), cache_dir=tmp_path / "cache")


def test_tokenizers():
    line = "Hello, World 42 café-au-lait x_y"
    assert TOKENIZERS["lower"](line) == ["hello", "world", "42", "café", "au", "lait", "x", "y"]
    assert TOKENIZERS["text8"](line) == ["hello", "world", "café", "au", "lait", "x", "y"]
    assert TOKENIZERS["whitespace"](line) == ["Hello,", "World", "42", "café-au-lait", "x_y"]


def test_jieba_segments_chinese(tmp_path):
    pytest.importorskip("jieba")
    assert TOKENIZERS["jieba"]("我爱北京天安门，自然语言处理很有趣。") == ["我", "爱", "北京", "天安门", "自然语言", "处理", "很", "有趣"]
    path = tmp_path / "zh.txt"
    path.write_text("我爱北京天安门。\n北京是中国的首都。\n天安门在北京。\n" * 5, encoding="utf-8")
    corpus = prepare_corpus(path, tokenizer="jieba", min_count=5, cache_dir=tmp_path / "cache")
    assert corpus.vocab.words[0] == "北京" and corpus.vocab.counts[0] == 15
    assert {"天安门", "首都", "中国"} <= set(corpus.vocab.words)


def test_second_preparation_comes_from_the_memory_mapped_cache(tmp_path, text_file, monkeypatch):
    cache = tmp_path / "cache"
    first = prepare_corpus(text_file, min_count=2, val_fraction=0.1, cache_dir=cache)
    entries = list(cache.iterdir())
    assert len(entries) == 1 and not list(cache.glob("*.tmp-*"))

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(sgns.data.prepare, "_build", no_build)
    again = prepare_corpus(text_file, min_count=2, val_fraction=0.1, cache_dir=cache)
    _same(first, again)
    assert isinstance(again.train.ids, np.memmap) and isinstance(again.train.starts, np.memmap)
    monkeypatch.undo()
    prepare_corpus(text_file, min_count=3, val_fraction=0.1, cache_dir=cache)  # another setting: another entry
    text_file.write_text("\n".join(reversed(LINES)) + "\n")  # same name, other content: another entry
    prepare_corpus(text_file, min_count=2, val_fraction=0.1, cache_dir=cache)
    assert len(list(cache.iterdir())) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="preparation forks a child on Linux only")
def test_preparation_runs_in_a_child_and_hands_back_its_errors(tmp_path, text_file, monkeypatch):
    pids = tmp_path / "pids"
    build = sgns.data.prepare._build

    def recording_build(*args, **kwargs):
        pids.write_text(str(os.getpid()))
        return build(*args, **kwargs)

    monkeypatch.setattr(sgns.data.prepare, "_build", recording_build)
    corpus = prepare_corpus(text_file, min_count=2, cache_dir=tmp_path / "cache")
    assert int(pids.read_text()) != os.getpid() and corpus.train.n_tokens > 0  # built apart, opened here

    def failing(*args, **kwargs):
        raise Word2VecError("no word occurs at least min_count=99 times")

    monkeypatch.setattr(sgns.data.prepare, "_build", failing)
    with pytest.raises(Word2VecError, match="min_count=99"):
        prepare_corpus(text_file, min_count=99, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(sgns.data.prepare, "_build", lambda *args, **kwargs: os._exit(9))
    with pytest.raises(Word2VecError, match="exit code 9"):
        prepare_corpus(text_file, min_count=98, cache_dir=tmp_path / "cache")


def test_parallel_passes_match_one_process(tmp_path):
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(300)])
    path = tmp_path / "big.txt"
    path.write_text("".join(" ".join(words[rng.zipf(1.3, rng.integers(1, 30)) % 300]) + "\n" for _ in range(30_000)))
    options = dict(min_count=2, max_tokens=200_000, val_fraction=0.01, val_max_tokens=1_000, seed=3)
    one = prepare_corpus(path, num_proc=1, cache_dir=tmp_path / "a", **options)
    two = prepare_corpus(path, num_proc=2, cache_dir=tmp_path / "b", **options)
    _same(one, two)
    assert one.raw_tokens == 200_000
    assert 900 <= one.val.n_tokens <= 1_000 and one.train.n_tokens + one.val.n_tokens <= 200_000


def test_windows_cross_lines_only_when_asked(tmp_path, text_file):
    lines = prepare_corpus(text_file, min_count=1, cache_dir=tmp_path / "cache")
    stream = prepare_corpus(text_file, min_count=1, respect_lines=False, max_sentence_length=7, cache_dir=tmp_path / "cache")
    assert np.array_equal(lines.train.ids, stream.train.ids)
    assert len(lines.train.starts) - 1 == 80  # the non-empty lines
    n = stream.train.n_tokens
    assert stream.train.starts.tolist() == list(range(0, n, 7)) + [n]


def test_offline_hub_dataset_fails_at_once_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: offline
    started = time.perf_counter()
    with pytest.raises(Word2VecError) as error:
        prepare_corpus(source=Source(dataset="Salesforce/wikitext", config="wikitext-103-raw-v1"), cache_dir=tmp_path / "cache")
    assert time.perf_counter() - started < 15
    message = str(error.value)
    assert "\n" not in message and "Salesforce/wikitext" in message and "data.path" in message


def test_corrupt_archives_and_binary_files_are_refused(tmp_path):
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(b"some words here\n" * 100)[:40])
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\0\1\2" * 100)
    for path, message in [(broken, "cannot read corpus"), (binary, "binary")]:
        with pytest.raises(Word2VecError, match=message):
            prepare_corpus(path, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("suffix, opener", [(".bz2", "bz2"), (".xz", "lzma")])
def test_bz2_and_xz_text_give_the_plain_text_corpus(tmp_path, text_file, suffix, opener):
    import importlib

    packed = tmp_path / f"corpus.txt{suffix}"
    packed.write_bytes(importlib.import_module(opener).compress(text_file.read_bytes()))
    _same(prepare_corpus(packed, min_count=2, cache_dir=tmp_path / "cache"), prepare_corpus(text_file, min_count=2, cache_dir=tmp_path / "cache"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux's")
def test_released_pages_leave_this_process_and_read_back_intact(tmp_path):
    from sgns.data.memory import release_pages

    def resident_file_mb() -> float:
        line = next(line for line in open("/proc/self/status") if line.startswith("RssFile:"))
        return int(line.split()[1]) / 1024

    values = np.arange(16 << 20, dtype=np.int32)  # 64 MB
    values.tofile(tmp_path / "ids.bin")
    ids = np.memmap(tmp_path / "ids.bin", dtype=np.int32, mode="r")
    assert int(ids.sum(dtype=np.int64)) == int(values.sum(dtype=np.int64))  # every page resident
    before = resident_file_mb()
    release_pages(ids, 0, len(ids))
    assert before - resident_file_mb() > 48
    assert np.array_equal(ids[1000:2000], values[1000:2000])  # re-read from the file
    release_pages(values, 0, len(values))  # in-memory arrays: untouched
    assert values[123] == 123


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_record"])
def test_a_damaged_cache_entry_is_prepared_again(tmp_path, text_file, damage, caplog):
    """A truncated train_ids.bin crashed training (a segfault or an IndexError); a changed byte or a
    missing completion record went unnoticed. Each is found when the entry is opened, and rebuilt."""
    cache = tmp_path / "cache"
    reference = prepare_corpus(text_file, min_count=2, cache_dir=tmp_path / "reference")
    prepare_corpus(text_file, min_count=2, cache_dir=cache)
    entry = next(cache.iterdir())
    ids = entry / "train_ids.bin"
    if damage == "truncate":
        ids.write_bytes(ids.read_bytes()[: ids.stat().st_size // 2])
    elif damage == "flip":
        raw = bytearray(ids.read_bytes())
        raw[5] ^= 0x40
        ids.write_bytes(bytes(raw))
    else:
        (entry / "meta.json").unlink()
    with caplog.at_level("WARNING", logger="sgns"):
        again = prepare_corpus(text_file, min_count=2, cache_dir=cache)
    assert "is damaged" in caplog.text and "preparing it again" in caplog.text
    _same(reference, again)


def test_pages_are_never_released_past_the_mapping(tmp_path, monkeypatch):
    path = tmp_path / "ids.bin"
    np.arange(10_000, dtype=np.int32).tofile(path)
    ids = np.memmap(path, dtype=np.int32, mode="r")
    calls = []
    monkeypatch.setattr(sgns.data.memory, "_MADVISE", lambda address, length, advice: calls.append((address, length)))
    sgns.data.memory.release_pages(ids, 0, 50_000)  # a chunk whose sentence offsets promise more ids than the file holds
    start, end = ids.ctypes.data, ids.ctypes.data + ids.nbytes
    assert calls and all(start <= a and a + n <= end for a, n in calls)


def test_a_corpus_is_a_set_of_files_whatever_the_links(tmp_path, text_file, caplog):
    """A glob's ** followed `up -> ..` and read one file 41 times; a list naming a file twice, or a
    link to it, read it twice. Each real file counts once, and the log says what was skipped."""
    corpus = tmp_path / "dir"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("alpha beta\n")
    (corpus / "sub" / "b.txt").write_text("gamma delta\n")
    (corpus / "sub" / "up").symlink_to("..")
    (corpus / "alias.txt").symlink_to(corpus / "a.txt")
    with caplog.at_level("WARNING", logger="sgns"):
        files = Source(path=f"{corpus}/**/*.txt").files
    assert sorted(f.resolve() for f in files) == [corpus / "a.txt", corpus / "sub" / "b.txt"]
    assert "are skipped" in caplog.text
    caplog.clear()
    twice = Source(path=[str(text_file), str(text_file), str(corpus / "alias.txt"), str(corpus / "a.txt")]).files
    assert twice == [text_file, corpus / "alias.txt"] and "3 path(s) reach a file already read" not in caplog.text
    assert "2 path(s) reach a file already read" in caplog.text
    once = prepare_corpus(text_file, min_count=2, cache_dir=tmp_path / "cache")
    again = prepare_corpus([str(text_file), str(text_file)], min_count=2, cache_dir=tmp_path / "cache")
    assert again.raw_tokens == once.raw_tokens
