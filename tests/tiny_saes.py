"""SAEs built in tests whose encode reads a direction's coefficient exactly."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_orthonormal(sae, folder: Path, seed: int) -> Path:
    """W_enc = W_dec^T with orthonormal rows and no biases, so a clamp can be read back at the
    layer; saved with a label per latent."""
    d_in, d_sae = sae.W_enc.shape
    q, _ = torch.linalg.qr(torch.randn(d_in, d_sae, generator=torch.Generator().manual_seed(seed)))
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.save_model(folder)
    (folder / "labels.json").write_text(json.dumps({str(i): f"topic ({i})" for i in range(d_sae)}))
    return folder
