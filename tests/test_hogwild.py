"""Lock-free workers on the CPU (sgns/hogwild.py): shared tables, shares of the chunks, one
schedule for all, learning, and failures that end the run with one line."""

import os
import re
import signal
import time

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from conftest import compose_train, planted_corpus, start_train_py
from sgns.data.batches import Epochs, generator
from sgns.data.prepare import prepare_corpus
from sgns.data.sampling import AliasSampler, keep_probabilities, noise_distribution
from sgns.errors import Word2VecError
from sgns.hogwild import WorkerPool, default_workers, share_parameters, share_tables
from sgns.train import train


def _private_dirty_kb() -> int:
    with open("/proc/self/smaps_rollup") as smaps:
        return int(re.search(r"^Private_Dirty:\s+(\d+) kB", smaps.read(), re.M).group(1))


@pytest.mark.parametrize("converted", [False, True])
def test_the_tables_are_shared_not_copied(converted):
    """A forked worker's writes land in the trainer's own table, and writing all of a 64 MB table
    leaves the worker no private copy of it (copy-on-write memory would). The tables are moved into
    shared memory when they are made; converted since (trainer.precision=64-true converts them
    when training starts), they are moved again."""
    net = torch.nn.Embedding(80_000 if converted else 160_000, 100)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    if converted:
        share_parameters(net)
        net.double()
    share_tables(net, optimizer)
    table = net.weight
    assert table is optimizer.param_groups[0]["params"][0]  # the same parameter, its storage moved
    before = table.detach().clone()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # (one thread, as a worker: OpenMP's thread pool does not survive a fork)
        torch.set_num_threads(1)
        dirty = _private_dirty_kb()
        with torch.no_grad():
            table.add_(1.0)  # every row
        os.write(write, str(_private_dirty_kb() - dirty).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    grown_kb = int(os.read(read, 100))
    assert torch.equal(table.detach(), before + 1.0)
    assert grown_kb < 8_000, grown_kb  # the table is 62,500 kB


def test_sparse_adams_moments_are_shared_too():
    net = torch.nn.Embedding(10, 4)
    optimizer = torch.optim.SparseAdam(net.parameters(), lr=0.1)
    share_tables(net, optimizer)
    state = optimizer.state[net.weight]
    assert state["step"] == 0 and not state["exp_avg"].any()
    pid = os.fork()
    if pid == 0:
        torch.set_num_threads(1)
        state["exp_avg"].add_(2.0)
        os._exit(0)
    os.waitpid(pid, 0)
    assert (state["exp_avg"] == 2.0).all()


@pytest.fixture(scope="module")
def epochs(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "planted.txt"
    planted_corpus(path, sentences=3000)
    corpus = prepare_corpus(path, min_count=1, val_fraction=0.0)

    def make(example="pairs"):
        return Epochs(corpus.train, keep_probabilities(corpus.vocab.counts, 1e-3), AliasSampler(noise_distribution(corpus.vocab.counts)),
                      example, window=3, negatives=5, shared_negatives=8, batch_size=256, update_size=64, chunk_tokens=2000,
                      seed=1)  # fmt: skip

    return make


def _examples(steps):
    """(centre, first context word) of every example of ``steps``."""
    updates = [u for step in steps for u in step]
    contexts = [u.context[:, 0] if u.context.dim() > 1 else u.context for u in updates]
    return list(zip(torch.cat([u.center for u in updates]).tolist(), torch.cat(contexts).tolist()))


def _claiming(epochs, example, claims=None, skips=(0, 0, 0)):
    """Three workers of epoch 1 sharing one ``Claims`` (one process: the lock never waits)."""
    shares = []
    for worker in range(3):
        share = epochs(example)
        share.claims = claims or (shares[0].claims if shares else None)
        share.set_share(worker, 3)
        share.set_epoch(1, skip=skips[worker])
        shares.append(share)
    return shares


def _turns(iterators, rounds, seen):
    """Round robin: workers 0 and 1 train a step a turn, worker 2 (a busy core) every third turn."""
    trained = [0, 0, 0]
    for turn in range(rounds):
        for worker, steps in enumerate(iterators):
            if worker == 2 and turn % 3:
                continue
            step = next(steps, None)
            if step is not None:
                seen += _examples([step])
                trained[worker] += 1
    return trained


@pytest.mark.parametrize("example", ["pairs", "windows"])
def test_workers_claim_every_epochs_chunks_and_together_see_each_example_once(epochs, example):
    """Workers claim the epoch's chunks one at a time: together they see one process's examples
    once, a slower worker claims fewer chunks, no worker's steps exceed the epoch's (its loader's
    length), and the next epoch is dealt anew."""
    whole = epochs(example)
    whole.set_epoch(1)
    expected = sorted(_examples(whole))
    shares = _claiming(epochs, example)
    seen = []
    trained = _turns([iter(share) for share in shares], 10**6, seen)
    assert sorted(seen) == expected
    owner = shares[0].claims.owner.tolist()
    assert sorted(set(owner)) == [0, 1, 2] and owner.count(2) < min(owner.count(0), owner.count(1))
    assert all(0 < n <= len(share) == len(whole) for n, share in zip(trained, shares))
    assert len(whole) <= sum(trained) < len(whole) + 3  # (each worker's last step may be short)
    shares[0].set_epoch(2)
    next(iter(shares[0]))
    assert shares[0].claims.state()["epoch"] == 2 and shares[0].claims.state()["owner"] == [0]


@pytest.mark.parametrize("example", ["pairs", "windows"])
def test_a_resumed_epoch_replays_each_workers_claims_from_its_position(epochs, example):
    """A checkpoint mid-epoch holds each worker's position and the claims (read after the
    positions): workers resumed from it replay their claims from their positions and claim on,
    and the epoch's examples are each seen once over both runs."""
    whole = epochs(example)
    whole.set_epoch(1)
    shares = _claiming(epochs, example)
    seen = []
    positions = _turns([iter(share) for share in shares], 4, seen)
    state = shares[0].claims.state()
    assert 0 < len(state["owner"]) < shares[0].n_chunks
    resumed = _claiming(epochs, example, skips=positions)
    resumed[0].claims.load(state)
    _turns([iter(share) for share in resumed], 10**6, seen)
    assert sorted(seen) == sorted(_examples(whole))


def test_workers_draw_their_own_negatives_and_one_process_draws_as_before(epochs):
    """Each worker counts its steps from 0: its step i must not draw the negatives of another
    worker's step i (they did: the same K rows twice over, and fastText lost 0.05 of WS353 with
    two workers). The draws stay a function of (seed, epoch, worker, step), so a resumed worker
    draws them again; one process keeps the key it had, so its runs repeat bit for bit."""
    firsts = [next(iter(share)) for share in _claiming(epochs, "pairs")]
    negatives = [torch.cat([u.negatives for u in step]) for step in firsts]
    assert all(not torch.equal(negatives[0], other) for other in negatives[1:])
    again = _claiming(epochs, "pairs")[1]
    assert torch.equal(torch.cat([u.negatives for u in next(iter(again))]), negatives[1])
    one = epochs()
    one.set_epoch(1)
    key = generator(one.seed, 1, 1 << 40, 0)
    first = next(iter(one))
    assert torch.equal(first[0].negatives, one.noise.sample((len(first), one.shared_negatives), key)[:1])


def test_a_small_corpus_is_cut_into_chunks_for_every_worker(epochs):
    share = epochs()
    share.chunk_sentences = share._chunk_bounds(10**9)  # one chunk, as the embedded corpus has
    share.set_share(1, 2)
    assert share.n_chunks >= 2 * Epochs.CHUNKS_PER_WORKER - 1 and len(share) > 0


def test_alpha_decays_with_all_workers_steps():
    pool = WorkerPool(3)
    pool.total = 300
    pool.trained.copy_(torch.tensor([40, 50, 60]))
    assert pool.progress() == (150, 300)


def test_the_default_is_one_worker_per_core_and_deterministic_is_one(tmp_path):
    cores = len(os.sched_getaffinity(0))
    assert default_workers(False) == cores and default_workers(True) == 1
    assert compose_train(tmp_path).trainer.devices == cores
    assert compose_train(tmp_path, ["trainer.deterministic=true"]).trainer.devices == 1
    assert compose_train(tmp_path, ["trainer=gpu"]).trainer.strategy == "auto"


def _small(corpus, *extra):
    return [f"data.path={corpus}", "data.min_count=1", "data.sample=0", "data.batch_size=256", "data.update_size=64",
            "model.net.embedding_dim=16", "logger=none", "probe_words=[]", *extra]  # fmt: skip


@pytest.mark.parametrize("model", ["skipgram", "cbow", "fasttext"])
def test_two_workers_learn_planted_groups_and_decay_alpha_to_its_end(planted, tmp_path, model):
    path, groups = planted
    metrics = train(compose_train(tmp_path, _small(path, "trainer.devices=2", f"model={model}", "trainer.max_epochs=3",
                                                   *(["model.net.buckets=5000"] if model == "fasttext" else []))))  # fmt: skip
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["hogwild"]
    assert state["workers"] == 2 and min(state["trained"]) > 0  # both trained (the trainer's own process, with Lightning beside its steps, claims fewer chunks)
    # the decay counts both workers' steps: alpha ends near min_alpha, not half-way (one worker's count)
    assert metrics["train/alpha"] < 0.1 * (0.1 if model == "cbow" else 0.025)
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "vectors.txt"))
    for group in groups:
        for word in group:
            assert {w for w, _ in kv.most_similar(word, topn=len(group) - 1)} == set(group) - {word}, word


