"""Corpus preparation: time and memory of a first run, a cached second run, and gensim's scan.

    python scripts/measure_preparation.py                      # $SGNS_ENWIKI (or --corpus)
    python scripts/measure_preparation.py --synthetic 200000000 # a generated 200M-token corpus
    python scripts/measure_preparation.py --max-tokens 10000000 --phrases 1  # + data.phrases=1, gensim's Phrases

Each preparation runs in a fresh process with empty caches (ours and datasets'), so the first
run includes datasets' Arrow conversion; the second run reuses the cache. Peak RSS and PSS are
sampled over the whole process tree (the main process plus datasets.map workers) every 0.25 s;
RSS counts pages shared by forked workers, and the memory-mapped Arrow files read, once per
process; PSS divides shared pages among the processes that share them; anonymous PSS leaves out
file-backed pages (the kernel can drop those under pressure; heap it cannot).
The synthetic corpus (Zipf-distributed words, 5-40 per line) is written to a temporary
directory and deleted afterwards. ``--phrases N`` adds a first run of ours with ``data.phrases=N``
(default scoring and threshold) and gensim's ``Phrases`` learning N passes and applying them to
the corpus, with the same connector words; then it prints our 30 best phrases and how far the
two sets agree, gensim's threshold set to ours (see ``sgns.data.phrases``: x its vocabulary size / N).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from sgns.data.phrases import THRESHOLDS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_gensim import write_slice  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = os.environ.get("SGNS_ENWIKI")  # the 40M-token Wikipedia text of docs/benchmarks.md, or --corpus

OURS = """
import json, sys, time
t0 = time.perf_counter()
from sgns.data import prepare_corpus
from sgns.data.phrases import PhraseSettings
t1 = time.perf_counter()
phrases = PhraseSettings.from_config(int(sys.argv[4]), "default", None, 5, "english")
c = prepare_corpus(sys.argv[1], tokenizer=sys.argv[2], min_count=5, num_proc=int(sys.argv[3]) if sys.argv[3] != "auto" else None,
                   phrases=phrases)
t2 = time.perf_counter()
if c.phrases is not None:
    c.phrases.save(sys.argv[5])
print(json.dumps({"import_s": t1 - t0, "prepare_s": t2 - t1, "raw_tokens": c.raw_tokens, "vocab": len(c.vocab),
                  "train_tokens": c.train.n_tokens}))
"""
GENSIM = """
import json, sys, time
t0 = time.perf_counter()
from gensim.models import Word2Vec
t1 = time.perf_counter()
m = Word2Vec(min_count=5, workers=2)
m.build_vocab(corpus_file=sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "prepare_s": t2 - t1, "raw_tokens": m.corpus_total_words, "vocab": len(m.wv)}))
"""

GENSIM_PHRASES = """
import json, sys, time
t0 = time.perf_counter()
from gensim.models.phrases import ENGLISH_CONNECTOR_WORDS, Phrases
from gensim.models.word2vec import LineSentence
t1 = time.perf_counter()
sentences, found = LineSentence(sys.argv[1]), []
for n in range(int(sys.argv[2])):  # each pass learns on the text the earlier ones joined
    model = Phrases(sentences, min_count=5, connector_words=ENGLISH_CONNECTOR_WORDS)
    model.threshold = float(sys.argv[4]) * len(model.vocab) / model.corpus_word_count  # ours: t x N / len(vocab)
    frozen = model.freeze()
    found += [(p, s, n + 1) for p, s in frozen.phrasegrams.items()]
    sentences = list(frozen[sentences])
tokens = sum(len(s) for s in sentences)
t2 = time.perf_counter()
with open(sys.argv[3], "w") as out:
    out.writelines(f"{p}\\t{s!r}\\t0\\t{n}\\n" for p, s, n in found)
print(json.dumps({"import_s": t1 - t0, "prepare_s": t2 - t1, "raw_tokens": model.corpus_word_count, "vocab": len(found)}))
"""


def measured(code: str, args: list[str], env: dict[str, str]) -> dict:
    """Run ``python -c code args``; wall seconds, peak RSS of the process tree, and its JSON line."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root, peak, peak_pss, peak_anon = psutil.Process(proc.pid), 0, 0, 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
            peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in tree))
            peak_anon = max(peak_anon, sum(_anonymous(p.pid) for p in tree))
        except (psutil.Error, OSError):
            pass
        time.sleep(0.25)
    out = proc.stdout.read().strip().splitlines()
    if proc.returncode != 0 or not out:
        raise SystemExit(f"measurement failed (exit {proc.returncode})")
    return {"wall_s": time.perf_counter() - started, "peak_mb": peak / 2**20, "peak_pss_mb": peak_pss / 2**20,
            "peak_anon_mb": peak_anon / 2**20, **json.loads(out[-1])}


