"""Word2vec (skip-gram and CBOW with negative sampling) in PyTorch Lightning."""

__version__ = "0.1.0"
