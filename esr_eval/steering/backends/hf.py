"""The Hugging Face backend: a causal LM whose batched generation steers each row with its own
interventions.

Hugging Face's `generate` applies one temperature and one RNG to a whole batch, so the decode
loop is our own: KV cache, left padding, and per-row temperature, top-p, repetition penalty,
token budget and seed (a row samples the same tokens alone or in any batch).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from esr_eval.steering.dictionary import FeatureDictionary, load_dictionary
from esr_eval.steering.engine import (
    GenerationRequest,
    GenerationResult,
    Message,
    SteeringEngine,
    render_prompt_ids,
)
from esr_eval.steering.hooks import BatchSteering, ResidualHooks, decoder_layers
from esr_eval.steering.intervention import Intervention
from esr_eval.steering.models import apply_adapter, load_causal_lm, parse_dtype
from esr_eval.steering.presets import get_preset, resolve_model


class SteeredLM(SteeringEngine):
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
            param = next(model.parameters())
            dictionary.to(param.device, torch.float32)
            self.layer = dictionary.layer
        else:
            self.layer = int(layer) if layer is not None else len(layers) * 3 // 5
            if not 0 <= self.layer < len(layers):
                raise ValueError(f"layer {self.layer} is outside the model (0..{len(layers) - 1}): pass -M layer=N inside it")
        self.hooks = ResidualHooks(layers[self.layer])
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
    def load(
        cls,
        source: str,
        dictionary: str | None = None,
        layer: int | None = None,
        labels: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> "SteeredLM":
        """`source` is a preset name, a hub id, a folder or a .gguf file; `dictionary` a preset
        name, a folder or a sae-lens RELEASE/SAE_ID (a preset brings its own)."""
        model_source, dict_spec, layer, chat_template = resolve_model(source, dictionary, layer)
        feature_dict = load_dictionary(dict_spec, layer=layer, labels=labels) if dict_spec else None
        model, tokenizer = load_causal_lm(model_source, dtype=parse_dtype(dtype), device=device)
        preset = get_preset(source)
        if preset and preset.adapter:
            model = apply_adapter(model, preset.adapter)
        return cls(model, tokenizer, feature_dict, layer=layer, name=source, chat_template=chat_template)

    def add_dictionary(self, dictionary: FeatureDictionary) -> str:
        """Make a second dictionary (e.g. a direction set) steerable; it must sit at this layer."""
        if dictionary.layer != self.layer:
            raise ValueError(f"dictionary {dictionary.name!r} is at layer {dictionary.layer}, the model steers layer {self.layer}: build it at that layer")
        dictionary.check_fits(int(self.model.config.get_text_config().hidden_size), len(decoder_layers(self.model)))
        dictionary.to(next(self.model.parameters()).device, torch.float32)
        key = self.dictionary_key(dictionary)
        self.extra_dictionaries[key] = dictionary
        return key

    # ---------------------------------------------------------------- prompts
    def prompt_ids(self, messages: list[Message]) -> list[int]:
        return render_prompt_ids(self.tokenizer, messages, self.use_chat_template)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r) :] = 1
        device = next(self.model.parameters()).device
        return ids.to(device), mask.to(device)

    def _forward(self, ids, mask, positions, cache, last_only: bool):
        kwargs = {self._cache_kwarg: cache, "use_cache": cache is not None}
        if last_only and self._keeps_last_logits:
            kwargs["logits_to_keep"] = 1
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        from transformers import DynamicCache

        if not requests:
            return []
        prompts = [self.prompt_ids(r.messages) for r in requests]
        ids, mask = self._left_pad(prompts)
        device = ids.device
        B = len(requests)
        dictionaries = [self.resolve_dictionary(r.dictionary) for r in requests]
        steering = BatchSteering.build([r.interventions for r in requests], dictionaries, self._dtype())
        budgets = torch.tensor([r.max_new_tokens for r in requests], device=device)
        temps = torch.tensor([r.temperature for r in requests], dtype=torch.float32, device=device)
        top_ps = torch.tensor([r.top_p for r in requests], dtype=torch.float32, device=device)
        penalties = torch.tensor([r.repetition_penalty for r in requests], dtype=torch.float32, device=device)[:, None]
        gens = [torch.Generator(device="cpu").manual_seed(r.seed if r.seed is not None else torch.seed()) for r in requests]
        eos = self.eos_ids.to(device)

        vocab = self.model.get_output_embeddings().weight.shape[0]
        seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
        seen.scatter_(1, ids.clamp(max=vocab - 1), mask.bool())
        out_tokens = torch.zeros(B, int(budgets.max()), dtype=torch.long, device=device)
        lengths = torch.zeros(B, dtype=torch.long, device=device)
        done = budgets <= 0
        stopped = torch.zeros(B, dtype=torch.bool, device=device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache(config=self.model.config)
        with self.hooks.active(steering):
            logits = self._forward(ids, mask, positions, cache, last_only=True).logits[:, -1].float()
            for step in range(int(budgets.max())):
                if bool(done.all()):
                    break
                nxt = self._sample(logits, seen, penalties, temps, top_ps, gens)
                nxt = torch.where(done, torch.full_like(nxt, self.tokenizer.pad_token_id), nxt)
                out_tokens[:, step] = nxt
                lengths += (~done).long()
                seen[torch.arange(B, device=device), nxt] |= ~done
                hit_eos = torch.isin(nxt, eos) & ~done
                stopped |= hit_eos
                done = done | hit_eos | (lengths >= budgets)
                if bool(done.all()):
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                logits = self._forward(nxt[:, None], mask, positions, cache, last_only=True).logits[:, -1].float()
        results = []
        for b in range(B):
            toks = out_tokens[b, : int(lengths[b])].tolist()
            body = toks[:-1] if stopped[b] else toks
            text = self.tokenizer.decode(body, skip_special_tokens=True).strip()
            results.append(
                GenerationResult(text, len(prompts[b]), len(toks), "stop" if stopped[b] else "max_tokens", toks)
            )
        return results

    @staticmethod
    def _sample(logits, seen, penalties, temps, top_ps, gens) -> torch.Tensor:
        # repetition penalty (CTRL / Hugging Face convention) on every token seen so far
        penalised = torch.where(logits > 0, logits / penalties, logits * penalties)
        logits = torch.where(seen, penalised, logits)
        greedy = logits.argmax(-1)
        probs = torch.softmax(logits / temps.clamp_min(1e-5)[:, None], dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = (sorted_p.cumsum(-1) - sorted_p) > top_ps[:, None]
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        out = greedy.clone()
        for b, gen in enumerate(gens):
            if temps[b] > 0:
                pick = torch.multinomial(sorted_p[b].cpu(), 1, generator=gen)
                out[b] = order[b, pick.to(order.device)].squeeze()
        return out

    # ---------------------------------------------------------------- read-out
    @torch.inference_mode()
    def prompt_residuals(self, prompts: Sequence[list[Message]], skip: int = 2) -> list[torch.Tensor]:
        """The unsteered residual at the hook layer over each prompt's tokens, [T - skip, d_model];
        the first `skip` positions (BOS and the huge-norm token after it) are left out."""
        out = []
        for messages in prompts:
            ids = torch.tensor([self.prompt_ids(messages)], device=next(self.model.parameters()).device)
            with self.hooks.active(None, record=True) as record:
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
            with self.hooks.active(steering, record=True) as record:
                self._forward(ids, mask, positions, None, last_only=True)
            resid = record[0]
            for b, n in enumerate(n_answer):
                h = resid[b, resid.shape[1] - n :] if n else resid[b, :0]
                acts = self.dictionary.encode(h.float())
                out.append((acts[:, idx.to(acts.device)] if idx is not None else acts).float().cpu())
        return out
