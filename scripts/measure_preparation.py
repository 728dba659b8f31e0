"""Corpus preparation: time and memory of a first run, a cached second run, and gensim's scan.

    python scripts/measure_preparation.py                      # $SGNS_ENWIKI (or --corpus)
    python scripts/measure_preparation.py --synthetic 200000000 # a generated 200M-token corpus

Each preparation runs in a fresh process with empty caches (ours and datasets'), so the first
run includes datasets' Arrow conversion; the second run reuses the cache. Peak RSS and PSS are
sampled over the whole process tree (the main process plus datasets.map workers) every 0.25 s;
RSS counts pages shared by forked workers, and the memory-mapped Arrow files read, once per
process; PSS divides shared pages among the processes that share them; anonymous PSS leaves out
file-backed pages (the kernel can drop those under pressure; heap it cannot).
The synthetic corpus (Zipf-distributed words, 5-40 per line) is written to a temporary
directory and deleted afterwards.
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = os.environ.get("SGNS_ENWIKI")  # the 40M-token Wikipedia text of docs/benchmarks.md, or --corpus

OURS = """
import json, sys, time
t0 = time.perf_counter()
from sgns.data import prepare_corpus
t1 = time.perf_counter()
c = prepare_corpus(sys.argv[1], tokenizer=sys.argv[2], min_count=5, num_proc=int(sys.argv[3]) if sys.argv[3] != "auto" else None)
t2 = time.perf_counter()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--tokenizer", default="whitespace")
    parser.add_argument("--synthetic", type=int, default=0, help="generate a corpus of this many tokens instead")
    parser.add_argument("--no-gensim", action="store_true")
    parser.add_argument("--num-proc", type=int, default=0, help="data.num_proc for ours (0 = auto: by size, up to the cores)")
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
        procs = str(args.num_proc or "auto")
        rows = [(f"ours, first run (num_proc={procs})", measured(OURS, [str(corpus), args.tokenizer, procs], env)),
                ("ours, second run (cached)", measured(OURS, [str(corpus), args.tokenizer, procs], env))]  # fmt: skip
        if not args.no_gensim:  # gensim's corpus_file mode needs uncompressed text (not timed)
            plain = corpus
            if corpus.suffix == ".gz":
                plain = work / corpus.stem
                with gzip.open(corpus, "rb") as inp, open(plain, "wb") as out:
                    shutil.copyfileobj(inp, out)
            rows.append(("gensim build_vocab (corpus_file, uncompressed)", measured(GENSIM, [str(plain)], env)))
        floor = measured("import json, sgns.data, datasets; print(json.dumps({}))", [], env)["peak_mb"]
        print(f"\ncorpus: {corpus} ({corpus.stat().st_size / 2**20:,.0f} MB on disk)")
        print("| run | wall s | of which preparation s | peak RSS MB | peak PSS MB | peak anonymous PSS MB | raw tokens | vocabulary |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['wall_s']:.1f} | {r['prepare_s']:.1f} | {r['peak_mb']:,.0f} | {r['peak_pss_mb']:,.0f} "
                  f"| {r['peak_anon_mb']:,.0f} "
                  f"| {r['raw_tokens']:,} | {r['vocab']:,} |")  # fmt: skip
        print(f"\nimport floor of ours (sgns.data + datasets): {floor:,.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
