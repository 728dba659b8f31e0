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
# Inner nodes requested this far ahead along a path (hierarchical softmax): a node's decisions take
# about as long as one row's load from memory; 4 was the fastest of 1 to 8 (1.35x with the
# float32 dot product, against none: scripts/update_cost.py --model skipgram --objective hs).
NODES_AHEAD = 4
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


@intrinsic
def blas_gemm(typingctx, address, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Call the BLAS ``?gemm_`` at ``address`` (Fortran's interface: every argument by pointer;
    C = alpha op(A) op(B) + beta C, column-major) on the arrays' data."""

    def codegen(context, builder, signature, args):
        byte, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        real = context.get_value_type(signature.args[12].dtype)

        def by_pointer(value, kind, as_type):
            slot = cgutils.alloca_once(builder, as_type)
            if as_type is real:
                value = context.cast(builder, value, kind, signature.args[12].dtype)
            elif as_type is byte:
                value = builder.trunc(value, byte)
            else:  # (zero-extended to 64 bits: an LP64 BLAS reads the low half, an ILP64 one the whole)
                value = builder.zext(builder.trunc(value, i32), as_type)
            builder.store(value, slot)
            return builder.bitcast(slot, byte.as_pointer())

        def data(index):
            array = context.make_array(signature.args[index])(context, builder, args[index])
            return builder.bitcast(array.data, byte.as_pointer())

        kinds = signature.args
        pointers = [
            by_pointer(args[1], kinds[1], byte),
            by_pointer(args[2], kinds[2], byte),
            *(by_pointer(args[i], kinds[i], i64) for i in (3, 4, 5)),
            by_pointer(args[6], kinds[6], real),
            data(7),
            by_pointer(args[8], kinds[8], i64),
            data(9),
            by_pointer(args[10], kinds[10], i64),
            by_pointer(args[11], kinds[11], real),
            data(12),
            by_pointer(args[13], kinds[13], i64),
        ]
        function = ir.FunctionType(ir.VoidType(), [byte.as_pointer()] * 13)
        builder.call(builder.inttoptr(args[0], function.as_pointer()), pointers)
        return context.get_dummy_value()

    return types.void(address, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), codegen


N_, T_ = ord("N"), ord("T")
COMPUTE, APPLY, BOTH = 0, 1, 2  # the phases of an update (ns_update, hs_update)


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def matmul(gemm, a, a_t, b, b_t, c, beta):
    """c [M, N] = a (or a^T) @ b (or b^T) + beta c, row-major C-contiguous arrays, by the BLAS at
    ``gemm``: a row-major matrix is its transpose in column-major, so this asks for c^T = b^T a^T."""
    M, N = c.shape
    inner = a.shape[0] if a_t else a.shape[1]
    if M == 0 or N == 0 or inner == 0:  # (BLAS refuses a leading dimension of 0)
        if beta == 0.0:
            c[:] = 0
        return
    blas_gemm(gemm, T_ if b_t else N_, T_ if a_t else N_, N, M, inner, 1.0, b, b.shape[1], a, a.shape[1], beta, c, N)


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def bag_sums(table, rows, sizes, h, line):
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
def hidden(h, grad_h, bag, size, mean, line):
    """h [N, d] of the bag's segments ((table, rows, sizes) twice; the second's rows empty: none),
    each input's mean of its ``size`` rows (``mean``; no sizes: one row) or their sum; dL/dh zeroed."""
    table, rows, sizes, table2, rows2, sizes2 = bag
    h[:] = 0
    grad_h[:] = 0
    bag_sums(table, rows, sizes, h, line)
    if len(rows2):
        bag_sums(table2, rows2, sizes2, h, line)
    if mean and len(size):
        for n in range(h.shape[0]):
            inverse = 1.0 / size[n]
            for k in range(h.shape[1]):
                h[n, k] *= inverse


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def bag_update(grad_h, bag, size, mean):
    """Every row of each input's bag moves by its dL/dh (word2vec's CBOW sum: dL/dh / its size)."""
    table, rows, sizes, table2, rows2, sizes2 = bag
    if not mean and len(size):
        for n in range(grad_h.shape[0]):
            inverse = 1.0 / max(size[n], 1)
            for k in range(grad_h.shape[1]):
                grad_h[n, k] *= inverse
    bag_steps(table, rows, sizes, grad_h)
    if len(rows2):
        bag_steps(table2, rows2, sizes2, grad_h)


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def dot(a, b):
    """a · b summed in the tables' own precision, as word2vec.c's: float32 products vectorise twice as
    wide as float64 ones (a sum started from the integer 0 would be float64: 2.4x the time of one)."""
    f = a[0] * b[0]
    for k in range(1, len(a)):
        f += a[k] * b[k]
    return f


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def log_sigmoid(x):
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def ns_positives(h, owner, targets, output, scale, grad_h, g, with_loss, line, b0, b1):
    loss = 0.0
    for p in range(b0, b1):
        if p + AHEAD < b1:
            fetch(output, targets[p + AHEAD], line)
        n = p if len(owner) == 0 else owner[p]  # (no owners: one target each)
        h_p, grad_p, row = h[n], grad_h[n], output[targets[p]]
        f = dot(h_p, row)
        if with_loss:
            loss -= log_sigmoid(f)
        g[p] = (1.0 / (1.0 + math.exp(-f)) - 1.0) * scale  # d(scale × loss) / d f
        step = g[p]
        for k in range(len(row)):
            grad_p[k] += step * row[k]
    return loss


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def ns_shared(h, negatives, count, weight, output, scale, grad_h, u, scores, steps, with_loss, gemm):
    """The K negatives shared by the update: three matrix products (BLAS) around the scores turned
    into gradients in place, each input's ``count`` times (skip-gram's runs; none: once)."""
    for i in range(len(negatives)):
        u[i] = output[negatives[i]]  # [K, d], contiguous for the products
    matmul(gemm, h, False, u, True, scores, 0.0)  # [N, K]
    loss = 0.0
    for n in range(scores.shape[0]):
        c = 1.0 if len(count) == 0 else float(count[n])
        s_n = scores[n]
        for k in range(len(s_n)):
            f = s_n[k]
            if with_loss:
                loss -= c * weight * log_sigmoid(-f)
            s_n[k] = c * weight * scale / (1.0 + math.exp(-f))  # d(scale × loss) / d f
    matmul(gemm, scores, False, u, False, grad_h, 1.0)  # dL/dh += [N, K] @ [K, d]
    matmul(gemm, scores, True, h, False, steps, 0.0)  # the negatives' steps [K, d]
    return loss


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def ns_own(h, owner, negatives, weight, output, scale, grad_h, scores, with_loss, b0, b1):
    """k negatives per target (word2vec's own): each target's input against its own negatives."""
    loss = 0.0
    for p in range(b0, b1):
        n = p if len(owner) == 0 else owner[p]
        h_p, grad_p = h[n], grad_h[n]
        for j in range(negatives.shape[1]):
            row = output[negatives[p, j]]
            f = dot(h_p, row)
            if with_loss:
                loss -= weight * log_sigmoid(-f)
            step = weight * scale / (1.0 + math.exp(-f))
            scores[p, j] = step
            for k in range(len(row)):
                grad_p[k] += step * row[k]
    return loss


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def part(values, start, end):
    """values[start:end], or the empty array ("one each", "none") as it is."""
    return values[start:end] if len(values) else values


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def run_end(targets, p, end):
    """Where the run of consecutive targets equal to targets[p] ends (at most ``end``)."""
    q = p + 1
    while q < end and targets[q] == targets[p]:
        q += 1
    return q


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def update_bounds(bag, owner, b0, b1, n0, e0, f0):
    """The end of update [b0, b1)'s inputs and of its rows in each segment, from where the previous
    update's ended (the inputs of an update follow one another: one per target, or runs and distinct
    centres that never cross an update's edge)."""
    sizes, rows2, sizes2 = bag[2], bag[4], bag[5]
    n1 = b1
    if len(owner):
        n1 = n0
        for p in range(b0, b1):
            n1 = max(n1, owner[p] + 1)
    e1 = n1 if len(sizes) == 0 else e0 + sizes[n0:n1].sum()
    f1 = 0 if len(rows2) == 0 else n1 if len(sizes2) == 0 else f0 + sizes2[n0:n1].sum()
    return n1, e1, f1


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def spans(bag, owner, offsets):
    """Where each update's inputs, and its rows in each segment, begin and end: [U + 1] each."""
    inputs, rows, rows2 = np.zeros(len(offsets), np.int64), np.zeros(len(offsets), np.int64), np.zeros(len(offsets), np.int64)
    for up in range(len(offsets) - 1):
        inputs[up + 1], rows[up + 1], rows2[up + 1] = update_bounds(
            bag, owner, offsets[up], offsets[up + 1], inputs[up], rows[up], rows2[up]
        )
    return inputs, rows, rows2


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def update_views(bag, size, h, grad_h, walk, up):
    """Update ``up``'s part of the bag, of h and dL/dh, and of the inputs' sizes."""
    inputs, rows, rows2 = walk
    n0, n1, e0, e1, f0, f1 = inputs[up], inputs[up + 1], rows[up], rows[up + 1], rows2[up], rows2[up + 1]
    table, rows_, sizes, table2, rows2_, sizes2 = bag
    part_bag = (table, rows_[e0:e1], part(sizes, n0, n1), table2, rows2_[f0:f1], part(sizes2, n0, n1))
    return part_bag, h[n0:n1], grad_h[n0:n1], part(size, n0, n1)


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def ns_updates(
    scratch, bag, size, mean, targets, owner, count, negatives, shared, weight, output, scales, offsets, with_loss,
    phase, gemm, line,
):  # fmt: skip
    """Negative sampling's SGD updates of a step, one after another (update u: the targets
    offsets[u] .. offsets[u + 1], step scales[u], shared negatives negatives[u] or each target's
    row), with their bag: phase ``COMPUTE`` reads the tables (every value read before any row moves)
    and returns the summed loss (0 unless ``with_loss``); ``APPLY`` then lands the steps, from what
    the first call left in ``scratch``; ``BOTH`` does both, update by update."""
    h, grad_h, g, u, scores, steps = scratch
    loss, walk = 0.0, spans(bag, owner, offsets)
    for up in range(len(offsets) - 1):
        b0, b1, n0, n1 = offsets[up], offsets[up + 1], walk[0][up], walk[0][up + 1]
        inputs, h_u, grad_u, size_u = update_views(bag, size, h, grad_h, walk, up)
        if phase != APPLY:
            hidden(h_u, grad_u, inputs, size_u, mean, line)
            loss += ns_positives(h, owner, targets, output, scales[up], grad_h, g, with_loss, line, b0, b1)
            if shared:
                loss += ns_shared(
                    h_u, negatives[up], part(count, n0, n1), weight, output, scales[up], grad_u, u,
                    scores[: n1 - n0], steps, with_loss, gemm,
                )  # fmt: skip
            else:
                loss += ns_own(h, owner, negatives, weight, output, scales[up], grad_h, scores, with_loss, b0, b1)
        if phase != COMPUTE:
            for p in range(b0, b1):
                row, h_p, step = output[targets[p]], h[p if len(owner) == 0 else owner[p]], g[p]
                for k in range(len(row)):
                    row[k] += step * h_p[k]
            if shared:
                for j in range(negatives.shape[1]):
                    row = output[negatives[up, j]]
                    for k in range(len(row)):
                        row[k] += steps[j, k]
            else:
                for p in range(b0, b1):
                    h_p = h[p if len(owner) == 0 else owner[p]]
                    for j in range(negatives.shape[1]):
                        row, step = output[negatives[p, j]], scores[p, j]
                        for k in range(len(row)):
                            row[k] += step * h_p[k]
            bag_update(grad_u, inputs, size_u, mean)
    return loss


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def hs_updates(
    scratch, bag, size, mean, targets, owner, points, codes, lengths, output, scales, offsets, with_loss, phase, line
):
    """Hierarchical softmax's SGD updates of a step, in the phases of ``ns_updates``: the decisions
    along every target's path, then the inner nodes' steps (the ``HOT`` nearest the root summed and
    written once per update) and the bag's. Consecutive targets that are the same word (skip-gram's
    centre, its pairs side by side) walk their path together: each node row is read, and written,
    once for the run; the decision of pair r at node j sits at g[e + (r - p) L + j]."""
    h, grad_h, g = scratch[0], scratch[1], scratch[2]
    loss, walk = 0.0, spans(bag, owner, offsets)
    first_hot = output.shape[0] - HOT  # (the inner nodes near the root are the last made: in the caches)
    for up in range(len(offsets) - 1):
        b0, b1 = offsets[up], offsets[up + 1]
        inputs, h_u, grad_u, size_u = update_views(bag, size, h, grad_h, walk, up)
        if phase != APPLY:
            hidden(h_u, grad_u, inputs, size_u, mean, line)
            e, p = 0, b0
            while p < b1:  # a run of pairs with one target: each node row read once for the run
                t, q = targets[p], run_end(targets, p, b1)
                L = lengths[t]
                for j in range(L):  # (the node NODES_AHEAD further on requested from memory meanwhile)
                    if j + NODES_AHEAD < L and points[t, j + NODES_AHEAD] < first_hot:
                        fetch(output, points[t, j + NODES_AHEAD], line)
                    row = output[points[t, j]]
                    for r in range(p, q):
                        n = r if len(owner) == 0 else owner[r]
                        h_p, grad_p = h[n], grad_h[n]
                        f = dot(h_p, row)
                        if with_loss:  # -log σ(f) for code 0, -log σ(-f) for code 1
                            loss -= log_sigmoid(f if codes[t, j] == 0 else -f)
                        at = e + (r - p) * L + j
                        # d(scale × loss) / d f: word2vec.c's -(1 - code - σ(f))
                        g[at] = (1.0 / (1.0 + math.exp(-f)) - 1.0 + codes[t, j]) * scales[up]
                        step = g[at]
                        for k in range(len(row)):
                            grad_p[k] += step * row[k]
                e += (q - p) * L
                p = q
        if phase != COMPUTE:
            e, p = 0, b0
            hot = np.zeros((HOT, output.shape[1]), dtype=output.dtype)  # the top of the tree's steps, summed here
            while p < b1:
                t, q = targets[p], run_end(targets, p, b1)
                L = lengths[t]
                for j in range(L):
                    if j + NODES_AHEAD < L and points[t, j + NODES_AHEAD] < first_hot:
                        fetch(output, points[t, j + NODES_AHEAD], line)
                    node = points[t, j]
                    row = hot[node - first_hot] if node >= first_hot else output[node]
                    for r in range(p, q):
                        h_p = h[r if len(owner) == 0 else owner[r]]
                        step = g[e + (r - p) * L + j]
                        for k in range(len(row)):
                            row[k] += step * h_p[k]
                e += (q - p) * L
                p = q
            for i in range(max(0, -first_hot), HOT):  # written once per update, not once per target
                row = output[first_hot + i]
                for k in range(len(row)):
                    row[k] += hot[i, k]
            bag_update(grad_u, inputs, size_u, mean)
    return loss


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
