"""Where an update runs: on the host (the CPU), or on a device that must not be waited for.

On the CPU an update may read values back (the sizes of data-dependent selections,
``torch.unique``, runs of a centre): that is free. On a GPU each read stalls its queue, so every
family and objective has a device path that reads nothing back, its data-dependent shapes padded
to bounds known in advance (a window's slots, the vocabulary's longest path or n-gram list), the
padding weighted 0. Both paths make the same update (tests compare them on the CPU).
"""

from __future__ import annotations

import torch

DEVICE_PATH_ON_CPU = False  # true: the CPU takes the device path too (tests/test_host_reads.py sets it)


def on_host(t: torch.Tensor) -> bool:
    """Whether an update of tensors on ``t``'s device may read values back to the host."""
    return t.device.type == "cpu" and not DEVICE_PATH_ON_CPU
