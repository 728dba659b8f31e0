"""scripts/gpu_bench.py runs where there is no GPU too, so that it cannot rot before one is at hand."""

import re
import subprocess
import sys
from pathlib import Path

from gensim.test.utils import datapath

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_runs_on_the_cpu_and_prints_a_row_per_family_and_size(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_bench.py"), "--device", "cpu", "--corpus",
         datapath("lee_background.cor"), "--max-tokens", "20000", "--sizes", "256,1024", "--models",
         "skipgram,cbow,fasttext", "--buckets", "5000", "--", "data.min_count=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| (skipgram|cbow|fasttext) \| ([\d,]+) \| [\d.]+ \| [\d,]+ \| [\d,]+ \| [\d.]+ % \|", result.stdout, re.M)
    assert rows == [(m, s) for m in ("skipgram", "cbow", "fasttext") for s in ("256", "1,024")], result.stdout
    assert "20,000 tokens, 1 epoch" in result.stdout and "sync check: skipped (no CUDA" in result.stdout
