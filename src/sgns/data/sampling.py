"""The three random ingredients of SGNS, as vectorised tensor code.

- frequent-word subsampling (word2vec.c / gensim keep formula),
- dynamic windows (reach drawn uniformly from 1..window per centre token),
- negatives from the unigram distribution raised to ``ns_exponent`` (alias method, O(1) a draw).

Each runs on the device of its inputs and generator (CPU or CUDA), so batches can be made
where training runs.
"""

from __future__ import annotations

import numpy as np
import torch

from sgns import kernels
from sgns.errors import check
from sgns.models.device import on_host


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """P(keep w) = min(1, sqrt(t/f) + t/f), f = count/total (after min_count), t = ``sample``."""
    counts = np.asarray(counts, dtype=np.float64)
    if sample <= 0:
        return np.ones_like(counts)
    threshold = sample * counts.sum()
    with np.errstate(divide="ignore"):  # (a count of 0, an init_from word absent from the corpus: kept, never seen)
        return np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts)


def noise_distribution(counts: np.ndarray, exponent: float = 0.75) -> np.ndarray:
    """Unigram distribution raised to ``exponent`` and normalised."""
    weights = np.asarray(counts, dtype=np.float64) ** exponent
    return weights / weights.sum()


class AliasSampler:
    """Exact O(1) sampling from a discrete distribution (Walker/Vose alias method)."""

    def __init__(self, probs: np.ndarray):
        n = len(probs)
        scaled = np.asarray(probs, dtype=np.float64) * n / np.sum(probs)
        prob = np.ones(n)
        alias = np.arange(n)
        small = [i for i in range(n) if scaled[i] < 1.0]
        large = [i for i in range(n) if scaled[i] >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            prob[s], alias[s] = scaled[s], g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        # leftovers keep prob 1 (rounding error only)
        self.prob = torch.as_tensor(prob, dtype=torch.float64)
        self.alias = torch.as_tensor(alias, dtype=torch.long)
        self._tables = {self.prob.device: (self.prob, self.alias)}

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws on the generator's device (the tables are copied there once)."""
        device = generator.device if generator is not None else self.prob.device
        if device not in self._tables:
            self._tables[device] = (self.prob.to(device), self.alias.to(device))
        prob, alias = self._tables[device]
        column = torch.randint(0, len(prob), shape, generator=generator, device=device)
        coin = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
        return torch.where(coin < prob[column], column, alias[column])


def subsample(
    tokens: torch.Tensor, sentence: torch.Tensor, keep_prob: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop each token independently with 1 - keep_prob[token]; windows are formed afterwards. (On
    the host one compiled pass keeps them: torch's boolean selection cost 0.12 s of each 10M
    tokens' 0.2 s, paid when an epoch's pairs are counted and again when they are made.)"""
    draw = torch.rand(len(tokens), generator=generator, dtype=torch.float64, device=tokens.device)
    if on_host(tokens):
        kept_tokens, kept_sentence = torch.empty_like(tokens), torch.empty_like(sentence)
        n = kernels.load().subsample(
            tokens.numpy(),
            sentence.numpy(),
            draw.numpy(),
            keep_prob.numpy(),
            kept_tokens.numpy(),
            kept_sentence.numpy(),
        )
        return kept_tokens[:n], kept_sentence[:n]
    keep = draw < keep_prob[tokens.long()]
    return tokens[keep], sentence[keep]


def _reach_dtype(window: int) -> torch.dtype:
    """The reaches are drawn as int16 (half the memory of int32) unless the window does not fit."""
    return torch.int16 if window < 2**15 else torch.int32


def _reaches(sentence: torch.Tensor, window: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each centre's reach b_i (drawn uniformly from 1..window), cut at its sentence's ends:
    how many contexts it has to its left and to its right."""
    n, device = len(sentence), sentence.device
    reach = torch.randint(1, window + 1, (n,), generator=generator, dtype=_reach_dtype(window), device=device).long()
    if on_host(sentence):  # one compiled pass
        left, right = torch.empty_like(reach), torch.empty_like(reach)
        kernels.load().reaches(sentence.numpy(), reach.numpy(), left.numpy(), right.numpy())
        return left, right
    first = torch.ones(n, dtype=torch.bool, device=device)
    first[1:] = sentence[1:] != sentence[:-1]
    starts = torch.nonzero(first).squeeze(1)
    lengths = torch.diff(starts, append=torch.tensor([n], device=device))
    position = torch.arange(n, device=device) - torch.repeat_interleave(starts, lengths)
    after = torch.repeat_interleave(lengths, lengths) - 1 - position
    return torch.minimum(reach, position), torch.minimum(reach, after)


def skipgram_pair_count(sentence: torch.Tensor, window: int, generator: torch.Generator) -> int:
    """len() of what ``skipgram_pairs`` would return for these sentence ids and this generator
    state (the same draw of reaches), without building the pairs."""
    if len(sentence) < 2:
        return 0
    left, right = _reaches(sentence, window, generator)
    return int((left + right).sum())


def skipgram_pairs(
    tokens: torch.Tensor, sentence: torch.Tensor, window: int, generator: torch.Generator, order: str = "plain"
) -> tuple[torch.Tensor, torch.Tensor]:
    """All (centre, context) pairs of a token sequence under dynamic windows.

    Each centre i draws a reach b_i uniformly from 1..window and pairs with every token at
    distance <= b_i in the same sentence, on both sides (as word2vec.c). One vectorised pass
    per distance, no per-token loop (``order="plain"``: by distance, not shuffled). ``"sides"``
    returns the same pairs side by side: each centre's left contexts together and its right
    contexts together, left to right, the 2n sides in a random order (drawn next from
    ``generator``). ``"windows"``: each centre's whole window together, left to right, the n
    windows in a random order.
    """
    check(order in ("plain", "sides", "windows"), f"unknown pair order {order!r}")
    n = len(tokens)
    if order in ("sides", "windows"):
        if n < 2:
            return tokens[:0], tokens[:0]
        left, right = (side.int() for side in _reaches(sentence, window, generator))  # int32: half the memory
        # side s < n is the left of centre s, side s >= n the right of centre s - n
        if order == "sides":
            sides = torch.randperm(2 * n, generator=generator, dtype=torch.int32, device=tokens.device)
        else:  # each window's left side, then its right side
            windows = torch.randperm(n, generator=generator, dtype=torch.int32, device=tokens.device)
            sides = torch.stack([windows, windows + n], dim=1).flatten()
        counts = torch.cat([left, right]).index_select(0, sides)
        total = int(counts.sum())

        def per_pair(per_side: torch.Tensor) -> torch.Tensor:
            return torch.repeat_interleave(per_side, counts, output_size=total)

        centre = per_pair(sides % n)  # [pairs] centre positions
        offset = torch.arange(total, dtype=torch.int32, device=tokens.device)  # then each pair's slot on its side,
        offset -= per_pair(torch.cumsum(counts, 0, dtype=torch.int32) - counts)
        offset += per_pair(torch.where(sides >= n, 1, -counts))  # then its offset: -b..-1 (left), 1..b (right)
        return tokens.index_select(0, centre), tokens.index_select(0, offset.add_(centre))
    reach = torch.randint(1, window + 1, (n,), generator=generator, dtype=_reach_dtype(window), device=tokens.device)
    centres, contexts = [], []
    for d in range(1, min(window, n - 1) + 1):
        same = sentence[d:] == sentence[:-d]
        forward = torch.nonzero(same & (reach[:-d] >= d)).squeeze(1)  # centre i, context i + d
        backward = torch.nonzero(same & (reach[d:] >= d)).squeeze(1)  # centre i + d, context i
        centres += [tokens.index_select(0, forward), tokens.index_select(0, backward + d)]
        contexts += [tokens.index_select(0, forward + d), tokens.index_select(0, backward)]
    if not centres:
        empty = tokens[:0]
        return empty, empty
    return torch.cat(centres), torch.cat(contexts)


def cbow_windows(
    tokens: torch.Tensor, sentence: torch.Tensor, window: int, generator: torch.Generator, shuffle: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every centre with the words of its dynamic window, as word2vec.c's CBOW reads them.

    Each centre i draws a reach b_i uniformly from 1..window (the same draws as ``skipgram_pairs``)
    and takes the tokens at distance <= b_i on both sides within its sentence. Returns the centres
    [N], the windows [N, 2 x window] (slot s: offset s - window, or s - window + 1 past the centre)
    and their mask; centres whose window is empty (one-word sentences) are left out. ``shuffle``:
    the windows in a random order (drawn next from ``generator``). On the CPU one compiled pass
    (``loops.py``) writes them, shuffled, with no [N, 2 x window] temporary; the same windows.
    """
    n, device = len(tokens), tokens.device
    slots = 2 * window
    if n < 2:
        return tokens[:0], tokens.new_zeros(0, slots), torch.zeros(0, slots, dtype=torch.bool, device=device)
    left, right = _reaches(sentence, window, generator)
    if on_host(tokens):  # (a device path reads no size back: below)
        kept = torch.nonzero((left + right) > 0).squeeze(1)  # [N]
        order = torch.randperm(len(kept), generator=generator) if shuffle else torch.arange(len(kept))
        chosen = kept.index_select(0, order)
        centres, context = tokens.index_select(0, chosen), tokens.new_empty(len(chosen), slots)
        mask = torch.empty(len(chosen), slots, dtype=torch.bool)
        kernels.load().cbow_windows(
            tokens.numpy(), left.numpy(), right.numpy(), chosen.numpy(), context.numpy(), mask.numpy()
        )
        return centres, context, mask
    offsets = torch.cat([torch.arange(-window, 0, device=device), torch.arange(1, window + 1, device=device)])  # [2W]
    mask = (offsets >= -left.unsqueeze(1)) & (offsets <= right.unsqueeze(1))  # [n, 2W]
    keep = mask.any(dim=1)
    position = (torch.arange(n, device=device).unsqueeze(1) + offsets).clamp_(0, n - 1)
    context = tokens[position].masked_fill_(~mask, 0)
    parts = tokens[keep], context[keep], mask[keep]
    if not shuffle:
        return parts
    order = torch.randperm(len(parts[0]), generator=generator, device=device)
    return tuple(p.index_select(0, order) for p in parts)
