"""Continuous batching for the Hugging Face backend: the rows decoding together, their left-padded
KV cache, and a per-row sampler.

Hugging Face's `generate` runs one fixed batch with one temperature and one RNG; here rows join
(prefilled on their own, then merged into the cache) and leave (their cache rows dropped) between
decode steps, each with its own seed, temperature, top-p, repetition penalty and token budget.
A row's tokens depend only on its own request: its positions count its own tokens, padding is
masked, and its random draws come from its own generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from esr_eval.steering.dictionary import FeatureDictionary
from esr_eval.steering.engine import GenerationRequest, GenerationResult
from esr_eval.steering.hooks import BatchSteering

Outcome = Callable[["GenerationResult | BaseException"], None]


@dataclass
class DecodeRow:
    request: GenerationRequest
    prompt: list[int]
    dictionary: FeatureDictionary | None
    generator: torch.Generator
    done: Outcome  # receives the result (or the error), through `finish`, once
    tokens: list[int] = field(default_factory=list)
    finished: bool = False

    def finish(self, outcome: "GenerationResult | BaseException") -> None:
        if not self.finished:
            self.finished = True
            self.done(outcome)


def _cache_layers(cache) -> list:
    return [layer for layer in getattr(cache, "layers", []) if getattr(layer, "is_initialized", False) and layer.keys is not None]


def _pad_left(x: torch.Tensor, width: int) -> torch.Tensor:
    """[B, H, T, D] -> [B, H, width, D], zeros on the left (masked positions)."""
    missing = width - x.shape[-2]
    if missing <= 0:
        return x
    return torch.cat([x.new_zeros(*x.shape[:-2], missing, x.shape[-1]), x], dim=-2)


def cache_can_merge(cache) -> bool:
    """Only caches whose layers are plain (or sliding-window) key/value tensors can take rows that
    were prefilled apart; other layouts (linear attention states, ...) join only an empty batch."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    from esr_eval.steering.backends.hf_cache import GrowingLayer

    layers = getattr(cache, "layers", None)
    return layers is not None and all(type(layer) in (DynamicLayer, GrowingLayer, DynamicSlidingWindowLayer) for layer in layers)


def merge_caches(a, b, width: int) -> None:
    """Append the rows of cache `b` to cache `a` in place, both right-aligned at `width` columns."""
    for la, lb in zip(a.layers, b.layers):
        if not la.is_initialized:
            continue
        span = max(la.keys.shape[-2], lb.keys.shape[-2])
        la.keys = torch.cat([_pad_left(la.keys, span), _pad_left(lb.keys, span).to(la.keys.device)], dim=0)
        la.values = torch.cat([_pad_left(la.values, span), _pad_left(lb.values, span).to(la.values.device)], dim=0)
        if hasattr(la, "cumulative_length"):  # a sliding-window layer counts every column seen
            la.cumulative_length = width


def select_cache_rows(cache, rows: torch.Tensor, drop_columns: int, width: int) -> None:
    """Keep `rows` of the cache and drop its `drop_columns` leftmost columns (padding in every row
    kept); `width` is the new number of columns."""
    from esr_eval.steering.backends.hf_cache import GrowingLayer

    for layer in _cache_layers(cache):
        if isinstance(layer, GrowingLayer):
            columns = layer.tensors()[0].shape[-2]
            layer.keep_rows(rows, columns - min(columns, width) if drop_columns else 0)
            continue
        keys, values = layer.keys[rows.to(layer.keys.device)], layer.values[rows.to(layer.values.device)]
        if drop_columns:
            keep = min(keys.shape[-2], width)
            keys, values = keys[..., -keep:, :], values[..., -keep:, :]
        layer.keys, layer.values = keys, values
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = width


