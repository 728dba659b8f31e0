"""Distributed training on this machine: pairs/s of trainer=ddp_sim (2 CPU processes, gloo) vs 1 process,
and the bytes each rank exchanges per step.

    python scripts/ddp_throughput.py                       # first 2M tokens of $SGNS_ENWIKI (or --corpus)
    python scripts/ddp_throughput.py --tokens 5000000 --batch-size 4096

Both runs train one epoch on the same slice with the same settings; the two ranks get batch B
each, the single process batch 2B, so both take the same steps over the same pairs (they learn
the same vectors). Pairs/s = training pairs of the epoch / training seconds (metrics.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from compare_gensim import DEFAULT_CORPUS, write_slice  # noqa: E402


def exchanged_bytes(batch: int, negatives: int, dim: int) -> int:
    """Per rank and step, the fused distributed update's all_gather payload: row ids (int64) and
    float32 gradient rows for B centre and B(1+k) outside rows, plus two float64 statistics."""
    return batch * (2 + negatives) * (8 + 4 * dim) + 16


def dense_allreduce_bytes(vocab: int, dim: int) -> int:
    """What DDP's dense gradient all-reduce would move instead: both tables, float32."""
    return 2 * vocab * dim * 4


def run(out: Path, corpus: Path, overrides: list[str]) -> dict:
    command = [sys.executable, "train.py", "data=text_file", f"data.path={corpus}", "data.tokenizer=whitespace",
               "trainer.max_epochs=1", "logger=none", "callbacks=none", "data.val_fraction=0", "probe_words=[]",
               f"hydra.run.dir={out}", "overwrite=true", *overrides]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_s"] = time.perf_counter() - started
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS)
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--batch-size", type=int, default=4096, help="per rank")
    args = parser.parse_args()
    if args.corpus is None:
        parser.error("no corpus: give --corpus PATH or set SGNS_ENWIKI")
    bench = ROOT / "bench"
    bench.mkdir(exist_ok=True)
    corpus = bench / f"corpus-{args.tokens}.txt"
    write_slice(args.corpus, args.tokens, corpus)
    with tempfile.TemporaryDirectory() as tmp:
        B = args.batch_size
        two = run(Path(tmp) / "two", corpus, ["trainer=ddp_sim", f"data.batch_size={B}"])
        one = run(Path(tmp) / "one", corpus, ["trainer=cpu", "trainer.devices=1", f"data.batch_size={2 * B}"])
    print(f"\n{args.tokens:,} tokens, 1 epoch, d=100, k=5, window 5, sample 1e-4")
    print("| run | batch per rank | train s | raw words/s | pairs/s |")
    print("|---|---|---|---|---|")
    for name, m, b in [("1 process", one, 2 * B), ("ddp_sim, 2 processes", two, B)]:
        print(f"| {name} | {b:,} | {m['train_s']:.1f} | {m['train/raw_words_per_s']:,.0f} | {m['pairs_last_epoch'] / m['train_s']:,.0f} |")
    print(f"\nspeed-up of 2 processes: {one['train_s'] / two['train_s']:.2f}x")
    for batch in (B, 4 * B):
        ours, dense = exchanged_bytes(batch, 5, 300), dense_allreduce_bytes(100_000, 300)
        print(f"bytes per rank per step, V=100,000, d=300, k=5, B={batch:,}: all_gather of touched rows "
              f"{ours / 1e6:.1f} MB sent (x(W-1) received) vs dense all-reduce of both tables {dense / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
