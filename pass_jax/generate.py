"""Batch generation at the edge: tokenize, bucket, batch, run the jitted loop, detokenize.

Python-side state lives only here and in the CLI; `decoding.decode` stays pure.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from . import lookahead as lookahead_lib
from .decoding import DecodeSpec, decode_jit
from .distributed import gather_to_host, global_array_from_local, process_local_batch, replicate
from .errors import PassJaxError
from .loading import DEFAULT_MODEL, LoadedModel, load_model
from .sampling import SamplingConfig
from .sharding import cache_sharding

MIN_BUCKET = 16


class GenerationError(PassJaxError):
    """A prompt or setting that cannot be generated from."""


@dataclasses.dataclass
class GenerationResult:
    prompt: str
    text: str
    tokens: list[int]
    stats: dict[str, Any]


def bucket_width(length: int, max_len: int) -> int:
    """Pad prompts to a power of two (at least MIN_BUCKET) so new lengths rarely recompile."""
    width = MIN_BUCKET
    while width < length:
        width *= 2
    return min(width, max_len)


def row_stats(state, row: int, prompt_length: int) -> dict[str, Any]:
    s = jax.tree.map(lambda x: np.asarray(x[row]), state.stats)
    calls, new = int(s.model_calls), int(s.new_tokens)
    iterations = int(s.accepted_hist.sum())
    accepted = int((s.accepted_hist * np.arange(len(s.accepted_hist))).sum())
    return {
        "prompt_tokens": prompt_length,
        "model_calls": calls,
        "new_tokens": new,
        "tokens_per_call": new / max(calls, 1),
        "iterations": iterations,
        "accepted_drafts": accepted,
        "mean_accepted": accepted / iterations if iterations else 0.0,
        "accepted_hist": s.accepted_hist.tolist(),
        "position_reached": s.position_reached.tolist(),
        "position_accepted": s.position_accepted.tolist(),
    }


def summarize(stats: Sequence[dict[str, Any]], wall_s: float, compile_s: float) -> dict[str, Any]:
    total = lambda key: sum(s[key] for s in stats)  # noqa: E731
    reached = np.sum([s["position_reached"] for s in stats], axis=0) if stats else np.zeros(0)
    accepted = np.sum([s["position_accepted"] for s in stats], axis=0) if stats else np.zeros(0)
    hist = np.sum([s["accepted_hist"] for s in stats], axis=0) if stats else np.zeros(1)
    new, calls, iterations = total("new_tokens"), total("model_calls"), total("iterations")
    return {
        "prompts": len(stats),
        "model_calls": calls,
        "new_tokens": new,
        "tokens_per_call": new / max(calls, 1),
        "mean_accepted": total("accepted_drafts") / iterations if iterations else 0.0,
        "accepted_hist": hist.tolist(),
        "position_acceptance": [float(a / r) if r else 0.0 for a, r in zip(accepted, reached)],
        "wall_s": wall_s,
        "tokens_per_s": new / wall_s if wall_s > 0 else 0.0,
        "compile_s": compile_s,
    }


class Generator:
    """Generates from one loaded model with fixed decode settings; compiles once per bucket."""

    def __init__(self, model: LoadedModel, *, mode: str = "pass", num_lookahead: int = 4,
                 lookahead: str | Any = "default", max_new_tokens: int = 128,
                 sampling: SamplingConfig = SamplingConfig(), batch_size: int = 1, mesh=None,
                 domain: str = "text", stop_ids: Sequence[int] = (), calls: int = 2,
                 draft_tree: Sequence[int] = ()):
        if batch_size < 1:
            raise GenerationError(f"batch size must be >= 1, got {batch_size}")
        self.model = model
        self.mesh = mesh
        self.batch_size = batch_size
        eos = model.tokenizer.eos_token_id
        # A row ends at EOS or at any of `stop_ids` (kept, like EOS, as its last token).
        stops = tuple(sorted({int(i) for i in stop_ids} | ({int(eos)} if eos is not None else set())))
        self.spec = DecodeSpec(model.config, mode=mode, num_lookahead=num_lookahead, max_new_tokens=max_new_tokens,
                               sampling=sampling, eos_ids=stops, calls=calls, draft_tree=tuple(draft_tree))
        if mode == "pass":
            if isinstance(lookahead, (str, type(None))):
                self.lookahead, self.lookahead_source = lookahead_lib.resolve(
                    lookahead, model.params, model.config, num_lookahead, model.identity, domain=domain)
            else:
                self.lookahead = lookahead_lib.check(jnp.asarray(lookahead), model.config, num_lookahead)[:num_lookahead]
                self.lookahead_source = "given"
        else:
            self.lookahead = jnp.zeros((1, model.config.hidden_size), model.config.jnp_param_dtype)
            self.lookahead_source = "unused (autoregressive)"
        self._compiled: dict[tuple[int, int], Any] = {}
        self.compile_s = 0.0

    def encode(self, prompt: str) -> list[int]:
        if not prompt or not prompt.strip():
            raise GenerationError("empty prompt: give some text to continue")
        ids = list(self.model.tokenizer(prompt)["input_ids"])
        limit, budget = self.model.config.max_seq_len, self.spec.max_new_tokens
        margin = self.spec.width + 1  # the widest decode call may write past the budget's last token
        if len(ids) + budget + margin > limit:
            raise GenerationError(
                f"prompt of {len(ids)} tokens + max_new_tokens={budget} + {margin} positions that a decode call "
                f"may write past them = {len(ids) + budget + margin} exceeds the model's context of {limit} tokens; "
                f"these settings leave room for {max(limit - budget - margin, 0)} prompt tokens")
        return ids

    def _executable(self, batch: int, width: int, args):
        """AOT-compile per (batch, bucket) so compile time is measured apart from decoding."""
        key = (batch, width)
        if key not in self._compiled:
            start = time.perf_counter()
            self._compiled[key] = decode_jit.lower(*args, spec=self._spec_for(batch, width)).compile()
            self.compile_s += time.perf_counter() - start
        return self._compiled[key]

    def _spec_for(self, batch: int, width: int) -> DecodeSpec:
        if self.mesh is None:
            return self.spec
        length = self.spec.buffer_length(width)
        return dataclasses.replace(self.spec, cache_sharding=cache_sharding(self.model.config, self.mesh, batch, length))

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], seed: int = 0):
        """Decode one batch of token-id prompts; returns (the final DecodeState on host, wall seconds)."""
        batch = len(prompt_ids)
        width = bucket_width(max(len(p) for p in prompt_ids), self.model.config.max_seq_len)
        tokens = np.zeros((batch, width), np.int32)
        for row, ids in enumerate(prompt_ids):
            tokens[row, :len(ids)] = ids
        lengths = np.asarray([len(p) for p in prompt_ids], np.int32)
        key, lookahead = jax.random.key(seed), self.lookahead
        if self.mesh is None:
            tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
        else:  # every process holds all prompts and feeds its own rows of the data-sharded batch
            rows = process_local_batch(batch, self.mesh)
            tokens = global_array_from_local(tokens[rows], self.mesh)
            lengths = global_array_from_local(lengths[rows], self.mesh)
            key, lookahead = replicate((key, lookahead), self.mesh)
        args = (self.model.params, lookahead, tokens, lengths, key)
        executable = self._executable(batch, width, args)
        start = time.perf_counter()
        state = executable(*args)
        jax.block_until_ready(state.tokens)
        wall = time.perf_counter() - start
        return gather_to_host(state._replace(cache=None, key=None)), wall

    def generate(self, prompts: Sequence[str], seed: int = 0, progress: bool = False) -> tuple[list[GenerationResult], dict]:
        encoded = [self.encode(p) for p in prompts]
        results: list[GenerationResult] = []
        wall_total = 0.0
        # Never more rows than prompts (copies would be wasted work); later batches keep this size.
        size = min(self.batch_size, max(len(encoded), 1))
        batches = range(0, len(prompts), size)
        for start in tqdm(batches, desc="generating", unit="batch", disable=not progress or len(batches) < 2):
            chunk = encoded[start:start + size]
            # Fill a short last batch with copies so the compiled batch size is reused.
            padded = chunk + [chunk[0]] * (size - len(chunk))
            state, wall = self.generate_ids(padded, seed=seed + start)
            wall_total += wall
            for row, ids in enumerate(chunk):
                length = int(state.lengths[row])
                new_ids = [int(t) for t in state.tokens[row, len(ids):length]]
                stats = row_stats(state, row, len(ids))
                stats.update(wall_s=wall, tokens_per_s=stats["new_tokens"] / wall if wall > 0 else 0.0)
                text = self.model.tokenizer.decode(new_ids, skip_special_tokens=True)
                results.append(GenerationResult(prompts[start + row], text, new_ids, stats))
        return results, summarize([r.stats for r in results], wall_total, self.compile_s)


def generate(prompts: str | Iterable[str], model: str | LoadedModel = DEFAULT_MODEL, *, seed: int = 0,
             **settings) -> list[GenerationResult]:
    """One-call API: `generate("Once upon a time", mode="pass", num_lookahead=4)`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    results, _ = Generator(loaded, **settings).generate(list(prompts), seed=seed)
    return results