def _anonymous(pid: int) -> int:
    """Proportional anonymous memory (heap, not file-backed pages such as memory-mapped Arrow
    files; pages shared copy-on-write with forked workers counted once)."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        return next((int(line.split()[1]) * 1024 for line in rollup if line.startswith("Pss_Anon")), 0)


def synthetic(path: Path, tokens: int, vocab: int = 500_000, seed: int = 0) -> None:
    """Zipf(1.1)-distributed words w0..w{vocab-1}, 5-40 per line, ``tokens`` in all."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab)], dtype=object)
    written = 0
    with open(path, "w") as out:
        while written < tokens:
            n = min(1_000_000, tokens - written)
            ids = (rng.zipf(1.1, n) - 1) % vocab
            lengths = rng.integers(5, 41, n // 5 + 1)
            cuts = np.cumsum(lengths)
            cuts = cuts[cuts < n]
            out.write("\n".join(" ".join(line) for line in np.split(words[ids], cuts)) + "\n")
            written += n


def _compare_phrases(ours_path: Path, gensim_path: Path | None) -> None:
    """Our 30 best phrases of each pass, and the agreement of the two sets, pass by pass."""
    from sgns.data.phrases import PhraseTable

    ours = PhraseTable.load(ours_path)
    for n in sorted(set(ours.passes)):
        best = [f"{p} ({s:,.0f})" for p, s, f in zip(ours.phrases, ours.scores, ours.passes) if f == n][:30]
        print(f"\nour 30 best phrases of pass {n}: " + ", ".join(best))
    if gensim_path is None:
        return
    theirs = {}
    for line in open(gensim_path, encoding="utf-8"):
        phrase, _, _, n = line.rstrip("\n").split("\t")
        theirs.setdefault(int(n), set()).add(phrase)
    for n in sorted(set(ours.passes)):
        mine = {p for p, f in zip(ours.phrases, ours.passes) if f == n}
        both = mine & theirs.get(n, set())
        print(f"pass {n}: ours {len(mine):,} phrases, gensim's {len(theirs.get(n, ())):,}, both {len(both):,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--tokenizer", default="whitespace")
    parser.add_argument("--synthetic", type=int, default=0, help="generate a corpus of this many tokens instead")
    parser.add_argument("--no-gensim", action="store_true")
    parser.add_argument("--num-proc", type=int, default=0, help="data.num_proc for ours (0 = auto: by size, up to the cores)")
    parser.add_argument("--max-tokens", type=int, default=0, help="only the first N tokens of --corpus (0 = all)")
    parser.add_argument("--phrases", type=int, default=0, help="also prepare with data.phrases=N, and gensim's Phrases")
    args = parser.parse_args()
    if args.corpus is None and not args.synthetic:
        parser.error("no corpus: give --corpus PATH or set SGNS_ENWIKI")

    work = Path(tempfile.mkdtemp(prefix="sgns-prep-"))
    try:
        corpus = Path(args.corpus) if args.corpus else None
        if args.synthetic:
            corpus = work / "synthetic.txt"
            started = time.perf_counter()
            synthetic(corpus, args.synthetic)
            print(f"generated {args.synthetic:,} tokens, {corpus.stat().st_size / 2**20:,.0f} MB, in {time.perf_counter() - started:.0f} s")
        env = {**os.environ, "SGNS_CACHE_DIR": str(work / "sgns"), "HF_DATASETS_CACHE": str(work / "hf"),
               "PYTHONPATH": str(ROOT / "src"), "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
        if args.max_tokens:
            write_slice(str(corpus), args.max_tokens, work / f"first-{args.max_tokens}.txt")
            corpus = work / f"first-{args.max_tokens}.txt"
        procs = str(args.num_proc or "auto")
        ours = [str(corpus), args.tokenizer, procs, "0", ""]
        rows = [(f"ours, first run (num_proc={procs})", measured(OURS, ours, env)),
                ("ours, second run (cached)", measured(OURS, ours, env))]  # fmt: skip
        if args.phrases:
            ours[3:] = [str(args.phrases), str(work / "ours-phrases.tsv")]
            phrased = {**env, "SGNS_CACHE_DIR": str(work / "sgns-phrases")}
            rows.append((f"ours, first run, data.phrases={args.phrases}", measured(OURS, ours, phrased)))
        if not args.no_gensim:  # gensim's corpus_file mode needs uncompressed text (not timed)
            plain = corpus
            if corpus.suffix == ".gz":
                plain = work / corpus.stem
                with gzip.open(corpus, "rb") as inp, open(plain, "wb") as out:
                    shutil.copyfileobj(inp, out)
            rows.append(("gensim build_vocab (corpus_file, uncompressed)", measured(GENSIM, [str(plain)], env)))
            if args.phrases:
                learn = [str(plain), str(args.phrases), str(work / "gensim-phrases.tsv"), str(THRESHOLDS["default"])]
                rows.append((f"gensim Phrases, {args.phrases} pass(es) learnt and applied", measured(GENSIM_PHRASES, learn, env)))  # fmt: skip
        floor = measured("import json, sgns.data, datasets; print(json.dumps({}))", [], env)["peak_mb"]
        print(f"\ncorpus: {corpus} ({corpus.stat().st_size / 2**20:,.0f} MB on disk)")
        print("| run | wall s | of which preparation s | peak RSS MB | peak PSS MB | peak anonymous PSS MB | raw tokens | vocabulary |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['wall_s']:.1f} | {r['prepare_s']:.1f} | {r['peak_mb']:,.0f} | {r['peak_pss_mb']:,.0f} "
                  f"| {r['peak_anon_mb']:,.0f} "
                  f"| {r['raw_tokens']:,} | {r['vocab']:,} |")  # fmt: skip
        print(f"\nimport floor of ours (sgns.data + datasets): {floor:,.0f} MB")
        if args.phrases:
            _compare_phrases(work / "ours-phrases.tsv", None if args.no_gensim else work / "gensim-phrases.tsv")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
