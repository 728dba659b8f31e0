"""How often a negative equals its pair's positive word, on a corpus, with our data settings.

    python scripts/negative_collisions.py                      # the 10M-token slice compare_gensim.py writes
    python scripts/negative_collisions.py --corpus my.txt --sample 1e-3

word2vec.c and gensim skip such a negative; we keep it (docs/fidelity.md). A positive (context)
word is w with probability proportional to count(w) × keep(w) (subsampling), a negative with the
noise probability count(w)^0.75 / Z, independently, so one negative draw equals the positive with
probability sum_w p_context(w) p_noise(w). Prints that, and the share of pairs whose k negatives
hold at least one such draw (what word2vec skips).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from sgns.data.sampling import noise_distribution  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT / "bench" / "corpus-10000000.txt")
    parser.add_argument("--sample", type=float, default=1e-4)
    parser.add_argument("--negatives", type=int, default=5)
    args = parser.parse_args()
    if not args.corpus.is_file():
        parser.error(f"corpus not found: {args.corpus} (run compare_gensim.py once, or give --corpus)")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data=text_file", f"data.path={args.corpus}", "data.tokenizer=whitespace",
                                          "data.val_fraction=0", f"data.sample={args.sample}"])  # fmt: skip
    with open_dict(cfg):
        cfg.data.cache_dir = str(ROOT / "bench" / "cache")
    data = instantiate(cfg.data)
    counts = np.asarray(data.vocab.counts, dtype=np.float64)
    context = counts * np.asarray(data.keep_prob, dtype=np.float64)
    context /= context.sum()
    noise = noise_distribution(counts, data.hparams.ns_exponent)
    # per positive word: the chance that at least one of k draws equals it, then over positives
    per_draw = float((context * noise).sum())
    per_pair = float((context * (1 - (1 - noise) ** args.negatives)).sum())
    print(f"{args.corpus} (sample {args.sample}, {len(counts):,} words): a negative draw equals the positive with "
          f"probability {100 * per_draw:.3f} %; pairs with at least one such draw among k={args.negatives}: "
          f"{100 * per_pair:.2f} %")  # fmt: skip


if __name__ == "__main__":
    main()
