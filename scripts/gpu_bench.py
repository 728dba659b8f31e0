"""One command that measures a GPU: every family's speed, memory and scores, and the step's host reads.

    python scripts/gpu_bench.py                        # the first 10M tokens of $SGNS_ENWIKI (or --corpus)
    python scripts/gpu_bench.py --sizes 4096,32768 --models skipgram,cbow
    python scripts/gpu_bench.py -- model.compile=true       # the compiled update
    python scripts/gpu_bench.py --device cpu --max-tokens 20000 --buckets 5000   # as the tests run it

For each family and update size it trains one epoch (``trainer=gpu`` when CUDA is there, else the
CPU's lock-free workers), and prints raw words/s (corpus tokens / training seconds), the peak
device memory (the CPU: the process's peak RSS) and the analogy, WS353 and SimLex scores of the
vectors. Then, on CUDA, a short run per family under ``torch.cuda.set_sync_debug_mode("error")``
inside every training step that does not log its loss: an update that waited on the host would
end it with CUDA's error (the device path, ``sgns.models.device``). About 5 minutes on one GPU at
10M tokens; extra Hydra overrides for every run follow ``--``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from compare_gensim import evaluate, write_slice  # noqa: E402

DEFAULT_CORPUS = os.environ.get("SGNS_ENWIKI")


def config(corpus: Path, out: Path, model: str, size: int, cuda: bool, extra: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    overrides = [
        "data=text_file", f"data.path={corpus}", "data.tokenizer=whitespace", "data.sample=0.0001",
        "data.val_fraction=0", f"data.update_size={size}", f"model={model}", "trainer.max_epochs=1",
        "logger=none", "~callbacks.word_vectors", "callbacks.progress_bar.refresh_rate=0", "probe_words=[]",
        "seed=1", *(["trainer=gpu"] if cuda else []), *extra,
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def measure(cfg, out: Path, cuda: bool) -> dict:
    from sgns.train import train

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with contextlib.redirect_stdout(io.StringIO()):  # (the run's own report)
        train(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"raw_words_per_s": metrics["raw_tokens"] / metrics["train_s"], "train_s": metrics["train_s"],
            "peak_mb": peak / 2**20, **evaluate(out / "vectors.bin")}  # fmt: skip


def sync_check(cfg) -> str:
    """Train with CUDA's sync debug mode set to "error" inside every step that does not log its loss."""
    from sgns.module import Word2VecModule
    from sgns.train import train

    original = Word2VecModule.training_step

    def training_step(self, step, batch_idx):
        if self.reads_loss(batch_idx):
            return original(self, step, batch_idx)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, step, batch_idx)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    Word2VecModule.training_step = training_step
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg)
    except RuntimeError as exc:
        return f"FAILED: {str(exc).splitlines()[0]}"
    finally:
        Word2VecModule.training_step = original
    return "no host read"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--max-tokens", type=int, default=10_000_000)
    parser.add_argument("--models", default="skipgram,cbow,fasttext")
    parser.add_argument("--sizes", default="4096,32768", help="update sizes (pairs): the default and a large one")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto", help="auto: CUDA when there is one")
    parser.add_argument("--buckets", type=int, help="fastText's n-gram rows (default: the model's, 2,000,000)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = parser.parse_args()
    if args.corpus is None:
        parser.error("no corpus: give --corpus PATH or set SGNS_ENWIKI")
    cuda = args.device == "auto" and torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="sgns-gpu-bench-"))
    try:
        run_all(args, cuda, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(args: argparse.Namespace, cuda: bool, work: Path) -> None:
    corpus = work / "corpus.txt"
    tokens = write_slice(args.corpus, args.max_tokens, corpus)
    where = torch.cuda.get_device_name() if cuda else "CPU (no CUDA: trainer=default)"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"{time.strftime('%Y-%m-%d')}, commit {commit.strip() or '?'}, {where}, {tokens:,} tokens, 1 epoch")
    print("\n| model | update size | train s | raw words/s | peak memory MB | analogy@30k | WS353 ρ | SimLex ρ |")
    print("|---|---|---|---|---|---|---|---|")
    def extra(model: str) -> list[str]:
        return [*args.overrides, *([f"model.net.buckets={args.buckets}"] if model == "fasttext" and args.buckets else [])]

    for model in args.models.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            out = work / f"{model}-{size}"
            r = measure(config(corpus, out, model, size, cuda, extra(model)), out, cuda)
            print(f"| {model} | {size:,} | {r['train_s']:.1f} | {r['raw_words_per_s']:,.0f} | {r['peak_mb']:,.0f} "
                  f"| {100 * r['analogy']:.1f} % | {r['ws353']:.3f} | {r['simlex']:.3f} |", flush=True)  # fmt: skip
    if not cuda:
        print("\nsync check: skipped (no CUDA; tests/test_host_reads.py checks the device path on the CPU)")
        return
    print()
    for model in args.models.split(","):
        out = work / f"{model}-sync"
        short = [*extra(model), "trainer.limit_train_batches=20"]
        print(f"sync check, {model}: {sync_check(config(corpus, out, model, int(args.sizes.split(',')[0]), cuda, short))}")


if __name__ == "__main__":
    main()
