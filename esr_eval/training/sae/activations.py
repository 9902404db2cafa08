"""Residual-stream activations at one decoder layer over corpus documents.

The forward pass stops right after the hooked layer (later layers and the unembedding are
skipped). Positions before each document's `skip` and positions whose norm exceeds
`max_norm_ratio` x the median norm are dropped: the first tokens after BOS carry norms two
orders of magnitude above the rest and would take over the SAE's reconstruction budget.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch
from tqdm import tqdm

from esr_eval.steering.hooks import decoder_layers
from esr_eval.steering.models import cache_dir


@dataclass
class Activations:
    acts: torch.Tensor  # [N, d_model], collection dtype
    tokens: torch.Tensor  # [N] token id at each kept position
    doc: torch.Tensor  # [N] document index
    pos: torch.Tensor  # [N] position inside the document

    def __len__(self) -> int:
        return int(self.acts.shape[0])

    def select(self, keep: torch.Tensor) -> "Activations":
        return Activations(self.acts[keep], self.tokens[keep], self.doc[keep], self.pos[keep])


class _StopForward(Exception):
    pass


@torch.inference_mode()
def collect(model, docs: list[dict], layer: int, batch_tokens: int = 8192, desc: str = "activations") -> Activations:
    """Activations at the output of decoder layer `layer` for every kept position of `docs`."""
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def hook(module, args, output):
        captured.append((output[0] if isinstance(output, tuple) else output).detach())
        raise _StopForward

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]["ids"]))
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    try:
        with tqdm(total=sum(len(d["ids"]) for d in docs), desc=desc, unit="tok") as bar:
            start = 0
            while start < len(order):
                end = start + 1
                while end < len(order) and len(docs[order[end]]["ids"]) * (end - start + 1) <= batch_tokens:
                    end += 1
                batch = [order[i] for i in range(start, end)]
                width = max(len(docs[i]["ids"]) for i in batch)
                ids = torch.zeros(len(batch), width, dtype=torch.long)
                mask = torch.zeros(len(batch), width, dtype=torch.long)
                for b, i in enumerate(batch):  # right padding: positions are 0..n-1 for each row
                    row = docs[i]["ids"]
                    ids[b, : len(row)] = torch.tensor(row)
                    mask[b, : len(row)] = 1
                captured.clear()
                try:
                    model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                except _StopForward:
                    pass
                h = captured[0].cpu()
                for b, i in enumerate(batch):
                    n, skip = len(docs[i]["ids"]), docs[i]["skip"]
                    parts.append(
                        (h[b, skip:n], ids[b, skip:n].to(torch.int32),
                         torch.full((n - skip,), i, dtype=torch.int32), torch.arange(skip, n, dtype=torch.int32))
                    )
                bar.update(sum(len(docs[i]["ids"]) for i in batch))
                start = end
    finally:
        handle.remove()
    acts, tokens, doc, pos = (torch.cat([p[j] for p in parts]) for j in range(4))
    return Activations(acts, tokens, doc, pos)


def drop_outliers(data: Activations, max_norm_ratio: float, median_norm: float | None = None) -> tuple[Activations, float]:
    """Drop positions whose norm exceeds `max_norm_ratio` x the median (given, or this set's)."""
    norms = data.acts.float().norm(dim=-1)
    median = float(norms.median()) if median_norm is None else median_norm
    return data.select(norms <= max_norm_ratio * median), median


def docs_key(docs: list[dict], model: str, layer: int, dtype: str) -> str:
    blob = json.dumps([model, layer, dtype, [d["ids"] for d in docs], [d["skip"] for d in docs]])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def cached_collect(model, docs: list[dict], layer: int, model_name: str, dtype: str, desc: str) -> Activations:
    """`collect`, cached as safetensors under the user cache dir (written atomically)."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / "sae_acts" / f"{docs_key(docs, model_name, layer, dtype)}.safetensors"
    if path.exists():
        t = load_file(str(path))
        return Activations(t["acts"], t["tokens"], t["doc"], t["pos"])
    data = collect(model, docs, layer, desc=desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file({"acts": data.acts.contiguous(), "tokens": data.tokens, "doc": data.doc, "pos": data.pos}, str(tmp))
    os.replace(tmp, path)
    return data