def test_sparse_adam_trains_with_two_workers(planted, tmp_path):
    path, groups = planted
    train(compose_train(tmp_path, _small(path, "trainer.devices=2", "model/optimizer=sparse_adam", "trainer.max_epochs=2")))
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "vectors.txt"))
    word = groups[0][0]
    assert {w for w, _ in kv.most_similar(word, topn=4)} == set(groups[0]) - {word}


@pytest.mark.parametrize("extra, message", [
    (["model/optimizer=adamw", "trainer.devices=2"], "model.optimizer=AdamW updates every row at every step, so 2 lock-free workers"),
    (["trainer.deterministic=true", "trainer.devices=2"], "trainer.deterministic=true trains one worker"),
    (["trainer.accelerator=gpu", "trainer.devices=2"], None),  # (no GPU here: Lightning's own line)
])  # fmt: skip
def test_what_workers_cannot_train_is_refused_before_the_corpus_is_read(tmp_path, extra, message):
    with pytest.raises(Exception) as error:
        train(compose_train(tmp_path, ["data.path=/nonexistent.txt", *extra]))
    if message:
        assert isinstance(error.value, Word2VecError) and message in str(error.value)
    assert not (tmp_path / "last.ckpt").exists()


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "planted.txt"
    planted_corpus(path, sentences=12000)
    return path


