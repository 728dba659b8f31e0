"""The compiled loops behind ``kernels.py`` (numba), imported at the first update that uses them.

Every loop is defined at the top level of this module, so that numba's cache (``cache=True``,
next to this file) finds it again in the next process: a loop that calls the ``prefetch``
intrinsic from inside a closure was compiled anew in every process (about a second each).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

# Inner nodes whose steps an update sums before writing them: the root and the 254 below it, on
# nearly every path. Written once per update, the rows other workers read most stop moving between
# cores at every target (2 workers on one table: 1.3x the updates of one without this, 1.7x with it).
HOT = 255
# Rows requested this far ahead of the one being read: enough to keep the memory system busy
# (a row of d = 100 floats is 7 cache lines), few enough that the requests are not dropped.
AHEAD = 8
# Fast maths without assuming finite values: sums may be reordered (they vectorise) and fused into
# FMAs, but NaN and inf propagate as IEEE says, so a diverged update's loss reaches the divergence
# guard as what it is; and a division by zero gives inf, as numpy's does, not an exception.
FAST = {"reassoc", "contract", "nsz", "arcp", "afn"}


@intrinsic
def prefetch(typingctx, table, row, column):
    """Start loading the cache line of ``table[row, column]`` (LLVM's prefetch: a read, into every
    cache level); it never waits and never faults."""

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        at = cgutils.get_item_pointer(context, builder, signature.args[0], array, [args[1], args[2]])
        byte = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte], ir.FunctionType(ir.VoidType(), [byte, i32, i32, i32])
        )
        builder.call(function, [builder.bitcast(at, byte), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(table, types.intp, types.intp), codegen


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def fetch(table, row, line):
    for k in range(0, table.shape[1], line):
        prefetch(table, row, k)


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def bag_sums(table, rows, sizes, h, divide, line):
    e = 0
    for n in range(h.shape[0]):
        h_n = h[n]
        for _ in range(1 if len(sizes) == 0 else sizes[n]):  # (no sizes: one row each)
            if e + AHEAD < len(rows):
                fetch(table, rows[e + AHEAD], line)
            row = table[rows[e]]
            e += 1
            for k in range(len(row)):
                h_n[k] += row[k]
        if len(divide):  # the bag's last segment: its mean
            inverse = 1.0 / divide[n]
            for k in range(len(h_n)):
                h_n[k] *= inverse


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def bag_steps(table, rows, sizes, grad):
    e = 0
    for n in range(grad.shape[0]):
        g = grad[n]  # [d], read once for the bag's rows
        for _ in range(1 if len(sizes) == 0 else sizes[n]):
            row = table[rows[e]]
            e += 1
            for k in range(len(row)):
                row[k] += g[k]


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def ns_positives(h, owner, targets, output, scale, grad_h, g, with_loss, line):
    loss = 0.0
    for p in range(len(targets)):
        if p + AHEAD < len(targets):
            fetch(output, targets[p + AHEAD], line)
        n = p if len(owner) == 0 else owner[p]  # (no owners: one target each)
        h_p, grad_p, row = h[n], grad_h[n], output[targets[p]]
        f = h_p[0] * 0  # (the tables' precision: float32 products vectorise)
        for k in range(len(row)):
            f += h_p[k] * row[k]
        if with_loss:  # -log σ(f)
            loss -= min(f, 0.0) - math.log1p(math.exp(-abs(f)))
        g[p] = (1.0 / (1.0 + math.exp(-f)) - 1.0) * scale  # d(scale × loss) / d f
        step = g[p]
        for k in range(len(row)):
            grad_p[k] += step * row[k]
    return loss


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def ns_negatives(scores, count, weight, scale, with_loss):
    loss = 0.0
    for n in range(scores.shape[0]):  # input n's scores against the K negatives shared by the update
        c = 1.0 if len(count) == 0 else float(count[n])  # (its positives sharing them: skip-gram's runs)
        s_n = scores[n]
        for k in range(len(s_n)):
            f = s_n[k]
            if with_loss:  # -w log σ(-f), c times
                loss -= c * weight * (min(-f, 0.0) - math.log1p(math.exp(-abs(f))))
            s_n[k] = c * weight * scale / (1.0 + math.exp(-f))  # d(scale × loss) / d f
    return loss


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def ns_steps(h, owner, targets, g, output, negatives, negative_steps):
    for p in range(len(targets)):
        row, h_p, step = output[targets[p]], h[p if len(owner) == 0 else owner[p]], g[p]
        for k in range(len(row)):
            row[k] += step * h_p[k]
    for i in range(len(negatives)):
        row, step_i = output[negatives[i]], negative_steps[i]
        for k in range(len(row)):
            row[k] += step_i[k]


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def hs_scores(h, owner, targets, points, codes, lengths, output, scale, grad_h, g, with_loss):
    loss = 0.0
    e = 0
    for p in range(len(targets)):  # 1: scores and dL/dh from the snapshot
        t = targets[p]
        n = p if len(owner) == 0 else owner[p]
        h_p, grad_p = h[n], grad_h[n]  # [d] views
        for j in range(lengths[t]):
            row = output[points[t, j]]
            f = h_p[0] * 0
            for k in range(len(row)):
                f += h_p[k] * row[k]
            if with_loss:  # -log σ(f) for code 0, -log σ(-f) for code 1
                x = f if codes[t, j] == 0 else -f
                loss -= min(x, 0.0) - math.log1p(math.exp(-abs(x)))
            # d(scale × loss) / d f: word2vec.c's -(1 - code - σ(f))
            g[e] = (1.0 / (1.0 + math.exp(-f)) - 1.0 + codes[t, j]) * scale
            step = g[e]  # (in the tables' precision)
            e += 1
            for k in range(len(row)):
                grad_p[k] += step * row[k]
    return loss


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def hs_steps(h, owner, targets, points, lengths, output, g):
    e = 0
    hot = np.zeros((HOT, output.shape[1]), dtype=output.dtype)  # the top of the tree's steps, summed here
    first_hot = output.shape[0] - HOT  # (the inner nodes near the root are the last made)
    for p in range(len(targets)):  # 2: the inner nodes' steps
        t = targets[p]
        h_p = h[p if len(owner) == 0 else owner[p]]
        for j in range(lengths[t]):
            node = points[t, j]
            row = hot[node - first_hot] if node >= first_hot else output[node]
            step = g[e]
            e += 1
            for k in range(len(row)):
                row[k] += step * h_p[k]
    for i in range(max(0, -first_hot), HOT):  # written once per update, not once per target
        row = output[first_hot + i]
        for k in range(len(row)):
            row[k] += hot[i, k]


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def cbow_windows(tokens, left, right, chosen, context, mask):
    window = context.shape[1] // 2
    for j in range(len(chosen)):  # window j: centre chosen[j]'s, its slots offsets -window..-1, 1..window
        i = chosen[j]
        for s in range(2 * window):
            offset = s - window if s < window else s - window + 1
            inside = -left[i] <= offset <= right[i]
            mask[j, s] = inside
            context[j, s] = tokens[i + offset] if inside else 0


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def subsample(tokens, sentence, draw, keep_prob, kept_tokens, kept_sentence):
    n = 0
    for i in range(len(tokens)):  # token i is kept when its draw falls below its word's keep probability
        if draw[i] < keep_prob[tokens[i]]:
            kept_tokens[n] = tokens[i]
            kept_sentence[n] = sentence[i]
            n += 1
    return n


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def reaches(sentence, reach, left, right):
    n = len(sentence)
    start = 0  # where token i's sentence begins
    for i in range(n):
        if i and sentence[i] != sentence[i - 1]:
            start = i
        left[i] = min(reach[i], i - start)
    end = n  # where token i's sentence ends
    for i in range(n - 1, -1, -1):
        if i + 1 < n and sentence[i] != sentence[i + 1]:
            end = i + 1
        right[i] = min(reach[i], end - 1 - i)


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def window_words(context, mask, words, sizes):
    e = 0
    for i in range(context.shape[0]):  # window i's words, left to right, then window i + 1's
        start = e
        for s in range(context.shape[1]):
            if mask[i, s]:
                words[e] = context[i, s]
                e += 1
        sizes[i] = e - start
    return e
