"""Train ours and gensim (Word2Vec, FastText) on the same corpus slice, same settings, same run; print a table.

    python scripts/compare_gensim.py                       # first 10M tokens of $SGNS_ENWIKI (or --corpus), 1 epoch
    python scripts/compare_gensim.py --repeats 2 --scaling  # + our time at 10M/20M/40M tokens and d=300
    python scripts/compare_gensim.py --max-tokens 0 --epochs 3 -- model/optimizer=sparse_adam
    python scripts/compare_gensim.py --repeats 3 --busy 1     # + each repeat again beside 1 busy process
    python scripts/compare_gensim.py --models skipgram,cbow   # skip-gram against sg=1, CBOW against sg=0
    python scripts/compare_gensim.py --models fasttext        # subwords against gensim FastText, + rare words
    python scripts/compare_gensim.py --models skipgram,cbow --objective hs  # hierarchical softmax (gensim hs=1 negative=0)
    python scripts/compare_gensim.py --worker-scaling --models skipgram,cbow,fasttext --workers 8  # ours at 1..8 workers

Each trainer runs in its own process (peak RSS from wait4), the order alternates between
repeats, and both vector files are scored by the same code (gensim's evaluate_word_analogies
with restrict_vocab=30000 and evaluate_word_pairs); our own end-of-epoch evaluation is switched
off so that both training times cover training only. Raw words/s = corpus tokens before
min_count and subsampling x epochs / training seconds, for both. Both sides train with
``--workers`` workers (ours: ``trainer.devices``). Each side's memory floor is
the peak RSS of a bare import of its libraries, measured in the same run. ``--busy N`` runs every
repeat a second time with N CPU-bound processes (busy loops) beside the trainer, as on a shared
machine or a laptop doing something else.

gensim reads the corpus in its fastest mode, ``corpus_file`` (``--gensim-input corpus_file``, the
default): the speed users get from it. That mode's learning rate does not decay as gensim documents
it: each of its W worker threads trains 1/W of the corpus but measures its progress against the
whole (``word2vec_corpusfile.pyx``: ``total_words / expected_words`` for its own words), so an epoch
ends at alpha − (alpha − min_alpha)(e − 1 + 1/W)/E instead of min_alpha (1 epoch, 2 workers: 0.0125,
not 0.0001). ``--gensim-input lines`` trains gensim from a ``LineSentence`` iterator instead, where
alpha reaches min_alpha as in word2vec.c, at the iterator mode's speed.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = os.environ.get("SGNS_ENWIKI")  # the 40M-token Wikipedia text of docs/benchmarks.md, or --corpus


def write_slice(source: str, max_tokens: int, target: Path) -> int:
    """The first ``max_tokens`` whitespace tokens of ``source`` (0 = all), one line per line, in
    ``target``, and their count in ``target.tokens``; a slice made before is read back. The slice is
    written beside its place and renamed into it once complete, its count after it, so a run
    stopped meanwhile (a full disk, Ctrl-C) leaves no partial slice for the next run to take."""
    count = target.with_suffix(".tokens")
    if target.exists() and count.exists():
        return int(count.read_text())
    opener = gzip.open if source.endswith(".gz") else open
    total, partial = 0, target.with_name(f".{target.name}.partial")
    with opener(source, "rt", encoding="utf-8") as inp, open(partial, "w", encoding="utf-8") as out:
        for line in inp:
            tokens = line.split()
            if max_tokens and total + len(tokens) > max_tokens:
                tokens = tokens[: max_tokens - total]
            if tokens:
                out.write(" ".join(tokens) + "\n")
                total += len(tokens)
            if max_tokens and total >= max_tokens:
                break
    os.replace(partial, target)
    count.write_text(str(total))
    return total


def run_measured(cmd: list[str], log: Path) -> tuple[int, float, int]:
    """Run a command; return (exit code, wall seconds, peak RSS in bytes) of that process alone
    (its high-water mark, read four times a second: cheap beside the process timed)."""
    code, wall, rss, _ = run_measured_tree(cmd, log, sample_s=0.25, tree=False)
    return code, wall, rss


def _peak_rss(pid: int) -> int:
    """A process's own peak RSS in bytes (VmHWM): wait4's ru_maxrss would also carry this script's
    size into every child, which Linux keeps across fork and exec."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):
        return 0