def _long(corpus, run_dir, *extra):
    return [*_small(corpus, "data.batch_size=128", "data.update_size=64", "trainer.devices=2", "trainer.max_epochs=2",
                    "callbacks.progress_bar.refresh_rate=0", "callbacks.word_vectors.every_n_epochs=100",
                    "callbacks.model_checkpoint.every_n_train_steps=20", f"hydra.run.dir={run_dir}"), *extra]  # fmt: skip


def _running(pid):
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return not stat.read().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return False


def _worker_of(proc, timeout=120):
    """The pid of one of the run's forked workers that is training, once one is."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as children:
            training = [int(c) for c in children.read().split() if _running(int(c))]
        if training:
            return training[0]
        time.sleep(0.02)
    raise AssertionError("no worker started")


def _gone(pid, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline and _running(pid):
        time.sleep(0.05)
    return not _running(pid)


def test_a_worker_killed_with_9_ends_the_run_with_one_line_and_a_resumable_checkpoint(long_corpus, tmp_path):
    proc = start_train_py(*_long(long_corpus, tmp_path))
    while not (tmp_path / "last.ckpt").exists():  # a step checkpoint first
        assert proc.poll() is None
        time.sleep(0.05)
    os.kill(_worker_of(proc), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert re.search(r"worker 1 of 2 \(pid \d+\) was killed by SIGKILL .* resume with ckpt_path=", lines[0]), lines[0]
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["hogwild"]["workers"] == 2
    resumed = start_train_py(*_long(long_corpus, tmp_path, f"ckpt_path={tmp_path / 'last.ckpt'}"))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    assert KeyedVectors.load_word2vec_format(str(tmp_path / "vectors.bin"), binary=True).vector_size == 16


def test_a_kill_9_of_the_trainer_takes_its_workers_with_it(long_corpus, tmp_path):
    proc = start_train_py(*_long(long_corpus, tmp_path))
    worker = _worker_of(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _gone(worker), "a worker outlived its trainer"


def test_ctrl_c_stops_the_workers_and_the_resumed_run_trains_what_was_left(long_corpus, tmp_path):
    """A Ctrl-C mid-epoch: every worker stops between steps, the checkpoint holds their positions
    and claims, and the resumed run trains the steps that were left: together the run's steps once
    (the workers' claims differ from run to run, and each worker's last step of an epoch may be
    short, so as many as one process's steps, and at most one more a worker and epoch)."""
    whole = tmp_path / "whole"
    done = start_train_py(*_long(long_corpus, whole))
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-2000:]
    steps = sum(torch.load(whole / "last.ckpt", weights_only=True)["hogwild"]["trained"])

    parts = tmp_path / "parts"
    proc = start_train_py(*_long(long_corpus, parts))
    _worker_of(proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    stopped = torch.load(parts / "last.ckpt", weights_only=True)["hogwild"]
    assert 0 < sum(stopped["trained"]) < steps
    command = err.split("Resume with: ")[1].strip().split()
    resumed = start_train_py(*command[2:])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-2000:]
    trained = sum(torch.load(parts / "last.ckpt", weights_only=True)["hogwild"]["trained"])
    assert abs(trained - steps) <= 2 * (2 - 1), (trained, steps)  # (2 epochs, 2 workers)
    ours = KeyedVectors.load_word2vec_format(str(parts / "vectors.bin"), binary=True)
    assert np.isfinite(ours.vectors).all()
    assert {w for w, _ in ours.most_similar("g0w0", topn=4)} == {"g0w1", "g0w2", "g0w3", "g0w4"}


