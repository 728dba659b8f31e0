"""The curvature bound (``model.step_bound=curvature``): what lets large updates train.

Plain SGD moves a row by the sum of its pairs' steps. In an update of a few hundred pairs a row
occurs a few times; in one of 32,768 a frequent word's row occurs hundreds of times, its steps
all computed at the same old values, and their sum overshoots: the run diverges
(``docs/benchmarks.md``, "GPU").

The bound looks at each distinct row's summed step S along its own direction e = S / |S|. Along
that line the update's loss is a sum of -log σ(±s) over the scores s the row takes part in, so
its second derivative is

    κ = Σ_scores w σ'(s) (∂s/∂t)²,   ∂s/∂t = a (the score's other row · e),

with w what the score counts for (k/K and the runs of a shared negative's term) and a the row's
share of h (1 for an output row and for skip-gram's input; 1 / size in a mean bag, its weight in
a sum). The Newton step along e is t* = -(∇L · e) / κ; a longer step goes past the minimum of
that quadratic, so the bound cuts S to it:

    S <- S min(1, t* / |S|),        for plain SGD's S = -alpha ∇L:  min(1, 1 / (alpha κ)).

The rows of a bag (CBOW's window, fastText's word and n-grams) move together, and each receives
its input's whole dL/dh: a² is replaced by a A, A the bag's summed shares. By Cauchy-Schwarz,
(Σ a_e t_e x_e)² <= A Σ a_e t_e² x_e², so the rows' separate steps are safe together; for one
window alone this is exactly h's own condition, alpha × (h's curvature along its step) <= 1.
Without it fastText diverged at 32,768 pairs.

A row that occurs a few times has alpha κ far below 1 and keeps its step. ``auto`` leaves the
bound off at the default update sizes, where the summed steps train as well as word2vec's own.
Under DDP a rank sees 1/W of the update's scores, so it bounds with W × alpha.

It runs in the torch form (the compiled CPU loops leave it out, so an update under the bound takes
the torch form), on a device without reading anything back to the host: distinct rows by sorting
into padded slots, every input's scores in the device path's fixed number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sgns.models.device import on_host
from sgns.models.objectives import Decisions

if TYPE_CHECKING:
    from sgns.models.base import Bag, Update

STEP_BOUNDS = ("auto", "curvature", "none")  # model.step_bound
# auto: bounded above this many pairs per update (all ranks'). Skip-gram and CBOW trained the
# 40M-token corpus at 8,192 as well as at the default without it; at 16,384 and beyond they diverged.
BOUND_ABOVE = 8192
CHUNK = 1 << 22  # scalars of a temporary [rows, d] or [rows, K] at most (16 MB of float32)
TINY = 1e-30  # below this a step or a curvature counts as none


def _chunks(n: int, width: int) -> list[slice]:
    step = max(1, CHUNK // max(1, width))
    return [slice(a, min(n, a + step)) for a in range(0, n, step)]


def _distinct(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(keys, return_inverse=True)`` with nothing read back to the host: the distinct
    keys sorted, in [M] slots (those beyond the last distinct one hold the dtype's largest value, so
    the slots stay sorted for ``searchsorted``), and each key's slot [M]."""
    ordered, order = torch.sort(keys)
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[1:] = ordered[1:] != ordered[:-1]
    slot = torch.cumsum(new, 0) - 1
    distinct = torch.full_like(keys, torch.iinfo(keys.dtype).max).scatter_(0, slot, ordered)
    return distinct, torch.empty_like(slot).scatter_(0, order, slot)


