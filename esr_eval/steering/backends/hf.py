"""The Hugging Face backend: a causal LM whose batched generation steers each row with its own
interventions.

Hugging Face's `generate` applies one temperature and one RNG to a whole batch, so the decode
loop is our own: KV cache, left padding, and per-row temperature, top-p, repetition penalty,
token budget and seed (a row samples the same tokens alone or in any batch).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from esr_eval.steering.backends.hf_batch import DecodeBatch, DecodeRow, cache_can_merge
from esr_eval.steering.dictionary import FeatureDictionary, load_dictionary
from esr_eval.steering.engine import (
    GenerationRequest,
    GenerationResult,
    Message,
    RequestQueue,
    SteeringEngine,
    render_prompt_ids,
    settle,
)
from esr_eval.steering.hooks import BatchSteering, ResidualHooks, decoder_layers
from esr_eval.steering.intervention import Intervention
from esr_eval.steering.models import (
    apply_adapter,
    execution_device,
    load_causal_lm,
    resolve_dtype,
)
from esr_eval.steering.presets import get_preset, resolve_model


class HFEngine(SteeringEngine):
    def __init__(
        self,
        model,
        tokenizer,
        dictionary: FeatureDictionary | None = None,
        layer: int | None = None,
        name: str = "model",
        chat_template: bool = True,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.dictionary = dictionary
        layers = decoder_layers(model)
        hidden = int(model.config.get_text_config().hidden_size)
        if dictionary is not None:
            if layer is not None:
                dictionary.layer = int(layer)
            dictionary.check_fits(hidden, len(layers))
            self.layer = dictionary.layer
        else:
            self.layer = int(layer) if layer is not None else len(layers) * 3 // 5
            if not 0 <= self.layer < len(layers):
                raise ValueError(f"layer {self.layer} is outside the model (0..{len(layers) - 1}): pass -M layer=N inside it")
        self.layer_device = execution_device(layers[self.layer])  # a sharded model: where the hooked layer runs
        self.input_device = execution_device(model.get_input_embeddings())
        if dictionary is not None:
            dictionary.to(self.layer_device, torch.float32)
        self.hooks = ResidualHooks(layers[self.layer])
        self.dtype = str(self._dtype()).removeprefix("torch.")
        self.extra_dictionaries: dict[str, FeatureDictionary] = {}
        self.use_chat_template = chat_template and tokenizer.chat_template is not None
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._keeps_last_logits = "logits_to_keep" in params
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = torch.tensor(sorted(eos_ids), dtype=torch.long)

    @classmethod
    def load(  # type: ignore[override]  # the backend's own keywords in place of **backend_args
        cls,
        source: str,
        dictionary: str | None = None,
        layer: int | None = None,
        labels: str | None = None,
        dtype: str | None = None,
        device: str = "cpu",
        device_map: str | dict | None = None,
        max_memory: dict | None = None,
    ) -> "HFEngine":
        """`source` is a preset name, a hub id, a folder or a .gguf file; `dictionary` a preset
        name, a folder or a sae-lens RELEASE/SAE_ID (a preset brings its own). `device_map`
        ("auto", or module -> device) with optional `max_memory` (device -> size) shards the model
        over several devices with accelerate; a preset may choose them (see `Preset`)."""
        preset = get_preset(source)
        if preset is not None:
            device_map, dtype = preset.placement(device_map, dtype, device)
        model_source, dict_spec, layer, chat_template = resolve_model(source, dictionary, layer)
        feature_dict = load_dictionary(dict_spec, layer=layer, labels=labels) if dict_spec else None
        model, tokenizer = load_causal_lm(
            model_source, dtype=resolve_dtype(dtype, device_map or device), device=device, device_map=device_map, max_memory=max_memory
        )
        if preset and preset.adapter:
            model = apply_adapter(model, preset.adapter)
        return cls(model, tokenizer, feature_dict, layer=layer, name=source, chat_template=chat_template)

    def add_dictionary(self, dictionary: FeatureDictionary) -> str:
        """Make a second dictionary (e.g. a direction set) steerable; it must sit at this layer."""
        if dictionary.layer != self.layer:
            raise ValueError(f"dictionary {dictionary.name!r} is at layer {dictionary.layer}, the model steers layer {self.layer}: build it at that layer")
        dictionary.check_fits(int(self.model.config.get_text_config().hidden_size), len(decoder_layers(self.model)))
        dictionary.to(self.layer_device, torch.float32)
        key = self.dictionary_key(dictionary)
        self.extra_dictionaries[key] = dictionary
        return key

    # ---------------------------------------------------------------- prompts
    def prompt_ids(self, messages: list[Message]) -> list[int]:
        return render_prompt_ids(self.tokenizer, messages, self.use_chat_template)

    def context_length(self) -> int | None:
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(limit) if limit else None

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r) :] = 1
        return ids.to(self.input_device), mask.to(self.input_device)

    def _forward(self, ids, mask, positions, cache, last_only: bool):
        kwargs = {self._cache_kwarg: cache, "use_cache": cache is not None}
        if last_only and self._keeps_last_logits:
            kwargs["logits_to_keep"] = 1
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)

    def torch_model(self) -> torch.nn.Module:
        return self.model

    def steered_forward(self, interventions: Sequence[Intervention], rows: int) -> AbstractContextManager[Any]:
        return self.hooks.active(BatchSteering.build([interventions] * rows, self.dictionary, self._dtype()))

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---------------------------------------------------------------- generation
    def _check(self, request: GenerationRequest) -> FeatureDictionary | None:
        """The request's dictionary; raises for an unknown dictionary or latent before any work."""
        dictionary = self.resolve_dictionary(request.dictionary)
        BatchSteering.build([request.interventions], [dictionary], self._dtype())
        return dictionary

    def _row(self, request: GenerationRequest, done) -> DecodeRow:
        seed = request.seed if request.seed is not None else torch.seed()
        return DecodeRow(request, self.prompt_ids(request.messages), self._check(request), torch.Generator(device="cpu").manual_seed(seed), done)

    def _prefill(self, rows: list[DecodeRow]) -> DecodeBatch:
        from esr_eval.steering.backends.hf_cache import growing_cache

        prompts = [r.prompt for r in rows]
        ids, mask = self._left_pad(prompts)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = growing_cache(self.model.config)
        steering = BatchSteering.build([r.request.interventions for r in rows], [r.dictionary for r in rows], self._dtype())
        with self.hooks.active(steering):
            logits = self._forward(ids, mask, positions, cache, last_only=True).logits[:, -1]
        return DecodeBatch(rows, cache, mask, logits, prompts)

    def _decode(self, batch: DecodeBatch) -> None:
        """One step: feed each row's pending token. The hooks hold this batch's steering only
        for the step, so a read-out in another thread waits for the step, never interleaves."""
        batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        positions = batch.next_position[:, None].to(batch.mask.device)
        assert batch.pending is not None, "a decode step feeds the sampled tokens"
        tokens = batch.pending[:, None].to(batch.mask.device)
        with self.hooks.active(batch.steering(self._dtype())):
            batch.logits = self._forward(tokens, batch.mask, positions, batch.cache, last_only=True).logits[:, -1].float()
        batch.next_position = batch.next_position + 1
        batch.pending = None

    def _step(self, batch: DecodeBatch | None, joining: list[DecodeRow]) -> DecodeBatch | None:
        """Decode the running rows, let `joining` rows in, sample, and hand out finished rows."""
        if batch is not None and len(batch):
            self._decode(batch)
        if joining:
            new = self._prefill(joining)
            if batch is None or not len(batch):
                batch = new
            else:
                batch.merge(new)
        if batch is None or not len(batch):
            return None
        for row, result in batch.sample(self.eos_ids, self._decode_text):
            row.finish(result)
        return batch

    def _decode_text(self, tokens: list[int], skip_special: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special).strip()

    def _can_join(self, batch: DecodeBatch | None) -> bool:
        return batch is None or not len(batch) or cache_can_merge(batch.cache)

    def _run(self, take, batch_size: int) -> None:
        """The decode loop: `take(n, idle)` gives up to n new rows (None: stop)."""
        batch: DecodeBatch | None = None
        while True:
            idle = batch is None or not len(batch)
            room = batch_size - (0 if idle or batch is None else len(batch)) if self._can_join(batch) else 0
            joining = take(room, idle)
            if joining is None:
                return
            try:
                batch = self._step(batch, joining)
            except Exception as err:  # a failed forward fails every row in flight
                for row in (batch.rows if batch is not None else []) + joining:
                    row.finish(err)
                batch = None

    @torch.inference_mode()
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        max_batch_size: int | None = None,
        on_result=None,
    ) -> list[GenerationResult]:
        """Answers in request order; at most `max_batch_size` rows decode at once (default: all),
        and a finished row's slot goes to the next request. `on_result(i, result)` reports each."""
        results: list[GenerationResult | None] = [None] * len(requests)
        for request in requests:
            self._check(request)  # bad steering fails here, before any work

        def finish(i: int):
            def done(outcome):
                if isinstance(outcome, BaseException):
                    raise outcome
                results[i] = outcome
                if on_result is not None:
                    on_result(i, outcome)

            return done

        waiting = list(enumerate(requests))[::-1]

        def take(room: int, idle: bool) -> list[DecodeRow] | None:
            if idle and not waiting:
                return None
            return [self._row(r, finish(i)) for i, r in (waiting.pop() for _ in range(min(room, len(waiting))))]

        self._run(take, max_batch_size or max(len(requests), 1))
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _serve(self, queue: RequestQueue) -> None:
        """Submitted requests join the running batch between decode steps (`submit`)."""

        def take(room: int, idle: bool) -> list[DecodeRow] | None:
            taken = queue.take(room, wait=idle)
            if taken is None:
                return None
            rows = []
            for request, future in taken:
                try:
                    rows.append(self._row(request, functools.partial(settle, future)))
                except Exception as err:  # this request's own error (e.g. an unknown latent)
                    future.set_exception(err)
            return rows

        self._run(take, self.max_batch_size)

    def generate_in_batches(
        self, requests: Sequence[GenerationRequest], batch_size: int = 16, desc: str = "answers"
    ) -> list[GenerationResult]:
        """`generate` with `batch_size` rows in flight, with a progress bar (command-line work)."""
        from tqdm import tqdm

        with tqdm(total=len(requests), desc=desc, unit="answer") as bar:
            return self.generate(requests, max_batch_size=batch_size, on_result=lambda i, r: bar.update())

    # ---------------------------------------------------------------- read-out
    @torch.inference_mode()
    def prompt_residuals(self, prompts: Sequence[list[Message]], skip: int = 2) -> list[torch.Tensor]:
        """The unsteered residual at the hook layer over each prompt's tokens, [T - skip, d_model];
        the first `skip` positions (BOS and the huge-norm token after it) are left out."""
        out = []
        for messages in prompts:
            ids = torch.tensor([self.prompt_ids(messages)], device=self.input_device)
            with self.hooks.active(None, record=True, stop=True) as record:
                self._forward(ids, torch.ones_like(ids), None, None, last_only=True)
            out.append(record[0][0, skip:].float())
        return out

    @torch.inference_mode()
    def read_latents(
        self,
        conversations: Sequence[tuple[list[Message], str]],
        latents: Sequence[int] | None = None,
        interventions: Sequence[Sequence[Intervention]] | None = None,
        batch_size: int = 8,
    ) -> list[torch.Tensor]:
        """Per-token dictionary activations over each answer: one [answer_tokens, n_latents]
        tensor per (messages, answer); the residual is read after any steering of that row."""
        if self.dictionary is None:
            raise ValueError("reading latents needs a dictionary: pass -M dictionary=... or a preset")
        idx = torch.tensor(list(latents), dtype=torch.long) if latents is not None else None
        out: list[torch.Tensor] = []
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start : start + batch_size]
            rows, n_answer = [], []
            for messages, answer in chunk:
                answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
                rows.append(self.prompt_ids(messages) + answer_ids)
                n_answer.append(len(answer_ids))
            ivs = interventions[start : start + batch_size] if interventions is not None else [()] * len(chunk)
            steering = BatchSteering.build(ivs, self.dictionary, self._dtype())
            ids, mask = self._left_pad(rows)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            with self.hooks.active(steering, record=True, stop=True) as record:
                self._forward(ids, mask, positions, None, last_only=True)
            resid = record[0]
            for b, n in enumerate(n_answer):
                h = resid[b, resid.shape[1] - n :] if n else resid[b, :0]
                acts = self.dictionary.encode(h.float())
                out.append((acts[:, idx.to(acts.device)] if idx is not None else acts).float().cpu())
        return out
