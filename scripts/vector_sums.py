"""Score a checkpoint's input vectors w against w + c (input plus output vectors, Levy et al. 2015)
and the sum of the two unit vectors, with the bundled benchmarks.

    python scripts/vector_sums.py outputs/runs/<time>/last.ckpt [more.ckpt ...]

Prints analogy@30k, WS353 ρ and SimLex ρ for each. (Measured on the 3-epoch benchmark models,
w + c scored lower than w in all three: docs/benchmarks.md; so no export of it is offered.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from sgns.outputs import DATA_KEY, VECTORS_KEY, read_checkpoint  # noqa: E402
from sgns.evaluation import evaluate_all  # noqa: E402

OUTPUTS_KEY = VECTORS_KEY.replace("center_embed", "outside_embed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args()
    print("| checkpoint | vectors | analogy@30k | WS353 ρ | SimLex ρ |\n|---|---|---|---|---|")
    for path in args.checkpoints:
        checkpoint = read_checkpoint(path)
        words = checkpoint[DATA_KEY]["words"]
        w, c = (checkpoint["state_dict"][key].float() for key in (VECTORS_KEY, OUTPUTS_KEY))
        for name, vectors in [("w", w), ("w + c", w + c), ("unit w + unit c", F.normalize(w, dim=1) + F.normalize(c, dim=1))]:
            scores = evaluate_all(words, vectors)  # analogy@30k, WS353, SimLex: what training reports
            print(f"| {path} | {name} | {100 * scores['analogy']:.1f} % | {scores['ws353']:.3f} | {scores['simlex']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
