"""Bad input ends with one `error:` line and exit code 2, never a traceback, and leaves what an
earlier run wrote untouched. Most cases run in this process (the training entry's own error
handling, `one_line_errors`); a few go through `python train.py` and `sgns` as a user types them."""

import errno
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import compose_train, planted_corpus, start_train_py
from sgns import cli
from sgns.train import one_line_errors, train



def damage_the_largest_tensor(source: Path, target: Path) -> None:
    """A copy of a checkpoint with 16 bytes zeroed inside its largest tensor (the word vectors), the
    zip's structure intact: torch.load reads it without a word."""
    with zipfile.ZipFile(source) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda info: info.compress_size)
    data = bytearray(source.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[entry.header_offset + 26 : entry.header_offset + 30])
    middle = entry.header_offset + 30 + name_length + extra_length + entry.compress_size // 2
    data[middle : middle + 16] = bytes(16)
    target.write_bytes(data)
    assert torch.load(target, weights_only=False)["state_dict"]


def _overrides(corpus, *extra):
    """A small run's settings; ``overwrite=true`` unless ``extra`` says otherwise, because the cases
    run in a copy of a finished run (whose files a failing run must leave alone)."""
    overwrite = [] if any(e.startswith("overwrite=") for e in extra) else ["overwrite=true"]
    return [f"data.path={corpus}", "data.min_count=1", "data.sample=0", "data.batch_size=64", "trainer.max_epochs=1",
            "model.net.embedding_dim=16", "logger=none", "callbacks.progress_bar.refresh_rate=0", "probe_words=[]",
            *overwrite, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A finished small run (whose outputs a failing command must leave alone) and bad input files."""
    root = tmp_path_factory.mktemp("inputs")
    planted_corpus(root / "small.txt", sentences=200)
    train(compose_train(root / "run", _overrides(root / "small.txt")))
    other = root / "other"  # a checkpoint of another vocabulary
    (root / "abc.txt").write_text("alpha beta gamma\n" * 50)
    train(compose_train(other, _overrides(root / "abc.txt")))
    (other / "last.ckpt").rename(root / "other.ckpt")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02 abc \x00" * 100)
    (root / "utf16.txt").write_text("the cat sat on the mat\n" * 50, encoding="utf-16")  # as Windows' "Unicode"
    (root / "empty.txt").write_text("\n\n")
    (root / "truncated.ckpt").write_bytes(b"PK\x03\x04 not a whole zip")
    damage_the_largest_tensor(root / "run" / "last.ckpt", root / "damaged.ckpt")
    (root / "oneword.txt").write_text("alpha\nbeta\ngamma\n" * 100)
    text = (root / "small.txt").read_bytes()
    (root / "truncated.txt.gz").write_bytes(gzip.compress(text * 20)[:3000])
    (root / "plain.txt.gz").write_bytes(text)  # not gzip at all
    lines = text.decode().splitlines()
    with open(root / "bad.jsonl", "w") as out:
        out.writelines((json.dumps({"text": line}) if i != 20 else '{"text": "broken') + "\n" for i, line in enumerate(lines))
    with open(root / "numbers.jsonl", "w") as out:
        out.writelines(json.dumps({"text": i, "body": line}) + "\n" for i, line in enumerate(lines))
    pq.write_table(pa.table({"text": list(range(len(lines)))}), root / "numbers.parquet")
    os.mkfifo(root / "fifo")
    (root / "a_dir").mkdir()
    return root


CASES = [
    # the corpus
    (["data.path={in}/missing.txt"], "corpus file not found"),
    (["data.path={in}/empty.txt"], "corpus is empty"),
    (["data.path={in}/a_dir"], "corpus path is a directory"),
    (["data.path={in}/binary.txt"], "looks like a binary file"),
    (["data.path={in}/utf16.txt"], "is UTF-16 text (it begins with a UTF-16 byte-order mark); save it as UTF-8"),
    (["data.path={in}/fifo"], "is not a regular file"),
    (["data.path={in}/truncated.txt.gz"], "truncated.txt.gz to its end"),
    (["data.path={in}/plain.txt.gz"], "cannot read corpus"),
    (["data.path={in}/bad.jsonl", "data=jsonl"], "bad.jsonl:21: not a JSON line"),
    (["data.path={in}/numbers.jsonl", "data=jsonl"], "column 'text' of"),
    (["data.path={in}/numbers.parquet", "data=jsonl"], "holds int64, not text"),
    (["data.path={in}/numbers.jsonl", "data=jsonl", "data.text_column=words"], "has no column 'words'"),
    (["data.path={in}/nothing/*.txt"], "no corpus file matches"),
    (["data.path=[{in}/small.txt,{in}/numbers.parquet]"], "mix formats"),
    (["data.path=[]"], "data.path is an empty list"),
    (["data.dataset=some/dataset"], "either data.path"),
    (["data.min_count=100000"], "no word occurs at least min_count=100000 times"),
    (["data.path={in}/oneword.txt"], "gives no (centre, context) pairs to train on"),
    # data settings
    (["data.window=0"], "data.window must be an integer >= 1"),
    (["data.window=100000"], "data.window=100000 is wider than the longest sentence allowed"),
    (["data.negatives=0"], "data.negatives must be an integer >= 1"),
    (["data.negatives=100000"], "or raise data.shared_negatives: each of its K=32 negatives weighs k/K = 3125."),
    (["data.shared_negatives=many"], "data.shared_negatives must be auto or an integer >= 0, got 'many'"),
    (["data.shared_negatives=-1"], "data.shared_negatives must be auto or an integer >= 0, got -1"),
    (["data.batch_size=0"], "data.batch_size must be an integer >= 1"),
    (["data.batch_size=1.5"], "data.batch_size must be an integer >= 1"),
    (["data.sample=-0.1"], "data.sample must be a finite number >= 0"),
    (["data.sample=often"], "data.sample must be a finite number >= 0"),
    (["data.min_count=0"], "data.min_count must be an integer >= 1"),
    (["data.val_fraction=1.5"], "data.val_fraction must be a finite number >= 0 and < 1"),
    (["data.ns_exponent=inf"], "data.ns_exponent must be a finite number"),
    (["data.chunk_tokens=0"], "data.chunk_tokens must be an integer >= 1"),
    (["data.update_size=0"], "data.update_size must be null or an integer >= 1"),
    (["data.pair_order=random"], "data.pair_order must be one of"),
    (["data.device=gpu0"], "data.device must be 'auto'"),
    (["data.tokenizer=spacy"], "unknown tokenizer 'spacy'"),
    (["data.format=xml"], "data.format must be text, json, parquet or null"),
    (["data.respect_lines=3"], "data.respect_lines must be true or false"),
    (["data.phrases=-1"], "data.phrases must be an integer >= 0"),
    (["data.phrases=1", "data.phrase_scoring=pmi"], "data.phrase_scoring must be one of 'default', 'npmi'"),
    (["data.phrases=1", "data.phrase_threshold=0"], "data.phrase_threshold must be a finite number > 0"),
    (["data.phrases=1", "data.phrase_scoring=npmi", "data.phrase_threshold=1"], "data.phrase_threshold must be a finite number > -1 and < 1"),
    (["data.phrases=1", "data.phrase_min_count=0"], "data.phrase_min_count must be an integer >= 1"),
    (["data.phrases=1", "data.phrase_connectors=[[of]]"], "data.phrase_connectors must be a word or a list of words"),
    (["data.update_vocab=3"], "data.update_vocab must be true or false"),
    # init_from
    (["init_from={in}/missing.ckpt"], "missing.ckpt: file not found"),
    (["init_from={in}/truncated.ckpt"], "not a readable sgns checkpoint"),
    (["init_from={in}/run/last.ckpt", "model.net.embedding_dim=8"], "holds vectors of dimension 16; this run's model.net.embedding_dim is 8"),
    (["init_from={in}/run/last.ckpt", "model=cbow"], "was trained with model.net=SkipGram; this run has model.net=CBOW: its tables cannot carry over"),
    (["init_from={in}/run/last.ckpt", "model.objective=hs"], "was trained with model.objective=ns; this run has model.objective=hs"),
    (["init_from={in}/run/last.ckpt", "data.path={in}/abc.txt"], "the new corpus has fewer than 2 tokens of the earlier vocabulary: add data.update_vocab=true"),
    (["data.nonsense=1"], "Could not override 'data.nonsense'"),
    (["data=nonsense"], "Could not find 'data/nonsense'; choose one of: enwiki, jsonl, lee"),
    # model settings, checked before the corpus is read (the corpus here does not exist)
    (["model.compile=3", "data.path={in}/missing.txt"], "model.compile must be true or false"),
    (["model.step_bound=newton", "data.path={in}/missing.txt"], "model.step_bound must be one of"),
    (["model.step_bound=curvature", "model/optimizer=sparse_adam", "data.path={in}/missing.txt"], "model.step_bound=curvature cuts plain SGD's closed-form step: it needs model.optimizer=sgd"),
    (["model.compile=true", "model.fused=false", "model/optimizer=adamw", "trainer.devices=1", "data.path={in}/missing.txt"], "model.compile=true compiles the closed-form update: it needs model.fused=true"),
    (["model.compile=true", "trainer.devices=2", "data.path={in}/missing.txt"], "model.compile=true is for one device (trainer=gpu, or trainer.devices=1 on the CPU)"),
    (["model.net.embedding_dim=0", "data.path={in}/missing.txt"], "model.net.embedding_dim must be an integer >= 1"),
    (["model.alpha=nan", "data.path={in}/missing.txt"], "model.alpha must be a finite number > 0"),
    (["model.alpha=0"], "model.alpha must be a finite number > 0"),
    (["model.alpha=fast"], "model.alpha must be a finite number > 0"),
    (["model.min_alpha=0.5"], "model.min_alpha must be a finite number >= 0 and <= 0.025"),
    (["model/optimizer=sparse_adam", "model.optimizer.lr=-1"], "model.optimizer.lr must be a finite number > 0"),
    (["model=cbow", "model.net.cbow_mean=maybe"], "model.net.cbow_mean must be true or false"),
    (["model=glove"], "Could not find 'model/glove'; choose one of: cbow, fasttext, skipgram"),
    (["model=fasttext", "model.net.buckets=0"], "model.net.buckets must be an integer >= 1"),
    (["model=fasttext", "model.net.min_n=7"], "model.net.min_n (7) must not exceed model.net.max_n (6)"),
    (["+model.net.dims=3"], "model.net: SkipGram got an unexpected keyword argument 'dims'"),
    (["+model.optimizer.nesterovv=true"], "model.optimizer: SGD got an unexpected keyword argument 'nesterovv'"),
    (["model/optimizer=adamw", "model.fused=true"], "model.fused=true supports SparseAdam and plain SGD, not AdamW"),
    # the run
    (["seed=-1"], "seed must be an integer in [0, 4294967295], got -1"),
    (["probe_words=[[a,b]]"], "probe_words must be a word or a list of words, got [['a', 'b']]"),
    (["trainer.max_epochs=0"], "trainer.max_epochs must be an integer >= 1"),
    (["trainer.max_epochs=-5"], "trainer.max_epochs must be an integer >= 1"),
    (["trainer=gpu"], "cannot use trainer.accelerator=gpu"),
    (["trainer.devices=0"], "(devices=0): `Trainer(devices=0)` value is not a valid input using cpu accelerator.\n"),  # (no "try trainer=cpu" when it is cpu)
    (["overwrite=false"], "run holds an earlier run (last.ckpt, vectors.bin, vectors.txt), which this run would replace: "
                          "resume it with ckpt_path="),
    (["overwrite=false", "ckpt_path={in}/other.ckpt"], "run holds an earlier run"),
    (["overwrite=yes"], "overwrite must be true or false, got 'yes'"),
    (["trainer.precision=bf16-mixed"], "trainer.precision must be 32-true, 64-true or bf16-true"),
    (["trainer.precision=16"], "trainer.precision must be 32-true, 64-true or bf16-true"),
    (["trainer.precision=16-true", "model/optimizer=sparse_adam"], "got '16-true'"),
    # resuming
    (["ckpt_path={in}/missing.ckpt"], "checkpoint not found"),
    (["ckpt_path={in}/truncated.ckpt"], "is not a readable sgns checkpoint"),
    (["ckpt_path={in}/damaged.ckpt"], "damaged.ckpt is damaged: its record data/0 does not match the CRC-32"),
    (["ckpt_path={in}/a_dir"], "checkpoint not found"),
    (["ckpt_path={in}/other.ckpt", "trainer.max_epochs=2"], "different vocabulary"),
    (["ckpt_path={in}/run/last.ckpt", "model.net.embedding_dim=32"], "trained with model.net.embedding_dim=16 but this run has model.net.embedding_dim=32"),
    (["ckpt_path={in}/run/last.ckpt", "model=cbow"], "trained with model.net='SkipGram' but this run has model.net='CBOW'"),
    (["ckpt_path={in}/run/last.ckpt", "data.batch_size=128"], "trained with data.batch_size=64 but this run has data.batch_size=128"),
    (["ckpt_path={in}/run/last.ckpt", "data.window=3"], "trained with data.window=5 but this run has data.window=3"),
    (["ckpt_path={in}/run/last.ckpt", "data.pair_order=windows"], "trained with data.pair_order='sides' but this run has data.pair_order='windows'"),
    (["ckpt_path={in}/run/last.ckpt", "model.alpha=0.05"], "trained with model.alpha=0.025"),
    (["ckpt_path={in}/run/last.ckpt", "model/optimizer=sparse_adam"], "trained with model.optimizer='SGD'"),
    (["ckpt_path={in}/run/last.ckpt"], "has finished its 1 epoch(s) and this run has trainer.max_epochs=1: there is nothing to train"),
    (["ckpt_path={in}/run/last.ckpt", "trainer.max_epochs=-1", "+trainer.max_steps=1"], "steps and this run has trainer.max_steps=1: there is"),
    # evaluation and callbacks
    (["callbacks.word_vectors.analogies=[{in}/missing.txt]"], "evaluation file not found"),
    (["callbacks.word_vectors.word_pairs.ws353={in}/binary.txt"], "no 'word1<TAB>word2<TAB>score' lines"),
    (["callbacks.word_vectors.every_n_epochs=0"], "callbacks.word_vectors.every_n_epochs must be an integer >= 1"),
    (["callbacks.word_vectors.method=cos"], "callbacks.word_vectors.method must be one of"),
    (["callbacks.word_vectors.monitor=accuracy"], "callbacks.word_vectors.monitor must be one of"),
    (["callbacks.model_checkpoint.every_n_train_steps=0"], "every_n_train_steps must be null or an integer >= 1"),
    (["callbacks.throughput.every_n_steps=-1"], "callbacks.throughput.every_n_steps must be an integer >= 1"),
]


def _digest(run_dir: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.iterdir()) if p.is_file()}


def _fails_in_a_copy_of_the_run(inputs: Path, tmp_path: Path, capsys, *extra: str) -> str:
    """Train with ``extra`` in a copy of the finished run; the run must end with exit code 2, one
    ``error:`` line and no traceback, its files untouched. Returns stderr."""
    run = tmp_path / "run"
    shutil.copytree(inputs / "run", run)
    before = _digest(run)
    with pytest.raises(SystemExit) as stop:
        with one_line_errors():
            train(compose_train(run, _overrides(inputs / "small.txt", *extra)))
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [f"error: {err.split('error: ')[-1].strip()}"]
    assert "Traceback" not in err
    assert _digest(run) == before
    return err


@pytest.mark.parametrize("extra, message", CASES, ids=[" ".join(c[0]).replace("{in}/", "") for c in CASES])
def test_bad_input_is_one_line_and_leaves_earlier_outputs_alone(inputs, tmp_path, capsys, extra, message):
    err = _fails_in_a_copy_of_the_run(inputs, tmp_path, capsys, *[e.format(**{"in": inputs}) for e in extra])
    assert message in err, err


def test_a_full_disk_under_the_tensorboard_logger_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    """TensorBoard writes from a thread of its own; its error is raised again in the main thread."""
    from tensorboard.summary.writer import record_writer

    write = record_writer.RecordWriter.write
    calls = []

    def full_disk(self, data):
        calls.append(len(data))
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", full_disk)
    overrides = [o for o in _overrides(inputs / "small.txt", "trainer.max_epochs=3") if o != "logger=none"]
    with pytest.raises(SystemExit) as stop:
        with one_line_errors():
            train(compose_train(tmp_path / "run", [*overrides, "+logger.tensorboard.flush_secs=1"]))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "error: No space left on device (the disk is full)" in err, err
    assert "Traceback" not in err and "Exception in thread" not in err


def test_a_full_disk_while_a_checkpoint_is_written_is_one_line(inputs, tmp_path, capsys, monkeypatch):
    """torch's zip writer reports a failed write as a RuntimeError ("unexpected pos"), not an
    OSError: it is one line too, and the previous checkpoint stays."""

    def full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1052736 vs 1052630")

    monkeypatch.setattr(torch, "save", full_disk)
    err = _fails_in_a_copy_of_the_run(inputs, tmp_path, capsys)
    assert f"error: cannot write {tmp_path / 'run' / 'last.ckpt'}: torch.save failed" in err, err
    assert "the previous last.ckpt (if any) is intact" in err, err


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 10240000000 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.54 GiB. GPU 0 has a total capacity of 79.19 GiB"),
], ids=["cpu", "cuda"])  # fmt: skip
def test_running_out_of_memory_is_one_line(inputs, tmp_path, capsys, monkeypatch, failure):
    """data.shared_negatives=0 data.negatives=100000 asks for 10 GB of negatives per step: the
    allocator's failure was a traceback."""
    from sgns.data.sampling import AliasSampler

    def allocate(*args, **kwargs):
        raise failure

    monkeypatch.setattr(AliasSampler, "sample", allocate)
    err = _fails_in_a_copy_of_the_run(inputs, tmp_path, capsys)
    size = "9.54 GiB" if isinstance(failure, torch.OutOfMemoryError) else "10240000000 bytes"
    assert f"error: out of memory (tried to allocate {size}): lower data.batch_size" in err, err


@pytest.fixture(scope="module")
def vectors(inputs):
    return inputs / "run" / "vectors.bin"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["most-similar", "{v}", "g0w0", "--topn", "0"], "argument --topn: invalid integer >= 1 value: '0'"),
        (["most-similar", "{v}", "g0w0", "--topn", "-3"], "argument --topn"),
        (["evaluate", "{v}", "--restrict-vocab", "0"], "argument --restrict-vocab: invalid integer >= 1 value"),
        (["evaluate", "{v}", "--pairs", "men"], "--pairs men: give NAME=FILE or one of the bundled sets: ws353, simlex"),
        (["evaluate", "{v}", "--method", "cos"], "argument --method: invalid choice: 'cos'"),
        (["evaluate", "{v}", "--analogies", "{in}/missing.txt"], "evaluation file not found"),
        (["export", "{v}", "{in}/no/such/dir/v.txt"], "its directory {in}/no/such/dir does not exist"),
        (["evaluate", "{in}/huge.txt"], "the header promises 100,000,000 rows of 300 values"),
        (["evaluate", "{in}/nan.txt"], "row 2 ('b') holds NaN or infinity"),
        (["most-similar", "{in}/nan.txt", "a"], "row 2 ('b') holds NaN or infinity"),
        (["similarity", "{v}", "nosuchword", "g0w0"], "'nosuchword' is not in the vocabulary"),
        (["evaluate", "{in}/missing.bin"], "file not found"),
        (["evaluate", "{in}/truncated.ckpt"], "not a readable sgns checkpoint"),
        (["evaluate", "{in}/damaged.ckpt"], "damaged.ckpt is damaged: its record data/0 does not match the CRC-32"),
        (["frobnicate", "{v}"], "argument command: invalid choice: 'frobnicate'"),
        (["phrases", "{in}/run"], "its corpus was prepared without phrases (data.phrases=0)"),
        (["phrases", "{in}"], "holds neither phrases.tsv nor last.ckpt: not a run directory"),
        (["phrases", "{in}/missing"], "not found"),
        (["phrases", "{in}/small.txt"], "not a phrases file"),
        (["phrases", "{in}/run", "--top", "0"], "argument --top: invalid integer >= 1 value"),
    ],
)
def test_sgns_bad_input_is_one_line(inputs, vectors, capsys, argv, message):
    (inputs / "huge.txt").write_text("100000000 300\nabc 1 2\n")
    (inputs / "nan.txt").write_text("2 2\na 1 0\nb nan 1\n")
    with pytest.raises(SystemExit) as stop:
        sys.exit(cli.main([a.format(v=vectors, **{"in": inputs}) for a in argv]))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert message.format(**{"in": inputs}) in err, err


