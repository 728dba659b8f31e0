"""Word2vec (skip-gram with negative sampling) in PyTorch Lightning."""

from omegaconf import OmegaConf


def ceil_div(a: int, b: int | None) -> int:
    """ceil(a / b); b null: 1. The updates per batch, ceil(batch_size / update_pairs), in the configs
    (`${ceil_div:a,b}`) and in the data module."""
    return -(-a // b) if b else 1


OmegaConf.register_new_resolver("ceil_div", ceil_div, replace=True)

__version__ = "0.1.0"
