"""The update of plain SGD in one process on the CPU, compiled whole (numba): one call per step.

A torch update is a few dozen operations on [E, d] temporaries; on one thread, for the few
hundred examples a lock-free worker's update holds, their dispatch and memory passes cost more
than the arithmetic, and so did the Python between a dozen separate compiled loops (in a running
worker every Python line pays several times its cost in isolation: the loops evict it from the
caches). Here the same batched updates run in one compiled call per step (``loops.ns_updates``,
``loops.hs_updates``), update after update, each with its own alpha:
- h, each input's sum (or mean) of its bag's rows (a CBOW window's, a fastText word's n-grams'),
  the rows a few further on requested from memory while the current ones are summed (fastText's
  800 MB n-gram table is far larger than the caches: 1.55x on its gather alone);
- negative sampling's positive pairs, their scores and dL/dh; the negatives shared by the update
  as three matrix products by torch's own BLAS (the ``gemm`` that ``torch.mm`` calls, so with
  torch's threads: one in a lock-free worker), their scores turned into gradients in place;
  or k negatives per target in a loop, as word2vec.c's;
- hierarchical softmax's decisions along every target's path, its inner nodes' steps (the 255
  nearest the root summed per update and written once);
- dL/dh added to every row of each input's bag, without the [E, d] copy of every row's step that
  ``scatter_add_`` needs.
Every value of an update is read before any of its rows moves. An update whose loss is read runs
alone, in two calls (``COMPUTE``, then ``APPLY``), the divergence guard between them. It is the
same update as the torch form, to float rounding (tests compare the two for every family and
objective, and a step's updates joined with the same updates one at a time); it runs on one
thread, so in a lock-free worker nothing waits. Used with SGD in one process on the CPU (a DDP
rank sends its rows to the others instead), on tables of a type numba takes, where torch's BLAS
is found; elsewhere the torch form.

The loops are in ``loops.py``. numba is imported at the first call, so commands that never train
do not pay for it, and the compiled loops are cached next to them (``cache=True``).
"""
from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from sgns.models.base import Bag, Batch

_compiled: ModuleType | None = None
DTYPES = (torch.float32, torch.float64)  # the tables' types the loops take (numba has no bfloat16)
LINE = 64  # bytes in a cache line
_GEMM = {torch.float32: "sgemm_", torch.float64: "dgemm_"}
_EMPTY = np.empty(0, dtype=np.int64)  # an absent per-input array: "one each", "none"


def load() -> ModuleType:
    """The compiled loops (``loops.py``: numba imported, and each loop compiled or read from its
    cache, at the first call)."""
    global _compiled
    if _compiled is None:
        from sgns import loops

        _compiled = loops
    return _compiled