@pytest.mark.parametrize("args, message", [
    (["data.nonsense=1"], "error: Could not override 'data.nonsense'."),
    (["hydra.run.dir=/sys/sgns-run"], "error: /sys/sgns-run: Operation not permitted (choose a writable place"),
    (["hydra.run.dir={tmp}/file/run"], "error: {tmp}/file/run: Not a directory"),
    (["data.path=/nonexistent/corpus.txt"], "error: corpus file not found: /nonexistent/corpus.txt"),
])  # fmt: skip
def test_train_py_bad_input_is_one_line(tmp_path, args, message):
    """Through the real entry: Hydra's own errors (overrides, an unwritable run directory) too."""
    (tmp_path / "file").write_text("a file, not a directory\n")
    args = [a.format(tmp=tmp_path) for a in args]
    proc = start_train_py(*args, *([] if "hydra.run.dir" in args[0] else [f"hydra.run.dir={tmp_path / 'run'}"]))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and err.strip().splitlines()[-1].startswith(message.format(tmp=tmp_path)), err
    assert "Traceback" not in err


def test_ctrl_c_during_corpus_preparation_is_a_stop(tmp_path):
    """One `stopped:` line, exit 130, no half-written cache entry, no process left behind (it was a
    40-line traceback from the preparation's worker processes)."""
    corpus = tmp_path / "big.txt"
    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(5000)])
    with open(corpus, "w") as out:
        for _ in range(40):
            out.write("\n".join(" ".join(row) for row in words[rng.integers(0, 5000, (5000, 20))]) + "\n")
    cache = tmp_path / "cache"
    proc = start_train_py(f"data.path={corpus}", "data.num_proc=2", f"hydra.run.dir={tmp_path / 'run'}",
                     env={**os.environ, "SGNS_CACHE_DIR": str(cache)})  # fmt: skip
    deadline = time.time() + 60
    while not list(cache.glob("*.tmp-*/passes/*")) and time.time() < deadline:  # the workers are counting
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # (a fixed wait could let a fast preparation end first)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert err.splitlines()[-1].startswith("stopped: interrupted") and "Traceback" not in err, err[-2000:]
    assert not cache.exists() or not list(cache.iterdir())


