"""`sgns` command: evaluate and query vectors from a checkpoint or any word2vec file.

sgns evaluate outputs/runs/<time>/last.ckpt            # table of benchmark scores
sgns evaluate vectors.bin --restrict-vocab 300000 --json scores.json
sgns most-similar vectors.bin king woman --negative man
sgns similarity vectors.bin monday tuesday
sgns doesnt-match vectors.bin monday tuesday friday police
sgns export last.ckpt vectors.txt
sgns phrases outputs/runs/<time> --top 30                # the phrases its corpus joined (data.phrases)
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

from sgns.errors import Word2VecError, check

# torch and the rest are imported once a command runs (inside main's handlers): `sgns --help` is
# quick, and a Ctrl-C during those imports is a stop, not a traceback


def load_vectors(path: str | Path):
    """Word vectors (``WordVectors``) from a Lightning checkpoint (``.ckpt``, loaded with
    weights_only), a fastText model (``fasttext.bin``: vectors for any word) or a word2vec file."""
    from sgns.models import FastText
    from sgns.outputs import DATA_KEY, NGRAMS_KEY, VECTORS_KEY, read_checkpoint
    from sgns.vectors import SubwordVectors, WordVectors, is_facebook_format

    path = Path(path)
    check(path.is_file(), f"file not found: {path}")
    if is_facebook_format(path):
        return SubwordVectors.load_facebook_format(path)
    if path.suffix != ".ckpt":
        return WordVectors.load_word2vec_format(path)
    checkpoint = read_checkpoint(path)
    vocab, weights = checkpoint[DATA_KEY], checkpoint["state_dict"][VECTORS_KEY]
    check(len(vocab["words"]) == len(weights), f"{path}: vocabulary and weights disagree")
    if NGRAMS_KEY in checkpoint["state_dict"]:  # a subword model: its vectors are means with the n-gram rows
        settings = checkpoint.get("resume_settings", {})  # (a checkpoint older than model_args)
        args = checkpoint.get("model_args") or {k.removeprefix("model.net."): v for k, v in settings.items()}
        defaults = inspect.signature(FastText).parameters
        min_n, max_n = (args.get(k, defaults[k].default) for k in ("min_n", "max_n"))
        ngrams = checkpoint["state_dict"][NGRAMS_KEY]
        return SubwordVectors(vocab["words"], weights, ngrams, min_n, max_n, vocab["counts"], str(path))
    return WordVectors(vocab["words"], weights, vocab["counts"], source=str(path))


def load_phrases(path: str | Path):
    """The phrases (``PhraseTable``) a run's corpus joined: from its directory, its checkpoint or a ``phrases.tsv``."""
    from sgns.data.cache import PHRASES_FILE
    from sgns.data.phrases import PhraseTable
    from sgns.outputs import DATA_KEY, read_checkpoint

    path = Path(path)
    check(path.exists(), f"not found: {path}")
    if path.is_dir():
        found = [p for p in (path / PHRASES_FILE, path / "last.ckpt") if p.is_file()]
        check(bool(found), f"{path} holds neither {PHRASES_FILE} nor last.ckpt: not a run directory")
        path = found[0]
    if path.suffix != ".ckpt":
        return PhraseTable.load(path)
    state = read_checkpoint(path)[DATA_KEY]
    check("phrases" in state, f"{path}: its corpus was prepared without phrases (data.phrases=0)")
    return PhraseTable.from_state(state["phrases"])


def _evaluate(args: argparse.Namespace) -> dict:
    import torch

    from sgns.bundled import BENCHMARKS
    from sgns.evaluation import evaluate_word_analogies, evaluate_word_pairs

    vectors = load_vectors(args.vectors)
    unit = torch.from_numpy(vectors.vectors)
    results: dict = {"vectors": str(args.vectors), "words": len(vectors), "dim": vectors.vector_size}
    started = time.perf_counter()
    for path in args.analogies or [BENCHMARKS["analogy"]]:
        r = evaluate_word_analogies(vectors.words, unit, path, args.restrict_vocab, args.method)
        results[f"analogy:{Path(path).name}"] = {
            "accuracy": r.accuracy,
            "semantic": r.semantic,
            "syntactic": r.syntactic,
            "correct": r.correct,
            "evaluated": r.evaluated,
            "total": r.total,
            "method": "3CosAdd" if r.method == "add" else "3CosMul",
            "restrict_vocab": r.restrict_vocab,
            "sections": {k: {"correct": c, "evaluated": n} for k, (c, n) in r.sections.items()},
        }
    for name, path in _word_pair_files(args.pairs).items():
        r = evaluate_word_pairs(vectors.words, unit, path, oov_vector=getattr(vectors, "get_vector", None))
        results[f"pairs:{name}"] = {"spearman": r.spearman, "pairs": r.pairs, "oov": r.oov, "oov_ratio": r.oov_ratio}
        if r.spearman_with_oov is not None:  # subword vectors: the unknown words' pairs scored too
            results[f"pairs:{name}"]["spearman_with_oov"] = r.spearman_with_oov
    results["seconds"] = time.perf_counter() - started
    return results


