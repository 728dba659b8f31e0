"""Train word2vec (skip-gram, negative sampling): `python train.py [hydra overrides]`."""

import hydra
from omegaconf import DictConfig

from sgns.train import main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def run(cfg: DictConfig) -> float | None:
    return main(cfg)


if __name__ == "__main__":
    run()
