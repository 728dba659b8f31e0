"""Word2vec (skip-gram with negative sampling) in PyTorch Lightning."""

import math

from omegaconf import OmegaConf

# `${mul:a,b}` in configs, e.g. SGD's lr = alpha × batch_size
OmegaConf.register_new_resolver("mul", lambda *xs: math.prod(xs), replace=True)
# `${ceil_div:a,b}`, e.g. the updates per batch = ceil(batch_size / update_pairs); b null: 1 (one update)
OmegaConf.register_new_resolver("ceil_div", lambda a, b: -(-a // b) if b else 1, replace=True)

__version__ = "0.1.0"
