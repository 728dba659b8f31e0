"""Train word2vec (skip-gram, negative sampling): `python train.py [hydra overrides]`."""

import os

# Hydra hands its own errors (bad overrides, an unwritable run directory) back instead of printing
# a trimmed traceback: they end as one `error:` line, like every other bad input
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from sgns.train import main, one_line_errors  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def run(cfg: DictConfig) -> float | None:
    return main(cfg)


if __name__ == "__main__":
    with one_line_errors():
        run()
