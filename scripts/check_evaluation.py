"""Score vector files with our evaluation and with gensim's, side by side, with timings.

    python scripts/check_evaluation.py bench/ours-0/vectors.bin bench/gensim-0/vectors.bin
    python scripts/check_evaluation.py vectors.bin --restrict-vocab 30000 300000
    python scripts/check_evaluation.py --synthetic 30000   # time: every question answerable
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from gensim.models import KeyedVectors

from sgns.evaluation import evaluate_word_analogies, evaluate_word_pairs, gensim_test_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vectors", nargs="*", help="word2vec files (.bin binary, else text)")
    parser.add_argument("--synthetic", type=int, metavar="N",
                        help="time random 100-d vectors for every analogy word plus fillers up to N words")
    parser.add_argument("--restrict-vocab", type=int, nargs="+", default=[30000, 300000])
    args = parser.parse_args()
    logging.getLogger("gensim").setLevel(logging.WARNING)
    questions = gensim_test_file("questions-words.txt")
    if args.synthetic:
        from sgns.evaluation import read_analogies

        words = sorted({w.lower() for _, qs in read_analogies(questions) for q in qs for w in q})
        words += [f"filler{i}" for i in range(args.synthetic - len(words))]
        vectors = torch.randn(len(words), 100, generator=torch.Generator().manual_seed(0))
        started = time.perf_counter()
        result = evaluate_word_analogies(words, vectors, questions, restrict_vocab=args.synthetic)
        print(f"{result.evaluated:,} questions x {len(words):,} candidates: {time.perf_counter() - started:.2f} s")
        return
    print("| vectors | restrict_vocab | evaluator | analogy (evaluated/total) | seconds | WS353 ρ | SimLex ρ |")
    print("|---|---|---|---|---|---|---|")
    for path in args.vectors:
        kv = KeyedVectors.load_word2vec_format(path, binary=path.endswith(".bin"))
        vectors = torch.from_numpy(kv.vectors)
        for restrict in args.restrict_vocab:
            started = time.perf_counter()
            ours = evaluate_word_analogies(kv.index_to_key, vectors, questions, restrict)
            ours_s = time.perf_counter() - started
            ws = evaluate_word_pairs(kv.index_to_key, vectors, gensim_test_file("wordsim353.tsv")).spearman
            sl = evaluate_word_pairs(kv.index_to_key, vectors, gensim_test_file("simlex999.txt")).spearman
            print(f"| {path} | {restrict:,} | ours | {100 * ours.accuracy:.2f} % ({ours.evaluated:,}/{ours.total:,}) "
                  f"| {ours_s:.2f} | {ws:.4f} | {sl:.4f} |", flush=True)  # fmt: skip
            started = time.perf_counter()
            score, sections = kv.evaluate_word_analogies(str(questions), restrict_vocab=restrict)
            gensim_s = time.perf_counter() - started
            total = sections[-1]
            evaluated = len(total["correct"]) + len(total["incorrect"])
            gws = kv.evaluate_word_pairs(str(gensim_test_file("wordsim353.tsv")))[1].statistic
            gsl = kv.evaluate_word_pairs(str(gensim_test_file("simlex999.txt")))[1].statistic
            print(f"| {path} | {restrict:,} | gensim | {100 * score:.2f} % ({evaluated:,}/19,544) "
                  f"| {gensim_s:.2f} | {gws:.4f} | {gsl:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
