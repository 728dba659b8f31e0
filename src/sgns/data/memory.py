"""Keeping the trainer's memory flat: preparation in a child process whose memory goes back to the
system when it ends, and pages of memory-mapped files handed back once read."""

from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import signal
import sys
import traceback
from typing import Callable

import numpy as np
import pyarrow as pa

from sgns.errors import Word2VecError


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters


def reuse_freed_memory() -> None:
    """Keep the memory of freed tensors in the process for the next ones, instead of handing every
    block of 128 kB or more back to the system (glibc's default: the next tensor of that size then
    page-faults its memory in afresh, zeroed by the kernel). A training step makes the same
    temporaries (megabytes each) again and again: reusing them saved about a quarter of a
    skip-gram update's time. A no-op off glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # blocks up to 32 MB (glibc's most) come from the reusable heap
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # and what is freed stays for reuse
    mallopt(_M_TOP_PAD, 64 << 20)


def run_apart(work: Callable[[], None], leftover: Callable[[int], None] = lambda pid: None) -> None:
    """Run ``work`` in a forked child process (on Linux; elsewhere here), re-raising its error.

    Preparation imports much of ``datasets`` and fills Arrow's memory pool; done apart, all of
    that goes back to the system when the child ends, and training starts from the import floor
    plus what it needs (the cache entry is on disk, memory-mapped by the parent). The child and
    its ``datasets.map`` workers form their own process group, outside the terminal's: Ctrl-C
    reaches the parent alone, which ends the whole group and calls ``leftover(child pid)`` to
    remove what the child left half-written, then stops with KeyboardInterrupt.
    """
    if not sys.platform.startswith("linux"):
        return work()
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        os.setpgid(0, 0)
        try:
            work()
            error = None
        except BaseException as exc:  # noqa: BLE001 (handed to the parent, which raises it)
            error = exc
        try:
            send.send(error)
        except Exception:  # an unpicklable error: its text is enough
            send.send(RuntimeError("".join(traceback.format_exception(error))))

    process = context.Process(target=child, name="sgns-prepare")
    process.start()
    send.close()
    try:
        error = receive.recv()
    except EOFError:  # the child ended without a word: killed, out of memory
        error = EOFError
    except KeyboardInterrupt:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.join()
        leftover(process.pid)
        raise
    finally:
        process.join()
    if error is EOFError:
        error = Word2VecError(
            f"corpus preparation stopped without a result (exit code {process.exitcode}; out of memory?)"
        )
    if error is not None:
        raise error


def _madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc.madvise
    except (OSError, AttributeError):
        return None


_MADVISE = _madvise() if sys.platform.startswith("linux") else None


_MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages (file-backed ones are simply dropped)


def page_out(column: pa.Array | pa.ChunkedArray) -> None:
    """Hand the pages of a batch's text back to the kernel once tokenised.

    The text is a memory-mapped Arrow file; pages read would otherwise stay resident in this
    process until the whole pass ends, so the workers' RSS would grow to the corpus size.
    Only whole pages inside the batch's bytes are advised; nothing is lost (they are re-read
    from the file if ever touched again). A no-op off Linux or on older kernels.
    """
    if _MADVISE is None:
        return
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if len(chunk) == 0 or not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
            continue
        _, offsets_buffer, data = chunk.buffers()
        if data is None:
            continue
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if pa.types.is_large_string(chunk.type) else np.int32)
        _advise_pages_inside(
            data.address + int(offsets[chunk.offset]),
            data.address + int(offsets[chunk.offset + len(chunk)]),
            _MADV_PAGEOUT,
        )


def _advise_pages_inside(start: int, end: int, advice: int) -> None:
    """madvise the whole pages within the addresses [start, end) (none of a neighbour's bytes)."""
    start = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    end = end // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start:
        _MADVISE(start, end - start, advice)


_MADV_DONTNEED = 4


def release_pages(array: np.ndarray, start: int, stop: int) -> None:
    """Drop this process's resident pages of ``array[start:stop]``, a read-only memory-mapped
    array: they are re-read from the file if touched again. Training copies a chunk's ids and
    releases them, so its memory does not grow with the corpus. A no-op for in-memory arrays
    and off Linux."""
    stop = min(stop, len(array))  # never past the mapping
    if _MADVISE is None or not isinstance(array, np.memmap) or array.flags.writeable or stop <= start:
        return
    base = int(array.ctypes.data)
    _advise_pages_inside(base + int(start) * array.itemsize, base + int(stop) * array.itemsize, _MADV_DONTNEED)