def _train_py_output(*args: str) -> tuple[int, str]:
    """``python train.py ARGS`` with stdout and stderr in one stream, as a terminal shows them."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[1] / "train.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def test_the_error_line_starts_a_line_of_its_own_after_a_progress_bar(inputs, tmp_path):
    """It landed at the end of the progress bar's line."""
    code, out = _train_py_output(*_overrides(inputs / "small.txt", "model/optimizer=sgd", "model.alpha=1e30", "model.fused=true",
                                             "trainer.deterministic=true", f"hydra.run.dir={tmp_path}"),
                                 "callbacks.progress_bar.refresh_rate=1")  # fmt: skip
    assert code == 2 and "Epoch 0:" in out, out[-2000:]
    assert [line for line in out.split("\n") if "error:" in line] == [line for line in out.split("\n") if line.startswith("error: ")]
    assert any(line.startswith("error: training diverged") for line in out.split("\n")), out[-2000:]


def test_the_csv_logger_names_its_file_not_a_tensorboard_command(inputs, tmp_path):
    overrides = [o for o in _overrides(inputs / "small.txt", f"hydra.run.dir={tmp_path}") if o != "logger=none"]
    code, out = _train_py_output(*overrides, "logger=csv")
    assert code == 0, out[-2000:]
    assert "tensorboard" not in out.lower() and f"metrics: {tmp_path / 'csv' / 'metrics.csv'}" in out
    assert (tmp_path / "csv" / "metrics.csv").exists()


@pytest.mark.parametrize("command", [["train.py", "trainer.max_epochs=1"], ["-m", "sgns.cli", "evaluate", "x.bin"]], ids=["train.py", "sgns"])
def test_ctrl_c_while_starting_is_a_stop_not_a_traceback(tmp_path, command):
    """Ctrl-C during the imports (torch, Lightning: seconds) printed a 49-line traceback."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, *(str(root / c) if c.endswith(".py") else c for c in command)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.time() + 60
    while "libtorch" not in maps.read_text():  # torch is being imported
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("stopped: interrupted (Ctrl-C)"), err
