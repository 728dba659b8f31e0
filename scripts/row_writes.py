"""What adding a CBOW update's gradient to its window words' rows costs, written several ways.

    python scripts/row_writes.py                      # one thread, the 10M slice's sizes
    python scripts/row_writes.py --threads 2 --rounds 9

A CBOW update of 4,096 (centre, context) pairs holds about 723 centres; each window word's row
receives its centre's dL/dh. The words are drawn from a Zipf-like distribution over ``--vocab``
rows of d = 100 (about the share of repeats of real updates). Each variant adds the same sums:
- ``scatter_add``: gather each word's gradient row, ``scatter_add_`` into the table (ours);
- ``index_add``: the same with ``index_add_``;
- ``unique+index_add``: sum the rows of each distinct word first (``torch.unique``), then add;
- ``csr+index_add``: sort the words, sum each word's centres with a sparse CSR product, then add;
- ``sort only``: ``torch.sort`` of the words alone, the step the two before need.
Prints the median and the lowest microseconds per update over ``--rounds`` rounds, the variants
alternating within each round.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=53_444)
    parser.add_argument("--rows", type=int, default=4096, help="window words in the update")
    parser.add_argument("--centres", type=int, default=723)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
    d = 100
    table = torch.randn(args.vocab, d)
    weights = 1.0 / torch.arange(1, args.vocab + 1, dtype=torch.float64) ** 0.9
    words = torch.multinomial(weights, args.rows, replacement=True)
    owner = torch.sort(torch.randint(0, args.centres, (args.rows,))).values  # each word's centre
    grad_h = torch.randn(args.centres, d) * 1e-3

    def scatter_add() -> None:
        table.scatter_add_(0, words.unsqueeze(1).expand(args.rows, d), grad_h.index_select(0, owner))

    def index_add() -> None:
        table.index_add_(0, words, grad_h.index_select(0, owner))

    def unique_index_add() -> None:
        unique, inverse = torch.unique(words, return_inverse=True)
        table.index_add_(0, unique, torch.zeros(len(unique), d).index_add_(0, inverse, grad_h.index_select(0, owner)))

    def csr_index_add() -> None:
        ordered, perm = torch.sort(words)
        unique, counts = torch.unique_consecutive(ordered, return_counts=True)
        crow = torch.zeros(len(unique) + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=crow[1:])
        matrix = torch.sparse_csr_tensor(crow, owner[perm], torch.ones(args.rows), (len(unique), args.centres), check_invariants=False)
        table.index_add_(0, unique, matrix @ grad_h)

    def sort_only() -> None:
        torch.sort(words)

    variants = {"scatter_add": scatter_add, "index_add": index_add, "unique+index_add": unique_index_add,
                "csr+index_add": csr_index_add, "sort only": sort_only}  # fmt: skip
    micros: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, variant in variants.items() if r % 2 == 0 else reversed(variants.items()):
            for _ in range(20):
                variant()
            started = time.perf_counter()
            for _ in range(200):
                variant()
            micros[name].append((time.perf_counter() - started) / 200 * 1e6)
    print(f"{args.rows} rows of d={d} from {args.centres} centres, {len(torch.unique(words))} distinct words, "
          f"{args.threads} thread(s): microseconds per update, median (lowest) of {args.rounds} rounds")  # fmt: skip
    for name, values in micros.items():
        values.sort()
        print(f"  {name:<17} {values[len(values) // 2]:7.0f} ({values[0]:.0f})")


if __name__ == "__main__":
    main()
