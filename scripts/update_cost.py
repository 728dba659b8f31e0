"""Cost of a family's fused update against the update size, on the same pairs, in one process.

    python scripts/update_cost.py --model fasttext --sizes 4096,1024
    python scripts/update_cost.py --model skipgram --sizes 4096,2048 --threads 2
    python scripts/update_cost.py --model cbow --objective hs     # CBOW: the data module's own updates

Takes the first steps of a corpus (``--corpus``, default the 10M-token slice that
``compare_gensim.py`` writes), cuts the same pairs into updates of each size and times the
family's ``row_gradients`` plus the SGD step on them, the sizes alternating over ``--rounds``
rounds (a shared machine's load changes between rounds, not within one). Prints seconds per
million pairs for each size and round, and each round's ratio to the first size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from sgns.data.memory import reuse_freed_memory  # noqa: E402
from sgns.models.base import Batch  # noqa: E402
from sgns.optim import apply_sgd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT / "bench" / "corpus-10000000.txt")
    parser.add_argument("--model", default="fasttext", choices=["skipgram", "cbow", "fasttext"])
    parser.add_argument("--objective", default="ns", choices=["ns", "hs"])
    parser.add_argument("--sizes", default="4096,1024", help="comma-separated update sizes (pairs)")
    parser.add_argument("--steps", type=int, default=3, help="Lightning steps of 65,536 pairs to time")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--torch-form",
        dest="compiled",
        action="store_false",
        help="the torch form of the update even where training runs it compiled (kernels.py)",
    )
    args = parser.parse_args()
    if not args.corpus.is_file():
        parser.error(f"corpus not found: {args.corpus} (run compare_gensim.py once, or give --corpus)")
    reuse_freed_memory()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data=text_file", f"data.path={args.corpus}", "data.tokenizer=whitespace",
                                          "data.val_fraction=0", "data.sample=0.0001", f"model={args.model}",
                                          f"model.objective={args.objective}"])  # fmt: skip
    with open_dict(cfg):
        cfg.data.cache_dir = str(ROOT / "bench" / "cache")
    data = instantiate(cfg.data)
    data.example = "windows" if args.model == "cbow" else "pairs"
    data.prepare_data()
    data.setup("fit")
    module = instantiate(cfg.model)
    module.build(len(data.vocab), data.vocab.words, data.vocab.counts)
    steps = iter(data.train_set)
    updates = [u for _ in range(args.steps) for u in next(steps)]  # the default cut: 4,096 pairs
    pairs = sum(len(u) if u.mask is None else int(u.mask.sum()) for u in updates)
    sizes = [int(s) for s in args.sizes.split(",")]
    cut = {size: [Batch(u.center[i : i + size], u.context[i : i + size], u.negatives, u.neg_weight)
                  for u in updates for i in range(0, len(u), size)] for size in sizes}  # fmt: skip
    if args.model == "cbow":  # (windows are not cut again: the updates as the data module makes them)
        sizes, cut = sizes[:1], {sizes[0]: updates}
    torch.set_num_threads(args.threads)
    seconds: dict[int, list[float]] = {size: [] for size in sizes}
    with torch.no_grad():
        for r in range(args.rounds):
            for size in sizes if r % 2 == 0 else sizes[::-1]:
                started = time.perf_counter()
                for update in cut[size]:
                    if args.compiled:
                        module.net.sgd_update(update, [-0.001], False, guard=None)
                    else:
                        apply_sgd(None, module.net.row_gradients(update, -0.001, False)[1])
                seconds[size].append((time.perf_counter() - started) / pairs * 1e6)
    print(f"{args.model}, {pairs:,} pairs, {args.threads} thread(s): seconds per 1M pairs")
    for size in sizes:
        ratios = ", ".join(f"{s / b:.2f}" for s, b in zip(seconds[size], seconds[sizes[0]]))
        print(f"  updates of {size:>5}: {', '.join(f'{s:.2f}' for s in seconds[size])}  (/ {sizes[0]}: {ratios})")


if __name__ == "__main__":
    main()
