"""Seeds derived from a run's seed and named parts, stable across processes and Python versions."""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(seed: int, *parts: Any) -> int:
    return int(hashlib.sha1(":".join(map(str, (seed, *parts))).encode()).hexdigest()[:8], 16)


def epoch_seed(seed: int, epoch: int) -> int:
    """The generation seed of a sample's epoch: epoch 1 keeps the sample's seed (so logs of one
    epoch stay comparable trial by trial); later epochs draw new ones."""
    return seed if epoch <= 1 else derive_seed(seed, "epoch", epoch)