def _word_pair_files(specs: list[str] | None) -> dict[str, str]:
    """``--pairs``: NAME=FILE, or a bundled set by its name (ws353, simlex); default both."""
    from sgns.bundled import BENCHMARKS

    bundled = {k: BENCHMARKS[k] for k in ("ws353", "simlex")}
    files = {}
    for spec in specs or bundled:
        name, _, path = spec.partition("=")
        check(
            bool(path) or name in bundled,
            f"--pairs {spec}: give NAME=FILE or one of the bundled sets: {', '.join(bundled)}",
        )
        files[name] = path or bundled[name]
    return files


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


_positive_int.__name__ = "integer >= 1"  # argparse names the type in its message


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one ``error:`` line (exit 2) instead of the usage text."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _print_evaluation(results: dict) -> None:
    print(f"{results['vectors']}: {results['words']:,} words, d={results['dim']}")
    for key, r in results.items():
        if key.startswith("analogy:"):
            print(
                f"\n{key[8:]} ({r['method']}, restrict_vocab={r['restrict_vocab']:,}): "
                f"{100 * r['accuracy']:.2f} % of {r['evaluated']:,}/{r['total']:,} questions evaluated "
                f"(semantic {100 * r['semantic']:.2f} %, syntactic {100 * r['syntactic']:.2f} %)"
            )
            print(f"  {'section':<28} {'accuracy':>9} {'correct':>8} {'evaluated':>10}")
            for name, s in r["sections"].items():
                acc = f"{100 * s['correct'] / s['evaluated']:.2f} %" if s["evaluated"] else "-"
                print(f"  {name:<28} {acc:>9} {s['correct']:>8,} {s['evaluated']:>10,}")
    print(f"\n  {'word pairs':<28} {'spearman':>9} {'pairs':>8} {'oov':>10}")
    for key, r in results.items():
        if key.startswith("pairs:"):
            print(f"  {key[6:]:<28} {r['spearman']:>9.4f} {r['pairs']:>8,} {100 * r['oov_ratio']:>9.1f}%")
            if "spearman_with_oov" in r:
                print(f"  {'  with oov (n-grams)':<28} {r['spearman_with_oov']:>9.4f} {r['pairs'] + r['oov']:>8,}")
    print(f"\nevaluated in {results['seconds']:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="sgns", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    ev = sub.add_parser("evaluate", help="analogy and word-similarity benchmarks")
    ev.add_argument("vectors", help="last.ckpt, vectors.bin or vectors.txt (ours, gensim's or word2vec.c's)")
    ev.add_argument("--restrict-vocab", type=_positive_int, default=30000, help="candidates: the N most frequent words")
    ev.add_argument("--method", choices=["add", "mul"], default="add", help="3CosAdd (default) or 3CosMul")
    ev.add_argument("--analogies", nargs="*", help="analogy files (default: questions-words.txt from gensim)")
    ev.add_argument("--pairs", nargs="*", help="NAME=FILE word-pair files, or ws353 / simlex (default: both)")
    ev.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    ms = sub.add_parser("most-similar", help="nearest words to positive - negative")
    ms.add_argument("vectors")
    ms.add_argument("positive", nargs="*")
    ms.add_argument("-n", "--negative", nargs="*", default=[])
    ms.add_argument("--topn", type=_positive_int, default=10)
    si = sub.add_parser("similarity", help="cosine similarity of two words")
    si.add_argument("vectors")
    si.add_argument("a")
    si.add_argument("b")
    dm = sub.add_parser("doesnt-match", help="the word that fits least with the others")
    dm.add_argument("vectors")
    dm.add_argument("words", nargs="+")
    ex = sub.add_parser("export", help="write vectors (e.g. from a checkpoint) in word2vec format")
    ex.add_argument("vectors")
    ex.add_argument("output", type=Path, help=".bin for binary, anything else for text")
    ph = sub.add_parser("phrases", help="the phrases a run's corpus joined (data.phrases), best first")
    ph.add_argument("run", help="a run directory, its last.ckpt, or a phrases.tsv")
    ph.add_argument("--top", type=_positive_int, help="only the N best of each pass")
    args = parser.parse_args(argv)
    try:
        from sgns.outputs import write_atomically

        if hasattr(sys.stdout, "reconfigure"):  # a word the terminal's encoding lacks is printed escaped
            sys.stdout.reconfigure(errors="backslashreplace")
        if args.command == "evaluate":
            results = _evaluate(args)
            _print_evaluation(results)
            if args.json:
                write_atomically(args.json, lambda p: p.write_text(json.dumps(results, indent=1)))
        elif args.command == "most-similar":
            for word, score in load_vectors(args.vectors).most_similar(args.positive, args.negative, args.topn):
                print(f"{word}\t{score:.4f}")
        elif args.command == "similarity":
            print(f"{load_vectors(args.vectors).similarity(args.a, args.b):.4f}")
        elif args.command == "doesnt-match":
            print(load_vectors(args.vectors).doesnt_match(args.words))
        elif args.command == "export":
            vectors = load_vectors(args.vectors)
            write_atomically(
                args.output, lambda p: vectors.save_word2vec_format(p, binary=args.output.suffix == ".bin")
            )
            print(args.output)
        elif args.command == "phrases":
            table = load_phrases(args.run)
            print(table.HEADER)
            shown: dict[int, int] = {}
            for phrase, score, count, found_in in zip(*table.state().values()):
                shown[found_in] = shown.get(found_in, 0) + 1
                if args.top is None or shown[found_in] <= args.top:
                    print(f"{phrase}\t{score:.6g}\t{count}\t{found_in}")
    except Word2VecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable input, unwritable output
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