def _directions(rows: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The distinct rows [M slots, ``_distinct``], each occurrence's slot [M], each distinct row's
    summed step's length [M] and its direction e [M, d] (an empty slot: 0 and 0)."""
    unique, inverse = _distinct(rows)
    summed = torch.zeros(len(unique), steps.shape[1], dtype=steps.dtype, device=steps.device)
    summed.index_add_(0, inverse, steps)
    length = summed.norm(dim=1)
    return unique, inverse, length, summed / length.clamp_min(TINY).unsqueeze(1)


def _sparse(partner: torch.Tensor, e: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """weight (partner · e)², score by score: [M] for partner and e [M, d], weights [M]."""
    return weights * (partner * e).sum(dim=1).square()


def _shared(
    e: torch.Tensor, shared: torch.Tensor, weights: torch.Tensor, which: torch.Tensor | None = None
) -> torch.Tensor:
    """Σ_k w[m, k] (e_m · shared_k)²: [M] for directions e [M, d] and shared rows [K, d]; w = weights
    [M, K], or its rows ``which`` [M]."""
    total = torch.empty(len(e), dtype=e.dtype, device=e.device)
    for part in _chunks(len(e), len(shared)):
        w = weights[part] if which is None else weights.index_select(0, which[part])
        total[part] = ((e[part] @ shared.T).square() * w).sum(dim=1)
    return total


def _factor(along: torch.Tensor, kappa: torch.Tensor, length: torch.Tensor, lr: float) -> torch.Tensor:
    """Each distinct row's min(1, t* / |S|), t* = ``along`` / (lr κ) its Newton step (``along``: the
    step's own direction's descent, -∇L · e, times lr)."""
    return (along / (lr * kappa).clamp_min(TINY) / length.clamp_min(TINY)).clamp(0.0, 1.0)


def bound_outputs(h: torch.Tensor, decisions: Decisions, outputs: list[Update], lr: float) -> list[Update]:
    """The output rows' updates, each distinct row's summed step cut to its Newton step."""
    rows = torch.cat([r for _, r, _ in outputs])
    unique, inverse, length, e = _directions(rows, torch.cat([s for _, _, s in outputs]))
    kappa = torch.zeros(len(unique), dtype=h.dtype, device=h.device)
    at = torch.searchsorted(unique, decisions.rows)  # (every scored row is an updated one)
    for part in _chunks(len(at), h.shape[1]):
        partner = h.index_select(0, decisions.inputs[part])
        kappa.index_add_(0, at[part], _sparse(partner, e.index_select(0, at[part]), decisions.weights[part]))
    if decisions.shared_rows is not None:  # shared row k against every input: Σ_n w_nk (h_n · e_k)²
        at = torch.searchsorted(unique, decisions.shared_rows)
        kappa.index_add_(0, at, _shared(e.index_select(0, at), h, decisions.shared_weights.T))
    factor = _factor(length, kappa, length, lr)  # (an output row's step is -lr ∇L: t* / |S| = 1 / (lr κ))
    cut, start = [], 0
    for table, r, s in outputs:
        cut.append((table, r, s * factor[inverse[start : start + len(r)]].unsqueeze(1)))
        start += len(r)
    return cut


def _scores_of(owner: torch.Tensor, count: torch.Tensor, each: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For occurrences of inputs ``owner`` [O], each input n having ``count[n]`` scores: every
    (occurrence, its input's j-th score) as two arrays. On the host as they come; on a device every
    input has ``each`` (its path's slots, its k negatives: the device path pads them), so the sizes
    are known without reading ``count`` back."""
    if on_host(owner):
        reps = count.index_select(0, owner)
        o = torch.repeat_interleave(torch.arange(len(owner), device=owner.device), reps)
        return o, torch.arange(len(o), device=owner.device) - (torch.cumsum(reps, 0) - reps).index_select(0, o)
    o = torch.arange(len(owner), device=owner.device).repeat_interleave(each, output_size=len(owner) * each)
    return o, torch.arange(len(o), device=owner.device) % max(1, each)


def bound_inputs(
    bag: Bag, grad_h: torch.Tensor, decisions: Decisions, output: torch.Tensor, inputs: list[Update], lr: float
) -> list[Update]:
    """The input rows' updates (a segment's each), each distinct row's summed step cut to its Newton
    step. ``grad_h`` [N, d]: -lr ∇L of each h (before a sum's division)."""
    N = len(grad_h)
    # the scores of each input, found from it: the decisions sorted by input, and where its own begin
    order = torch.argsort(decisions.inputs, stable=True)
    count = torch.zeros(N, dtype=torch.long, device=grad_h.device).index_add_(
        0, decisions.inputs, torch.ones_like(decisions.inputs)
    )
    first = torch.cumsum(count, 0) - count
    shared = None if decisions.shared_rows is None else output.index_select(0, decisions.shared_rows)
    segments = []  # each segment's input of each row and ∂h / ∂row: 1 / size for a mean, the row's weight for a sum
    for segment in bag.segments:
        owner, weights = segment.owners(N), segment.weights
        share = torch.ones(len(owner), dtype=grad_h.dtype, device=owner.device) if weights is None else weights
        if bag.size is not None and bag.mean:
            share = share / bag.size.index_select(0, owner).to(share.dtype)
        segments.append((owner, share))
    # A_n: the shares of input n's whole bag. Its rows move together, and by Cauchy-Schwarz
    # (Σ_e a_e t_e x_e)² <= A_n Σ_e a_e t_e² x_e²: a row's curvature taken as a_e A_n (not a_e²) per
    # score makes the rows' separate Newton steps safe together (1 for skip-gram's one row)
    bag_share = torch.zeros(N, dtype=grad_h.dtype, device=grad_h.device)
    for owner, share in segments:
        bag_share.index_add_(0, owner, share)
    cut = []
    for (param, rows, steps), (owner, share) in zip(inputs, segments):
        unique, inverse, length, e = _directions(rows, steps)
        # a row twice in one input (a word twice in a window) moves its h by both shares at once
        pair, at = _distinct(owner * len(unique) + inverse)  # (an empty slot: input N, share 0)
        pair = torch.where(pair < N * len(unique), pair, N * len(unique))
        owner, distinct = pair // len(unique), pair % len(unique)  # [O]: each (input, row) once
        owner = owner.clamp(max=N - 1)
        share = torch.zeros(len(pair), dtype=share.dtype, device=share.device).index_add_(0, at, share)
        e_rows = e.index_select(0, distinct)  # [O, d]: each occurrence's direction
        coupled = share * bag_share.index_select(0, owner)  # a_e A_n
        along = torch.zeros_like(length).index_add_(
            0, distinct, share * (grad_h.index_select(0, owner) * e_rows).sum(1)
        )  # -lr ∇L · e
        kappa = torch.zeros_like(length)
        # every score of each occurrence's input (occurrence o, score j): Σ w_j (u_j · e)²
        o, within = _scores_of(owner, count, len(decisions.inputs) // N)
        j = order[first.index_select(0, owner)[o] + within]
        for part in _chunks(len(o), e.shape[1]):
            oo, jj = o[part], j[part]
            u = output.index_select(0, decisions.rows[jj])
            term = _sparse(u, e_rows.index_select(0, oo), decisions.weights[jj]) * coupled[oo]
            kappa.index_add_(0, distinct[oo], term)
        if shared is not None:
            term = _shared(e_rows, shared, decisions.shared_weights, owner) * coupled
            kappa.index_add_(0, distinct, term)
        factor = _factor(along, kappa, length, lr)
        cut.append((param, rows, steps * factor.index_select(0, inverse).unsqueeze(1)))
    return cut
