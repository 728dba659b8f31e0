"""``init_from``: a new run that starts from an earlier run's tables or from word2vec-format vectors.

- A checkpoint (``.ckpt``, any family) gives its vocabulary with its counts and every table: the
  input rows, the output rows and fastText's n-gram rows. The run must train the same family and
  objective, with the same dimension (and for fastText the same ``min_n``, ``max_n``, ``buckets``).
- A vectors file (``vectors.bin`` / ``vectors.txt``: ours, gensim's, the C tool's, published
  ones) gives words and input rows; the output rows start at zero, as word2vec starts them.
The data module reads the new corpus with that vocabulary (``data/continued.py``); the rows of the
earlier words are copied to their ids, and the new words' rows are initialised as word2vec does.
Hierarchical softmax rebuilds its tree from the merged counts, so its inner nodes start at zero.
alpha starts again from ``model.alpha``. ``ckpt_path`` stays the exact resume of one run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sgns.errors import check

log = logging.getLogger("sgns")

FAMILY_KEYS = ("model.net.min_n", "model.net.max_n", "model.net.buckets")  # what shapes fastText's n-gram rows


@dataclass
class Earlier:
    """What ``init_from`` gives: the words in id order, their counts (None for a vectors file), the
    tables by role (``WordModel.TABLES``) and the checkpoint's model settings (empty for a file)."""

    source: str
    words: list[str]
    counts: np.ndarray | None
    tables: dict[str, torch.Tensor]
    settings: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.tables["vectors"].shape[1]


def load(path: str | Path) -> Earlier:
    """A checkpoint's vocabulary and tables, or a word2vec file's words and vectors."""
    from sgns.models import FAMILIES
    from sgns.outputs import DATA_KEY, read_checkpoint
    from sgns.vectors import WordVectors

    path = Path(path)
    check(path.is_file(), f"init_from={path}: file not found")
    if path.suffix != ".ckpt":
        vectors = WordVectors.load_word2vec_format(path)  # (a word's second row is dropped, as gensim drops it)
        return Earlier(str(path), vectors.words, None, {"vectors": torch.from_numpy(vectors.vectors)})
    checkpoint = read_checkpoint(path)
    state, settings = checkpoint["state_dict"], checkpoint.get("resume_settings", {})
    family = FAMILIES.get(settings.get("model.net"))
    check(family is not None, f"init_from={path}: the checkpoint does not say which model trained it")
    tables = {role: state[family.state_key(role)] for role in family.TABLES if family.state_key(role) in state}
    data = checkpoint[DATA_KEY]
    return Earlier(str(path), list(data["words"]), np.asarray(data["counts"], dtype=np.int64), tables, settings)


def check_fits(earlier: Earlier, settings: dict, dim: int) -> None:
    """The earlier tables must fit the run's (``settings``: the module's ``resume_settings``)."""
    where = f"init_from={earlier.source}"
    check(
        earlier.dim == dim,
        f"{where} holds vectors of dimension {earlier.dim}; this run's model.net.embedding_dim is {dim}",
    )
    if not earlier.settings:
        return
    for key in ("model.net", "model.objective", *FAMILY_KEYS):
        theirs, ours = earlier.settings.get(key), settings.get(key)
        check(
            theirs == ours,
            f"{where} was trained with {key}={theirs}; this run has {key}={ours}: its tables cannot carry over "
            "(a vectors file carries the input rows to any model)",
        )


@torch.no_grad()
def start_from(net, earlier: Earlier, objective: str) -> None:
    """Copy the earlier rows into the new tables: the earlier words' rows at their ids (the first
    ones), fastText's n-gram rows whole; hierarchical softmax's inner nodes stay at zero."""
    tables = net.tables()
    for role, rows in earlier.tables.items():
        if role == "outputs" and objective == "hs":
            log.info("init_from: the Huffman tree is rebuilt from the merged counts; its inner nodes start at zero")
            continue
        target = tables[role] if role == "ngrams" else tables[role][: len(rows)]
        target.copy_(rows.to(target.dtype))
    log.info("init_from: the tables start from %s (%s words)", earlier.source, f"{len(earlier.words):,}")
