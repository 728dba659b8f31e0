"""Loops compiled with numba for the CPU, where torch's own operators leave speed behind.

Imported at the first CPU update (``optim.apply_sgd``): numba's import and the load of its
compiled code (cached on disk after the first compilation) cost about a second, which commands
that never train (the CLI, a run refused for bad input) do not pay.
"""

from __future__ import annotations

import numba
import numpy as np

NO_SOURCE = np.empty(0, dtype=np.int64)


@numba.njit(parallel=True, cache=True)
def add_rows(table, rows, steps, source, threads):  # pragma: no cover (compiled)
    """table[rows[e]] += steps[source[e]] (``source`` empty: steps[e]), each row in the order of ``rows``.

    Each of ``threads`` threads owns the rows r with r % threads == t and walks the whole list: no
    two threads write one row (no races, no shared cache lines), and every row's sum is taken in the
    same order whatever the number of threads, so the result is the same bit for bit. Indices are
    not checked here."""
    d = table.shape[1]
    for t in numba.prange(threads):
        for e in range(rows.shape[0]):
            r = rows[e]
            if r % threads == t:
                s = source[e] if source.shape[0] else e
                for j in range(d):
                    table[r, j] += steps[s, j]
