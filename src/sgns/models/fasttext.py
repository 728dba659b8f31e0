"""Subword skip-gram (fastText; Bojanowski et al. 2017): a word's input vector is the mean of its own
row and the rows of its hashed character n-grams, so rare words share what their n-grams learned
and any string, seen or not, has a vector.

    S(w) = {w's row in center_embed} ∪ {its n-gram rows in ngram_embed}   (sgns.subwords)
    h = mean of the rows of S(c)               (c: the pair's centre)        [B, d]
    pos = h · u_o,  neg = h · u_neg,  loss = -log σ(pos) - (k/K) Σ_j log σ(-neg_j)   as skip-gram

As in fastText's and gensim's skip-gram, every row of S(c) receives the hidden layer's gradient
dL/dh undivided (not the exact gradient of the mean, which would divide it by |S(c)|); ``loss``
says so to autograd with a straight-through term, so both paths make that same update. The
trained vector of a vocabulary word is its mean h; of any other string, the mean of its n-gram
rows (fastText's and gensim's rules, so exported models give the same vectors there).
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from sgns.errors import check, check_int
from sgns.models.base import Bag, Batch, Segment, WordModel
from sgns.models.device import on_host
from sgns.subwords import mean_vectors, ngram_rows


log = logging.getLogger("sgns")


def note_table_size(buckets: int, dim: int, used: int, words: int) -> None:
    """Say so when the n-gram table (and with it last.ckpt and fasttext.bin) is far larger than what
    this vocabulary uses: fastText's default of 2M buckets is sized for corpora of millions of
    words, and costs 800 MB per file (at d=100) on a corpus of a few thousand."""
    megabytes = buckets * dim * 4 / 1e6
    if megabytes < 100 or used * 20 > buckets:
        return
    smaller = min(buckets, max(100_000, math.ceil(10 * used / 100_000) * 100_000))
    log.warning(
        "fastText: model.net.buckets=%s rows of %d values make a %s MB n-gram table, and last.ckpt and fasttext.bin "
        "about as large; this vocabulary's %s words use %s of the rows. For a corpus this small, "
        "model.net.buckets=%d makes them about %s MB",
        f"{buckets:,}",
        dim,
        f"{megabytes:,.0f}",
        f"{words:,}",
        f"{used:,}",
        smaller,
        f"{smaller * dim * 4 / 1e6:,.0f}",
    )


class FastText(WordModel):
    example = "pairs"
    needs_words = True  # the n-gram rows come from the vocabulary's spellings
    # An n-gram row is shared by every word that holds it, so an update sums the gradients of all
    # its pairs on it where fastText applies them one at a time: on the 10M-token benchmark slice
    # 4,096-pair updates lost 0.013 of SimLex and 8,192 0.039, whatever the shared negatives, and
    # 32,768 under the curvature bound (model.step_bound) 17 points of analogy; 1,024 beat gensim's
    # analogy (docs/benchmarks.md)
    max_update_size = 1024
    TABLES: ClassVar[dict[str, str]] = {**WordModel.TABLES, "ngrams": "ngram_embed"}
    # A centre's input vector (about 20 n-gram rows) is made, and its rows updated, once per
    # distinct centre of an update: whole windows halve the distinct centres, for 1.4-1.5x the
    # speed at a point or two of analogy (docs/benchmarks.md); data.pair_order=sides gets those back
    pair_order = "windows"

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 100,
        words: Sequence[str] | None = None,
        min_n: int = 3,
        max_n: int = 6,
        buckets: int = 2_000_000,
        sparse: bool = False,
        objective=None,
    ):
        super().__init__(vocab_size, embedding_dim, sparse, objective)
        check_int("model.net.min_n", min_n)
        check_int("model.net.max_n", max_n)
        check_int("model.net.buckets", buckets)
        check(min_n <= max_n, f"model.net.min_n ({min_n}) must not exceed model.net.max_n ({max_n})")
        check(words is not None and len(words) == vocab_size, "the subword model needs the vocabulary's words")
        self.min_n, self.max_n, self.buckets = min_n, max_n, buckets
        self.ngram_embed = nn.Embedding(buckets, embedding_dim, sparse=sparse)  # buckets x d x 4 bytes
        for table in (self.center_embed, self.ngram_embed):  # fastText's and gensim's initialisation
            nn.init.uniform_(table.weight, -1.0 / embedding_dim, 1.0 / embedding_dim)
        offsets, rows = ngram_rows(words, min_n, max_n, buckets)  # once per run: about 2 s for 170k words
        if not self.ngram_embed.weight.is_meta:  # (not for the settings' probe, made before the vocabulary)
            note_table_size(buckets, embedding_dim, len(np.unique(rows)), vocab_size)
        # derived from the words: not saved in checkpoints, rebuilt with the model
        self.register_buffer("ngram_offsets", torch.from_numpy(offsets), persistent=False)  # [V + 1]
        self.register_buffer("ngram_rows", torch.from_numpy(rows), persistent=False)  # [total]
        # the device path pads every word's n-gram rows to the vocabulary's longest list
        self.ngram_slots = int(np.diff(offsets).max(initial=0))

    def _ngrams(self, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The n-gram rows of ``words`` [N], flat [E], and each word's count [N]."""
        start, count = self.ngram_offsets[words], self.ngram_offsets[words + 1] - self.ngram_offsets[words]
        first = torch.cumsum(count, 0) - count  # where each word's rows begin in the flat list
        total = int(count.sum())
        flat = torch.arange(total, device=words.device) + torch.repeat_interleave(
            start - first, count, output_size=total
        )
        return self.ngram_rows[flat], count

    def bag(self, batch: Batch, grouped: bool) -> Bag:
        """The centre's own row and its n-gram rows (about 20), their mean. Grouped, h is made once
        per distinct centre of the update (R of them; a word's n-grams are its costliest part) and
        its gradient, summed over the centre's pairs, reaches the centre's rows once. On a device,
        once per pair, each word's n-grams padded to the vocabulary's longest list (weighted 0):
        the distinct centres and the rows' number would be read back to the host."""
        if not on_host(batch.center):
            start = self.ngram_offsets[batch.center]
            count = self.ngram_offsets[batch.center + 1] - start  # [B]
            slots = torch.arange(self.ngram_slots, device=count.device)
            real = slots < count.unsqueeze(1)  # [B, L]
            at = torch.where(real, start.unsqueeze(1) + slots, 0)  # (the padding: the first row, weighted 0)
            rows = self.ngram_rows[at].reshape(-1)
            weights = real.reshape(-1).to(self.ngram_embed.weight.dtype)
            ngrams = Segment(self.ngram_embed, rows, torch.full_like(count, self.ngram_slots), weights)
            return Bag([Segment(self.center_embed, batch.center), ngrams], batch.context, size=count + 1)
        if grouped:
            V, update = self.center_embed.num_embeddings, batch.update_of_each()
            key = batch.center if update is None else batch.center + update * V  # (by update, then centre)
            centres, owner = torch.unique(key, return_inverse=True)  # [R], [B]
            runs = torch.bincount(owner, minlength=len(centres))
            centres = centres if update is None else centres % V
        else:
            centres, owner, runs = batch.center, None, None
        rows, count = self._ngrams(centres)
        return Bag(
            [Segment(self.center_embed, centres), Segment(self.ngram_embed, rows, count)],
            batch.context,
            size=count + 1,
            owner=owner,
            runs=runs,
        )

    def _inputs(self, words: torch.Tensor) -> torch.Tensor:
        """h [N, d] of ``words`` [N]: the mean of each one's row and its n-gram rows."""
        rows, count = self._ngrams(words)
        return mean_vectors(self.center_embed.weight[words], self.ngram_embed.weight, rows, count)

    @torch.no_grad()
    def word_vectors(self) -> torch.Tensor:
        """The vocabulary's vectors [V, d]: each word's mean of its row and its n-gram rows."""
        words = torch.arange(self.center_embed.num_embeddings, device=self.center_embed.weight.device)
        return torch.cat([self._inputs(part) for part in words.split(65536)])

    @torch.no_grad()
    def ngram_vectors(self) -> torch.Tensor:
        """The bucket table [buckets, d] (what makes vectors of words outside the vocabulary)."""
        return self.ngram_embed.weight.detach()