def _tree_memory(pid: int) -> tuple[int, int]:
    """(Proportional set size of a process and its descendants, the largest peak RSS among them) in
    bytes. PSS counts shared pages once in all, divided among the processes that map them (RSS
    would count the shared tables per worker). The peak is each process's own high-water mark
    (``_peak_rss``)."""
    total, largest, todo = 0, 0, [pid]
    while todo:
        p = todo.pop()
        largest = max(largest, _peak_rss(p))
        try:
            with open(f"/proc/{p}/smaps_rollup") as smaps:
                total += next(int(line.split()[1]) for line in smaps if line.startswith("Pss:")) * 1024
            with open(f"/proc/{p}/task/{p}/children") as children:
                todo += [int(c) for c in children.read().split()]
        except (OSError, StopIteration):
            pass
    return total, largest


def run_measured_tree(cmd: list[str], log: Path, sample_s: float = 0.1, env: dict | None = None,
                      tree: bool = True) -> tuple[int, float, int, int]:  # fmt: skip
    """Run a command; return (exit code, wall seconds, peak RSS of its largest process, peak PSS of
    its whole process tree; ``tree=False``: the peak RSS of the command's process, PSS 0), memory
    sampled every ``sample_s`` seconds, in bytes."""
    started, pss, rss = time.perf_counter(), 0, 0
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        while True:
            done, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if done:
                break
            total, largest = _tree_memory(proc.pid) if tree else (0, _peak_rss(proc.pid))
            pss, rss = max(pss, total), max(rss, largest)
            time.sleep(sample_s)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - started, rss, pss


FLOORS = {"ours": "import torch, lightning, hydra, torchmetrics, datasets", "gensim": "import gensim"}


GENSIM_INPUTS = ("corpus_file", "lines")  # --gensim-input: gensim's fast mode or a LineSentence iterator

FAMILIES = {"skipgram": "Word2Vec sg=1", "cbow": "Word2Vec sg=0", "fasttext": "FastText sg=1"}  # our model=... and gensim's side


def ours_command(args: argparse.Namespace, corpus: Path, out: Path, dim: int | None = None, model: str = "skipgram",
                 workers: int | None = None) -> list[str]:  # fmt: skip
    """Our trainer on ``corpus`` with ``workers`` (default ``--workers``) lock-free workers unless the
    overrides choose (``trainer.deterministic=true``: one), its preparation cache in ``out/cache``
    (emptied by ``run_dir``)."""
    chosen = any(o.startswith(("trainer.devices=", "trainer.deterministic=")) for o in args.overrides)
    return [sys.executable, "train.py", f"model={model}", "data=text_file", f"data.path={corpus}", "data.tokenizer=whitespace",
            *([] if chosen else [f"trainer.devices={workers or args.workers}"]),
            "data.val_fraction=0", f"data.window={args.window}", f"data.negatives={args.negatives}",
            f"data.sample={args.sample}", f"data.min_count={args.min_count}", f"model.net.embedding_dim={dim or args.dim}",
            f"trainer.max_epochs={args.epochs}", f"seed={args.seed}", "logger=none", "~callbacks.word_vectors",
            "callbacks.progress_bar.refresh_rate=1000", f"hydra.run.dir={out}", f"data.cache_dir={out / 'cache'}",
            f"model.objective={args.objective}", "overwrite=true", *args.overrides]  # fmt: skip (overwrite: the last time's run in the same directory)


def scaling(args: argparse.Namespace) -> None:
    """Our training time against corpus size (d fixed) and against d (corpus fixed)."""
    runs = [(n, args.dim) for n in (10_000_000, 20_000_000, 40_000_000)] + [(10_000_000, 300)]
    print("\n| ours: tokens | d | train s | s per 1M tokens | raw words/s | peak RSS MB | analogy@30k |")
    print("|---|---|---|---|---|---|---|")
    for max_tokens, dim in runs:
        corpus = args.out / f"corpus-{max_tokens}.txt"
        tokens = write_slice(args.corpus, max_tokens, corpus)
        out = run_dir(args.out / f"scaling-{max_tokens}-{dim}")
        code, _, rss = run_measured(ours_command(args, corpus, out, dim=dim), out / "log.txt")
        if code != 0:
            sys.exit(f"ours failed (exit {code}); see {out / 'log.txt'}")
        train_s = json.loads((out / "metrics.json").read_text())["train_s"]
        analogy = evaluate(out / "vectors.bin")["analogy"]
        drop_models(out)
        print(f"| {tokens:,} | {dim} | {train_s:.1f} | {train_s / tokens * 1e6 / args.epochs:.2f} | "
              f"{tokens * args.epochs / train_s:,.0f} | {rss / 2**20:.0f} | {100 * analogy:.1f} % |", flush=True)  # fmt: skip