def test_a_divergence_stops_the_run_with_one_line_and_never_checkpoints_a_worker_s_nan(long_corpus, tmp_path):
    """Workers write on while the trainer saves a step checkpoint: it is written from a copy that is
    checked, so NaN that a worker writes meanwhile never reaches the file."""
    done = start_train_py(*_long(long_corpus, tmp_path, "trainer.max_epochs=1"))
    assert done.wait(timeout=300) == 0
    proc = start_train_py(*_long(long_corpus, tmp_path, "model.alpha=1e30", "callbacks.model_checkpoint.every_n_train_steps=1",
                                 "overwrite=true"))  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err, err[-2000:]
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert "error: training diverged" in err or "NaN/inf" in err, err[-2000:]
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values())


@pytest.mark.parametrize("error", [MemoryError, ZeroDivisionError])
def test_a_workers_error_reaches_the_trainer(planted, tmp_path, monkeypatch, error):
    """An error of the user's kind in a worker (memory) is raised in the trainer as itself, so it
    ends as its one line; a bug keeps the worker's traceback."""
    from sgns.module import Word2VecModule
    from sgns.train import user_error

    trainer, original = os.getpid(), Word2VecModule.train_updates

    def fails_in_a_worker(self, *args, **kwargs):
        if os.getpid() != trainer:
            raise error("in a worker")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Word2VecModule, "train_updates", fails_in_a_worker)
    path, _ = planted
    with pytest.raises((error, RuntimeError)) as raised:
        train(compose_train(tmp_path, _small(path, "trainer.devices=2", "trainer.max_epochs=1")))
    if error is MemoryError:
        assert isinstance(raised.value, MemoryError) and user_error(raised.value).startswith("out of memory")
    else:
        assert user_error(raised.value) is None
        assert re.match(r"worker 1 of 2 \(pid \d+\) failed:\n", str(raised.value)) and "ZeroDivisionError" in str(raised.value)
