"""Ours against gensim at convergence: several epoch counts and seeds on the whole corpus, one table.

    python scripts/convergence.py                              # skip-gram, 1 and 3 epochs, seeds 1 and 2
    python scripts/convergence.py --epochs 3 --ours-only -- data.shared_negatives=0   # an ablation of ours
    python scripts/convergence.py --models fasttext --seeds 1  # subwords, + rare words

Each (epochs, seed) is one run of ``compare_gensim.py`` (both sides in their own processes, the
order alternating, the same evaluation of both vector files: analogy over the 30,000 most
frequent words, WS353 and SimLex-999 Spearman ρ); this script prints every run and the mean over
seeds of each side, the differences ours - gensim and the ratio of training speed. Hydra overrides
after ``--`` go to our trainer; ``--ours-only`` trains and scores ours alone (for ablations, whose
gensim side is the same as the defaults' run). The corpus comes from ``--corpus`` or ``$SGNS_ENWIKI``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_gensim import (  # noqa: E402
    DEFAULT_CORPUS,
    GENSIM_INPUTS,
    ROOT,
    build_parser,
    drop_models,
    evaluate,
    ours_command,
    rare_word_pairs,
    rare_word_score,
    run_dir,
    run_measured,
    write_slice,
)

SCORES = ("analogy", "ws353", "simlex")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="text or .gz corpus, one sentence per line")
    parser.add_argument("--max-tokens", type=int, default=0, help="first N tokens; 0 = all")
    parser.add_argument("--epochs", default="1,3", help="comma-separated epoch counts")
    parser.add_argument("--seeds", default="1,2", help="comma-separated seeds")
    parser.add_argument("--models", default="skipgram", help="comma-separated: skipgram, cbow, fasttext")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "convergence")
    parser.add_argument("--ours-only", action="store_true", help="train and score ours alone")
    parser.add_argument("--gensim-input", default=GENSIM_INPUTS[0], choices=GENSIM_INPUTS,
                        help="compare_gensim.py's: gensim's corpus_file mode or a LineSentence iterator")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for our trainer (after --)")
    args = parser.parse_args()
    if args.corpus is None:
        parser.error("no corpus: give --corpus PATH or set SGNS_ENWIKI")
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / f"corpus-{args.max_tokens or 'all'}.txt"
    tokens = write_slice(args.corpus, args.max_tokens, corpus)
    runs = []
    for epochs in [int(e) for e in args.epochs.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = args.out / f"epochs{epochs}-seed{seed}"
            out.mkdir(exist_ok=True)
            if args.ours_only:
                runs += [{**ours_alone(args, corpus, out, model, epochs, seed), "epochs": epochs, "seed": seed}
                         for model in args.models.split(",")]  # fmt: skip
                continue
            for suffix in (".txt", ".tokens"):  # the slice once, shared by every run
                link = out / corpus.with_suffix(suffix).name
                if not link.exists():
                    link.symlink_to(corpus.with_suffix(suffix).resolve())
            cmd = [sys.executable, str(ROOT / "scripts" / "compare_gensim.py"), "--corpus", str(corpus), "--max-tokens", "0",
                   "--epochs", str(epochs), "--seed", str(seed), "--models", args.models, "--out", str(out),
                   "--gensim-input", args.gensim_input,
                   *(["--", *args.overrides] if args.overrides else [])]  # fmt: skip
            print(f"epochs {epochs}, seed {seed}: {' '.join(cmd[1:])}", flush=True)
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            (out / "compare.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                sys.exit(f"compare_gensim.py failed (exit {done.returncode}); see {out / 'compare.log'}")
            for row in json.loads((out / "results.json").read_text())["runs"]:
                runs.append({**row, "epochs": epochs, "seed": seed})
    print(f"\ncorpus: {corpus} ({tokens:,} tokens); ours: {' '.join(args.overrides) or 'defaults'}\n")
    print("| model | epochs | seed | side | train s | analogy@30k | WS353 ρ | SimLex ρ | rare@10 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['model']} | {r['epochs']} | {r['seed']} | {r['name']} | {r['train_s']:.1f} | {100 * r['analogy']:.1f} % | "
              f"{r['ws353']:.3f} | {r['simlex']:.3f} | {rare(r)} |")  # fmt: skip
    print("\nmean over seeds:\n")
    print("| model | epochs | side | train s | analogy@30k | WS353 ρ | SimLex ρ | rare@10 | ours/gensim words/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, epochs in dict.fromkeys((r["model"], r["epochs"]) for r in runs):
        sides = {name: [r for r in runs if (r["model"], r["epochs"], r["name"]) == (model, epochs, name)] for name in ("ours", "gensim")}
        keys = ("train_s", *SCORES, *(("rare@10",) if model == "fasttext" else ()))
        means = {name: {k: mean(r[k] for r in rows) for k in keys} for name, rows in sides.items() if rows}
        if not sides["gensim"]:
            m = means["ours"]
            print(f"| {model} | {epochs} | ours | {m['train_s']:.1f} | {100 * m['analogy']:.2f} % | {m['ws353']:.3f} | {m['simlex']:.3f} | "
                  f"{rare(m)} | |")  # fmt: skip
            continue
        speed = mean(g["train_s"] / o["train_s"] for o, g in zip(sides["ours"], sides["gensim"]))  # within each seed's run
        for name, m in means.items():
            print(f"| {model} | {epochs} | {name} | {m['train_s']:.1f} | {100 * m['analogy']:.2f} % | {m['ws353']:.3f} | "
                  f"{m['simlex']:.3f} | {rare(m)} | {f'{speed:.2f}' if name == 'ours' else ''} |")  # fmt: skip
        diff = {k: means["ours"][k] - means["gensim"][k] for k in keys[1:]}
        rare_diff = f"{100 * diff['rare@10']:+.1f} points" if "rare@10" in diff else ""
        print(f"| {model} | {epochs} | ours - gensim | | {100 * diff['analogy']:+.2f} points | {diff['ws353']:+.3f} | "
              f"{diff['simlex']:+.3f} | {rare_diff} | |")  # fmt: skip


def rare(row: dict) -> str:
    """The rare-word score (subword family only), or blank."""
    return f"{100 * row['rare@10']:.1f} %" if "rare@10" in row else ""


def ours_alone(args: argparse.Namespace, corpus: Path, out: Path, model: str, epochs: int, seed: int) -> dict:
    """Our trainer with compare_gensim.py's settings (its defaults: d=100, window 5, k=5, sample 1e-4, min_count 5)."""
    settings = build_parser().parse_args(["--epochs", str(epochs), "--seed", str(seed), "--", *args.overrides])
    target = run_dir(out / f"ours-{model}")
    code, _, _ = run_measured(ours_command(settings, corpus, target, model=model), target / "log.txt")
    if code != 0:
        sys.exit(f"ours failed (exit {code}); see {target / 'log.txt'}")
    metrics = json.loads((target / "metrics.json").read_text())
    print(f"  ours {model}, {epochs} epoch(s), seed {seed}: train {metrics['train_s']:.1f} s", flush=True)
    scores = evaluate(target / "vectors.bin")
    if model == "fasttext":
        scores["rare@10"] = rare_word_score(target / "fasttext.bin", rare_word_pairs(corpus, settings.min_count))
    drop_models(target)
    return {"name": "ours", "model": model, "train_s": metrics["train_s"], **scores}


if __name__ == "__main__":
    main()