def worker_scaling(args: argparse.Namespace, corpus: Path, tokens: int, common: list[str]) -> None:
    """Ours alone with 1, 2, 4, ... ``--workers`` lock-free workers, each family of ``--models``, one
    thread each (``OMP_NUM_THREADS=1``; one worker would otherwise tune its threads): speed, the
    speed-up over one worker, memory of all processes together, scores; and gensim with as many
    workers, for the speed-up the same machine gives a peer. With ``--repeats``, the worker counts
    run in alternating order, and each repeat's speed-up is over its own one-worker run."""
    counts = sorted({1, args.workers, *(2**i for i in range(args.workers.bit_length()) if 2**i < args.workers)})
    at = common.index("--workers") + 1
    print("\n| side: model | repeat | workers | train s | end-to-end s | raw words/s | speed-up | peak PSS, all processes MB | "
          "peak RSS, largest process MB | analogy@30k | WS353 ρ | SimLex ρ |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    speedups: dict[tuple[str, str, int], list[float]] = {}
    for model in args.models.split(","):
        for repeat in range(args.repeats):
            seconds, rows = {}, {}
            for workers in counts if repeat % 2 == 0 else counts[::-1]:
                for side in ("ours", "gensim") if (repeat + workers) % 2 else ("gensim", "ours"):
                    out = run_dir(args.out / f"workers-{side}-{model}-{workers}")
                    if side == "ours":
                        cmd = ours_command(args, corpus, out, model=model, workers=workers)
                    else:
                        mine = [*common[:at], str(workers), *common[at + 1 :]]
                        cmd = [sys.executable, __file__, "--worker", "gensim", "--out", str(out), "--family", model, *mine]
                    code, wall, rss, pss = run_measured_tree(cmd, out / "log.txt", env={"OMP_NUM_THREADS": "1"})
                    if code != 0:
                        sys.exit(f"{side} failed (exit {code}); see {out / 'log.txt'}")
                    seconds[side, workers] = json.loads((out / "metrics.json").read_text())["train_s"]
                    rows[side, workers] = (wall, rss, pss, evaluate(out / "vectors.bin"))
                    drop_models(out)
            for side in ("ours", "gensim"):
                for workers in counts:
                    wall, rss, pss, scores = rows[side, workers]
                    train_s, speedup = seconds[side, workers], seconds[side, 1] / seconds[side, workers]
                    speedups.setdefault((side, model, workers), []).append(speedup)
                    print(f"| {side}: {model} | {repeat} | {workers} | {train_s:.1f} | {wall:.1f} | {tokens * args.epochs / train_s:,.0f} | "
                          f"{speedup:.2f} | {pss / 2**20:.0f} | {rss / 2**20:.0f} | {100 * scores['analogy']:.1f} % | "
                          f"{scores['ws353']:.3f} | {scores['simlex']:.3f} |", flush=True)  # fmt: skip
    print()
    for (side, model, workers), values in speedups.items():
        if workers > 1:
            print(f"{side} {model}: {workers} workers over 1: {', '.join(f'{v:.2f}' for v in values)} (median {median(values):.2f})")


def drop_models(out: Path) -> None:
    """Once a run is scored, delete its checkpoint and whole model (fastText's: 860 MB each), which
    no score reads again: a few dozen runs kept them and filled a disk. Its vectors, metrics and
    log stay."""
    for name in ("last.ckpt", "fasttext.bin"):
        (out / name).unlink(missing_ok=True)


def run_dir(out: Path) -> Path:
    """A run's directory, without a preparation cache from an earlier run: ours prepares the
    corpus every run, as gensim scans its vocabulary every run."""
    shutil.rmtree(out / "cache", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def summary(rows: list[dict]) -> str:
    """Medians of each side, and ours/gensim within each repeat: a repeat's two runs follow each
    other, so their ratio is the least disturbed by a shared machine's load changing over time."""
    lines = []
    for model, busy in sorted({(r["model"], r["busy"]) for r in rows}, key=lambda mb: (list(FAMILIES).index(mb[0]), mb[1])):
        side = {name: [r for r in rows if r["name"] == name and r["busy"] == busy and r["model"] == model] for name in ("ours", "gensim")}
        paired = [o["raw_wps"] / g["raw_wps"] for o, g in zip(side["ours"], side["gensim"])]
        lines += [f"\n{model} (gensim {FAMILIES[model]}), {'idle' if not busy else f'beside {busy} busy process(es)'}: median train s: "
                  f"ours {median([r['train_s'] for r in side['ours']]):.1f}, gensim {median([r['train_s'] for r in side['gensim']]):.1f}; "
                  f"ours/gensim raw words/s within each repeat: {', '.join(f'{x:.2f}' for x in paired)} (median {median(paired):.2f})"]  # fmt: skip
        for key in ("analogy", "ws353", "simlex") + (("rare@10",) if model == "fasttext" else ()):
            ours, gensim = median([r[key] for r in side["ours"]]), median([r[key] for r in side["gensim"]])
            lines.append(f"median {key}: ours {ours:.3f}, gensim {gensim:.3f} (ours - gensim {ours - gensim:+.3f})")
    return "\n".join(lines)


class Busy:
    """N CPU-bound processes (busy loops) for as long as the block runs."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self) -> "Busy":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def gensim_worker(args: argparse.Namespace) -> None:
    """Child process: gensim in ``--gensim-input`` mode, vocabulary scan timed apart from training."""
    from gensim.models import FastText, Word2Vec
    from gensim.models.word2vec import LineSentence

    t0 = time.perf_counter()
    name, sg = FAMILIES[args.family].split(" sg=")
    model = (Word2Vec if name == "Word2Vec" else FastText)(
        vector_size=args.dim, window=args.window, negative=0 if args.objective == "hs" else args.negatives, sample=args.sample,
        min_count=args.min_count, sg=int(sg), hs=int(args.objective == "hs"), workers=args.workers, seed=args.seed, **({"alpha": args.gensim_alpha} if args.gensim_alpha else {}))  # fmt: skip
    lines = args.gensim_input == "lines"
    source = {"corpus_iterable": LineSentence(args.corpus)} if lines else {"corpus_file": args.corpus}
    model.build_vocab(**source)
    t1 = time.perf_counter()
    # an iterator's alpha decays with the sentences all threads have taken, to min_alpha; corpus_file seeks by words
    total = {"total_examples": model.corpus_count} if lines else {"total_words": model.corpus_total_words}
    model.train(**source, **total, epochs=args.epochs)
    t2 = time.perf_counter()
    model.wv.save_word2vec_format(str(args.out / "vectors.bin"), binary=True)
    if name == "FastText":  # the whole model: vectors for words outside the vocabulary
        from gensim.models.fasttext import save_facebook_model

        save_facebook_model(model, str(args.out / "fasttext.bin"))
    json.dump({"prepare_s": t1 - t0, "train_s": t2 - t1, "raw_tokens": model.corpus_total_words},
              open(args.out / "metrics.json", "w"))  # fmt: skip


def evaluate(vectors: Path) -> dict[str, float]:
    import gensim
    from gensim.models import KeyedVectors

    data = Path(gensim.__file__).parent / "test" / "test_data"
    kv = KeyedVectors.load_word2vec_format(str(vectors), binary=True)
    analogy, sections = kv.evaluate_word_analogies(str(data / "questions-words.txt"), restrict_vocab=30000)
    total = next(s for s in sections if s["section"] == "Total accuracy")
    pairs = {name: kv.evaluate_word_pairs(str(data / f), restrict_vocab=300000)[1][0]
             for name, f in [("ws353", "wordsim353.tsv"), ("simlex", "simlex999.txt")]}  # fmt: skip
    return {"analogy": analogy, "questions": len(total["correct"]) + len(total["incorrect"]), **pairs}


SUFFIXES = ("s", "es", "ed", "ing", "er", "ers", "ly", "ness", "ment", "ism", "ist", "ists", "ation", "ations")


@functools.cache  # convergence.py asks once per run; the corpus is read once
def rare_word_pairs(corpus: Path, min_count: int, limit: int = 2000) -> list[tuple[str, str]]:
    """A rare-word test set from the corpus itself: (rare, frequent) pairs where the rare word is
    seen fewer than ``min_count`` times (outside both vocabularies) and is the frequent word (seen
    at least 100 times) with a suffix added; the first ``limit`` in a seeded shuffle."""
    from collections import Counter

    counts: Counter = Counter()
    with open(corpus, encoding="utf-8") as lines:
        for line in lines:
            counts.update(line.split())
    pairs = sorted({(word, word[: -len(suffix)]) for word, n in counts.items() if n < min_count and word.isalpha()
                    for suffix in SUFFIXES if word.endswith(suffix) and len(word) - len(suffix) >= 4
                    and counts.get(word[: -len(suffix)], 0) >= 100})  # fmt: skip
    random.Random(0).shuffle(pairs)
    return pairs[:limit]


def rare_word_score(model: Path, pairs: list[tuple[str, str]]) -> float:
    """Share of rare words whose frequent form is among the 10 nearest vocabulary words of their
    n-gram vector (both sides' models read by the same code)."""
    import torch

    from sgns.vectors import SubwordVectors, unit_rows

    vectors = SubwordVectors.load_facebook_format(model)
    unit = unit_rows(torch.from_numpy(vectors.vectors))
    queries = unit_rows(torch.from_numpy(np.stack([vectors.get_vector(rare) for rare, _ in pairs])))
    target = torch.tensor([vectors.key_to_index[frequent] for _, frequent in pairs])
    hits = 0
    for start in range(0, len(pairs), 256):
        top = (queries[start : start + 256] @ unit.T).topk(10, dim=1).indices
        hits += int((top == target[start : start + 256, None]).any(dim=1).sum())
    return hits / max(1, len(pairs))


def build_parser() -> argparse.ArgumentParser:
    """The script's options; their defaults are the benchmark's settings (d=100, window 5, k=5, ...)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="text or .gz corpus, one sentence per line")
    parser.add_argument("--max-tokens", type=int, default=10_000_000, help="first N tokens; 0 = all")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--sample", type=float, default=1e-4)
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--objective", default="ns", choices=["ns", "hs"], help="ns: negative sampling (gensim negative=k); "
                        "hs: hierarchical softmax (gensim hs=1, negative=0), our model.objective=hs")  # fmt: skip
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="gensim's workers and ours "
                        "(trainer.devices); default: the cores this process may use")  # fmt: skip
    parser.add_argument("--worker-scaling", action="store_true", help="each side with 1, 2, 4, ... --workers workers")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, alternating which goes first")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gensim-alpha", type=float, help="gensim's alpha (default: gensim's own, 0.025; word2vec.c "
                                                            "uses 0.05 for CBOW)")  # fmt: skip
    parser.add_argument("--gensim-input", default=GENSIM_INPUTS[0], choices=GENSIM_INPUTS,
                        help="gensim's fast corpus_file mode (its alpha stops short of min_alpha with several workers: "
                        "see above) or a LineSentence iterator (alpha decays to min_alpha)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench")
    parser.add_argument("--scaling", action="store_true", help="also time ours at 10M/20M/40M tokens and at d=300")
    parser.add_argument("--busy", type=int, default=0, help="also run every repeat beside N busy-loop processes")
    parser.add_argument("--models", default="skipgram", help="comma-separated: skipgram (gensim Word2Vec sg=1), cbow (sg=0), "
                        "fasttext (gensim FastText sg=1, n-grams 3..6, 2M buckets)")  # fmt: skip
    parser.add_argument("--family", default="skipgram", choices=list(FAMILIES), help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["gensim"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for our trainer (after --)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.worker == "gensim":
        return gensim_worker(args)
    if args.corpus is None:
        parser.error("no corpus: give --corpus PATH or set SGNS_ENWIKI")

    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / f"corpus-{args.max_tokens or 'all'}.txt"
    tokens = write_slice(args.corpus, args.max_tokens, corpus)
    print(f"corpus: {corpus} ({tokens:,} tokens); d={args.dim} window={args.window} k={args.negatives} "
          f"sample={args.sample} min_count={args.min_count} epochs={args.epochs} objective={args.objective}"
          + (f" gensim alpha={args.gensim_alpha}" if args.gensim_alpha else "") + f" gensim input={args.gensim_input}", flush=True)  # fmt: skip
    common = ["--corpus", str(corpus), "--epochs", str(args.epochs), "--dim", str(args.dim), "--window", str(args.window),
              "--negatives", str(args.negatives), "--sample", str(args.sample), "--min-count", str(args.min_count),
              "--workers", str(args.workers), "--seed", str(args.seed), "--objective", args.objective,
              "--gensim-input", args.gensim_input]  # fmt: skip
    common += ["--gensim-alpha", str(args.gensim_alpha)] if args.gensim_alpha else []
    if args.worker_scaling:
        return worker_scaling(args, corpus, tokens, common)
    floors = {}
    for name, imports in FLOORS.items():  # peak RSS of a bare import of each side's libraries
        code, _, rss = run_measured([sys.executable, "-c", imports], args.out / f"floor-{name}.log")
        floors[name] = rss / 2**20 if code == 0 else float("nan")
    rows, models = [], args.models.split(",")
    rare = rare_word_pairs(corpus, args.min_count) if "fasttext" in models else []
    for repeat in range(args.repeats):
        for model, busy in [(m, b) for m in models for b in ([0, args.busy] if args.busy else [0])]:
            order = ["ours", "gensim"] if (repeat + bool(busy)) % 2 == 0 else ["gensim", "ours"]
            for name in order:
                out = run_dir(args.out / f"{name}-{model}-{repeat}{f'-busy{busy}' if busy else ''}")
                if name == "gensim":
                    cmd = [sys.executable, __file__, "--worker", "gensim", "--out", str(out), "--family", model, *common]
                else:
                    cmd = ours_command(args, corpus, out, model=model)
                with Busy(busy):
                    code, wall, rss = run_measured(cmd, out / "log.txt")
                if code != 0:
                    sys.exit(f"{name} failed (exit {code}); see {out / 'log.txt'}")
                metrics = json.loads((out / "metrics.json").read_text())
                row = {"name": name, "model": model, "repeat": repeat, "busy": busy, "wall_s": wall, "rss_mb": rss / 2**20, **metrics,
                       **evaluate(out / "vectors.bin")}  # fmt: skip
                if model == "fasttext":
                    row |= {"rare@10": rare_word_score(out / "fasttext.bin", rare), "rare_pairs": len(rare)}
                drop_models(out)
                row["raw_wps"] = tokens * args.epochs / row["train_s"]
                rows.append(row)
                print(f"  {name} {model} (repeat {repeat}, busy {busy}): train {row['train_s']:.1f} s, analogy {row['analogy']:.4f}", flush=True)

    gensim_wps = {(m, b): median([r["raw_wps"] for r in rows if r["name"] == "gensim" and r["busy"] == b and r["model"] == m])
                  for m, b in {(r["model"], r["busy"]) for r in rows}}  # fmt: skip
    print("\n| run | model | busy | train s | end-to-end s | raw words/s | ours/gensim | peak RSS MB (floor) | above floor MB | analogy@30k (questions) | WS353 ρ | SimLex ρ |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        floor = floors[r["name"]]
        print(f"| {r['name']} #{r['repeat']} | {r['model']} | {r['busy']} | {r['train_s']:.1f} | {r['wall_s']:.1f} | {r['raw_wps']:,.0f} | "
              f"{r['raw_wps'] / gensim_wps[(r['model'], r['busy'])]:.2f} | {r['rss_mb']:.0f} ({floor:.0f}) | {r['rss_mb'] - floor:.0f} | "
              f"{100 * r['analogy']:.1f} % ({r['questions']:,}) | {r['ws353']:.3f} | {r['simlex']:.3f} |")  # fmt: skip
    print(summary(rows))
    (args.out / "results.json").write_text(json.dumps({"floors_mb": floors, "runs": rows}, indent=1))
    if args.scaling:
        scaling(args)


if __name__ == "__main__":
    main()