@functools.cache
def blas(dtype: torch.dtype) -> int | None:
    """The address of the BLAS ``gemm`` that torch links (MKL's, in ``libtorch_cpu``) for tables of
    ``dtype``, checked on a small product; None where there is none (the update keeps torch's form)."""
    if dtype not in _GEMM:
        return None
    try:
        library = ctypes.CDLL(str(next((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*"))))
        address = ctypes.cast(getattr(library, _GEMM[dtype]), ctypes.c_void_p).value
    except (StopIteration, OSError, AttributeError):
        return None
    numpy_type = torch.empty(0, dtype=dtype).numpy().dtype
    a, b = np.arange(6, dtype=numpy_type).reshape(2, 3), np.arange(12, dtype=numpy_type).reshape(4, 3)
    c = np.ones((2, 4), dtype=numpy_type)
    load().matmul(address, a, False, b, True, c, 1.0)
    return address if np.array_equal(c, a @ b.T + 1) else None


def available(dtype: torch.dtype) -> bool:
    """Whether the update of tables of ``dtype`` can run compiled."""
    return dtype in DTYPES and blas(dtype) is not None


_buffers: dict[tuple[str, np.dtype], np.ndarray] = {}


def _buffer(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A scratch array of this process, reused by every update (grown when too small)."""
    size = shape[0] * (shape[1] if len(shape) > 1 else 1)
    buffer = _buffers.get((name, dtype))
    if buffer is None or len(buffer) < size:
        buffer = _buffers[name, dtype] = np.empty(max(size, 2 * (0 if buffer is None else len(buffer))), dtype=dtype)
    return buffer[:size].reshape(shape)


def _scratch(dtype: np.dtype, d: int, inputs: int, decisions: int, scored: int, k: int) -> tuple[np.ndarray, ...]:
    """h and dL/dh [inputs, d], each decision's gradient [decisions], the shared negatives' rows
    [k, d], the negatives' scores [scored, k] and the shared negatives' steps [k, d]."""
    return (
        _buffer("h", (inputs, d), dtype),
        _buffer("grad_h", (inputs, d), dtype),
        _buffer("g", (decisions,), dtype),
        _buffer("u", (k, d), dtype),
        _buffer("scores", (scored, k), dtype),
        _buffer("steps", (k, d), dtype),
    )


def _array(values: torch.Tensor | None) -> np.ndarray:
    """A tensor as the loops take it (C-contiguous); None: the empty array, "one each"."""
    return _EMPTY if values is None else np.ascontiguousarray(values.numpy())


def _bag(bag: Bag) -> tuple[tuple[np.ndarray, ...], int]:
    """The bag's segments as the loops take them (two, the second's rows empty when it has one) and
    its number of inputs."""
    arrays = []
    for table, rows, sizes, _ in bag.segments:  # (on the host every row weighs 1)
        arrays += [table.weight.detach().numpy(), _array(rows), _array(sizes)]
    if len(bag.segments) == 1:
        arrays += [arrays[0], _EMPTY, _EMPTY]
    first = bag.segments[0]
    return tuple(arrays), len(first.rows) if first.sizes is None else len(first.sizes)


def _run(
    update: Callable[[int], float], targets: int, with_loss: bool, guard: Callable[[float], object] | None
) -> float | None:
    """The phases of one update: with the loss, computed, read by ``guard`` (which raises to stop the
    run) and then applied; without, both in one call (a step's updates one after another). Returns
    the mean loss (None unless read)."""
    loops = load()
    if not with_loss:
        update(loops.BOTH)
        return None
    mean = update(loops.COMPUTE) / max(1, targets)
    guard(mean)
    update(loops.APPLY)
    return mean


def _updates(batch: Batch, scales: Sequence[float], with_loss: bool) -> tuple[np.ndarray, np.ndarray]:
    """Where each update of ``batch`` begins and ends among its targets, and each one's step."""
    offsets = _array(batch.offsets) if batch.offsets is not None else np.array([0, len(batch)], dtype=np.int64)
    if with_loss and len(offsets) != 2:
        raise ValueError("an update whose loss is read runs alone")
    return offsets, np.asarray(scales, dtype=np.float64)


def ns_update(
    bag: Bag,
    batch: Batch,
    output: torch.Tensor,
    scales: Sequence[float],
    with_loss: bool,
    guard: Callable[[float], object] | None,
) -> float | None:
    """Negative sampling's SGD updates (step ``scales[u]`` = -lr) of a bag's inputs against their
    targets and ``batch.negatives`` (shared by an update, each input's term counted ``bag.runs``
    times; or one row of k per target), each weighing ``batch.neg_weight``."""
    segments, n = _bag(bag)
    output_ = output.detach().numpy()
    offsets, scales_ = _updates(batch, scales, with_loss)
    shared, K = batch.shares_negatives(), batch.negatives.shape[1]
    targets = _array(bag.targets)
    scratch = _scratch(output_.dtype, output_.shape[1], n, len(targets), n if shared else len(targets), K)
    args = (scratch, segments, _array(bag.size), bag.mean, targets, _array(bag.owner), _array(bag.runs))
    args += (_array(batch.negatives), shared, float(batch.neg_weight), output_, scales_, offsets, with_loss)
    gemm, line = blas(output.dtype), max(1, LINE // output_.itemsize)
    return _run(lambda phase: load().ns_updates(*args, phase, gemm, line), len(targets), with_loss, guard)


def hs_update(
    bag: Bag,
    batch: Batch,
    paths: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    output: torch.Tensor,
    scales: Sequence[float],
    with_loss: bool,
    guard: Callable[[float], object] | None,
) -> float | None:
    """Hierarchical softmax's SGD updates (step ``scales[u]`` = -lr) of a bag's inputs against their
    targets' paths (``paths``: points, codes [V, L] and lengths [V]) on the inner nodes ``output``."""
    segments, n = _bag(bag)
    output_ = output.detach().numpy()
    offsets, scales_ = _updates(batch, scales, with_loss)
    points, codes, lengths = paths
    targets = _array(bag.targets)
    scratch = _scratch(output_.dtype, output_.shape[1], n, len(targets) * points.shape[1], 0, 0)
    args = (scratch, segments, _array(bag.size), bag.mean, targets, _array(bag.owner))
    args += (points.numpy(), codes.numpy(), lengths.numpy(), output_, scales_, offsets, with_loss)
    line = max(1, LINE // output_.itemsize)
    return _run(lambda phase: load().hs_updates(*args, phase, line), len(targets), with_loss, guard)


def warm(dtype: torch.dtype) -> None:
    """Compile every loop for tables of ``dtype``, or read it from numba's cache, now (about 0.3 s,
    most of it numba's own start): lock-free workers forked after this inherit the loops instead
    of each loading them at its first update."""
    from sgns.models.base import Bag, Batch, Segment

    if not available(dtype):
        return
    table = torch.nn.Embedding(2, 1).to(dtype)
    one, ones = torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)
    batch = Batch(one, one, one.view(1, 1))
    paths = (torch.zeros(2, 1, dtype=torch.int32), torch.zeros(2, 1, dtype=torch.int8), ones)
    for bag in (Bag([Segment(table, one)], one), Bag([Segment(table, one), Segment(table, one, ones)], one, ones)):
        for with_loss in (False, True):
            ns_update(bag, batch, table.weight, [0.0], with_loss, lambda _: None)
            hs_update(bag, batch, paths, table.weight, [0.0], with_loss, lambda _: None)
