"""Kill a training run with SIGKILL at random moments, resume it each time, and compare the result
with an uninterrupted run of the same seed. Both train with ``trainer.deterministic=true`` (one
worker), whose resume is bit-exact; lock-free workers resume too, without that promise.

    python scripts/kill_resume.py                       # 1 epoch on the first 10M tokens, 3 kills
    python scripts/kill_resume.py --kills 5 -- data.max_tokens=1000000
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], log: Path, kill_after: float | None = None) -> tuple[int, float]:
    started = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return proc.returncode, time.perf_counter() - started


def step_of(checkpoint: Path) -> int:
    import torch

    if not checkpoint.exists():
        return 0
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def analogy(vectors: Path) -> float:
    import torch

    from sgns.cli import load_vectors
    from sgns.evaluation import evaluate_word_analogies

    v = load_vectors(vectors)
    return evaluate_word_analogies(v.words, torch.from_numpy(v.vectors), restrict_vocab=30000).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "kill_resume")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: experiment=enwiki_10m)")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    common = ["experiment=enwiki_10m", "logger=none", "callbacks.progress_bar.refresh_rate=0", "trainer.deterministic=true",
              *args.overrides]  # fmt: skip

    code, whole = run([*common, f"hydra.run.dir={args.out / 'uninterrupted'}"], args.out / "uninterrupted.log")
    assert code == 0, f"uninterrupted run failed, see {args.out / 'uninterrupted.log'}"
    print(f"uninterrupted: {whole:.0f} s", flush=True)

    rng, target = random.Random(args.seed), args.out / "killed"
    log = args.out / "killed.log"
    total = step_of(args.out / "uninterrupted" / "last.ckpt")
    startup = 20.0  # imports and corpus preparation, roughly
    for k in range(args.kills):
        resume = [f"ckpt_path={target / 'last.ckpt'}"] if (target / "last.ckpt").exists() else []
        remaining = 1 - step_of(target / "last.ckpt") / total
        moment = startup + rng.uniform(0.2, 0.8) * remaining * (whole - startup)  # somewhere in the work left
        code, seconds = run([*common, f"hydra.run.dir={target}", *resume], log, kill_after=moment)
        what = "killed with SIGKILL" if code == -signal.SIGKILL else f"ended by itself (exit {code})"
        print(f"run {k + 1}: {what} after {seconds:.0f} s; last checkpoint at step {step_of(target / 'last.ckpt')} "
              f"of {total}", flush=True)  # fmt: skip
    code, seconds = run([*common, f"hydra.run.dir={target}", f"ckpt_path={target / 'last.ckpt'}"], log)
    assert code == 0, f"resumed run failed, see {log}"
    print(f"final resume: {seconds:.0f} s", flush=True)

    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()[:16]  # noqa: E731
    a, b = args.out / "uninterrupted" / "vectors.bin", target / "vectors.bin"
    print("\n| run | analogy@30k | vectors.bin sha256 |\n|---|---|---|")
    print(f"| uninterrupted | {100 * analogy(a):.2f} % | {digest(a)} |")
    print(f"| killed {args.kills}× with SIGKILL, resumed each time | {100 * analogy(b):.2f} % | {digest(b)} |")
    print("identical vectors" if a.read_bytes() == b.read_bytes() else "vectors differ")


if __name__ == "__main__":
    main()