class DecodeBatch:
    """The rows decoding together. Between steps every row has logits for its next token."""

    def __init__(self, rows: list[DecodeRow], cache, mask: torch.Tensor, logits: torch.Tensor, prompt_ids: list[list[int]]) -> None:
        self.rows = rows
        self.cache = cache
        self.mask = mask  # [B, W] 1 where a column holds a real token of that row
        self.logits = logits.float()  # [B, V] next-token logits
        device = self.logits.device
        vocab = self.logits.shape[-1]
        self.next_position = mask.sum(-1)  # position id of each row's next token
        self.seen = torch.zeros(len(rows), vocab, dtype=torch.bool, device=device)  # for the repetition penalty
        for b, ids in enumerate(prompt_ids):
            self.seen[b, torch.tensor([i for i in ids if i < vocab], dtype=torch.long, device=device)] = True
        self.temperature = torch.tensor([r.request.temperature for r in rows], dtype=torch.float32, device=device)
        self.top_p = torch.tensor([r.request.top_p for r in rows], dtype=torch.float32, device=device)
        self.penalty = torch.tensor([r.request.repetition_penalty for r in rows], dtype=torch.float32, device=device)
        self.pending: torch.Tensor | None = None  # [B] the sampled tokens not yet fed to the model
        self._steering: BatchSteering | None | bool = False  # False: not built for these rows yet

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def steering(self, dtype: torch.dtype) -> BatchSteering | None:
        if self._steering is False:
            self._steering = BatchSteering.build([r.request.interventions for r in self.rows], [r.dictionary for r in self.rows], dtype)
        return self._steering  # type: ignore[return-value]

    # ------------------------------------------------------------ joining and leaving
    def merge(self, other: "DecodeBatch") -> None:
        """Append `other`'s rows (prefilled apart); both must have logits and no pending token."""
        width = max(self.width, other.width)
        merge_caches(self.cache, other.cache, width)
        pad = lambda m: torch.cat([m.new_zeros(m.shape[0], width - m.shape[1]), m], dim=1)
        self.mask = torch.cat([pad(self.mask), pad(other.mask).to(self.mask.device)])
        self.rows += other.rows
        for name in ("logits", "next_position", "seen", "temperature", "top_p", "penalty"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name).to(getattr(self, name).device)]))
        self._steering = False

    def keep(self, keep: Sequence[int]) -> None:
        """Drop every row not in `keep`, and the columns that are padding in all rows left."""
        if len(keep) == len(self.rows):
            return
        index = torch.tensor(list(keep), dtype=torch.long, device=self.mask.device)
        mask = self.mask[index]
        real = mask.any(0).nonzero()
        drop = int(real[0]) if len(real) else 0
        self.mask = mask[:, drop:]
        select_cache_rows(self.cache, index, drop, self.width)
        self.rows = [self.rows[i] for i in keep]
        for name in ("logits", "next_position", "seen", "temperature", "top_p", "penalty", "pending"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[index.to(value.device)])
        self._steering = False

    # ------------------------------------------------------------ sampling
    def sample(self, eos: torch.Tensor, decode: Callable[[list[int], bool], str]) -> list[tuple[DecodeRow, GenerationResult]]:
        """Draw every row's next token; rows that end (EOS or budget) leave the batch and are returned."""
        tokens = sample_tokens(self.logits, self.seen, self.penalty, self.temperature, self.top_p, [r.generator for r in self.rows])
        self.seen[torch.arange(len(self.rows), device=tokens.device), tokens] = True
        hit_eos = torch.isin(tokens, eos.to(tokens.device)).tolist()
        finished, keep = [], []
        for b, (row, token) in enumerate(zip(self.rows, tokens.tolist())):
            row.tokens.append(token)
            if hit_eos[b] or len(row.tokens) >= row.request.max_new_tokens:
                body = row.tokens[:-1] if hit_eos[b] else row.tokens
                result = GenerationResult(decode(body, True), len(row.prompt), len(row.tokens), "stop" if hit_eos[b] else "max_tokens", list(row.tokens))
                finished.append((row, result))
            else:
                keep.append(b)
        self.pending = tokens
        self.keep(keep)
        return finished


def sample_tokens(
    logits: torch.Tensor,
    seen: torch.Tensor,
    penalty: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """Each row's next token: greedy at temperature 0, else drawn from its own generator by inverting
    the cumulative distribution at one uniform draw. Only rows with top_p < 1 sort the vocabulary;
    the repetition penalty touches only the tokens seen (a few hundred of each row's vocabulary).
    `logits` (float32, the step's own) are penalised in place."""
    rows, cols = seen.nonzero(as_tuple=True)
    if len(rows):  # CTRL / Hugging Face convention: divide positive logits, multiply negative ones
        hit, factor = logits[rows, cols], penalty[rows]
        logits[rows, cols] = torch.where(hit > 0, hit / factor, hit * factor)
    greedy = temperature <= 0
    sampled = (~greedy).nonzero().flatten()
    if len(sampled) == 0:
        return logits.argmax(-1)
    out = torch.empty(len(logits), dtype=torch.long, device=logits.device)
    if bool(greedy.any()):
        out[greedy] = logits[greedy].argmax(-1)
    every = len(sampled) == len(logits)
    scaled = (logits if every else logits[sampled]) / temperature[sampled, None]
    probs = torch.softmax(scaled, dim=-1)
    uniform = torch.stack([torch.rand((), generator=generators[int(b)]) for b in sampled.tolist()]).to(probs.device)
    nucleus = top_p[sampled] < 1.0
    if not bool(nucleus.any()):
        picks = _invert_cdf(probs, uniform)
    else:
        picks = torch.empty(len(sampled), dtype=torch.long, device=probs.device)
        plain = (~nucleus).nonzero().flatten()
        if len(plain):
            picks[plain] = _invert_cdf(probs[plain], uniform[plain])
        cut = nucleus.nonzero().flatten()
        sorted_p, order = probs[cut].sort(dim=-1, descending=True)
        sorted_p = sorted_p.masked_fill((sorted_p.cumsum(-1) - sorted_p) > top_p[sampled][cut, None], 0.0)
        picks[cut] = order.gather(1, _invert_cdf(sorted_p, uniform[cut])[:, None]).squeeze(1)
    out[sampled] = picks
    return out


def _invert_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The first index whose cumulative mass exceeds uniform * total mass, per row (no sort). The
    index found always has positive probability: the cumulative sum only rises at such tokens."""
    cdf = probs.cumsum(-1)
    total = cdf[:, -1]
    point = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, point.unsqueeze(1).contiguous(), right=True).squeeze(1)
