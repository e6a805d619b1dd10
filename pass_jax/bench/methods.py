"""The methods a benchmark times, behind one interface (`warmup`, `run`): pass-jax `Generator`s (AR and
each PaSS setting) and transformers+torch `model.generate` (greedy, sampling, prompt lookup)."""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import time
from pathlib import Path
from typing import Any, Sequence

from .. import autotune
from ..cli_args import log
from ..generate import Generator, resolve_lookahead
from ..iteration import Iteration
from .settings import AR, HF_GREEDY, HF_LOOKUP, HF_SAMPLE, PASS, BenchError, BenchSettings


@dataclasses.dataclass
class RoundResult:
    wall_s: float
    new_tokens: int
    stats: list[dict[str, Any]] | None  # per-prompt `row_stats` (pass-jax only)


class PassJaxMethod:
    """One pass-jax `Generator` (built once, compiled on first use, reused across rounds)."""

    backend = "pass-jax"

    def __init__(self, generator, auto: bool = False):
        self.generator = generator
        self.iteration = generator.iteration
        self.name = PASS if self.iteration.mode == "pass" else AR
        self.auto = auto
        self.num_lookahead = self.iteration.num_lookahead if self.name == PASS else None
        self.decoding = "greedy" if generator.spec.sampling.greedy else "sample"
        self.batch_size = generator.batch_size
        self.lookahead_source = generator.lookahead_source

    @property
    def compile_s(self) -> float:
        return self.generator.compile_s  # AOT compilation, kept out of the timed decode by Generator

    def warmup(self, prompts: Sequence[str]) -> None:
        """Nothing to do: `Generator` compiles before it starts its timer."""

    def run(self, prompts: Sequence[str], seed: int) -> RoundResult:
        results, summary = self.generator.generate(list(prompts), seed=seed)
        return RoundResult(summary["wall_s"], summary["new_tokens"], [r.stats for r in results])


class TransformersMethod:
    """`model.generate` of transformers+torch on the same checkpoint (greedy, sampling or prompt lookup)."""

    backend = "transformers"
    num_lookahead = None
    iteration = None
    auto = False
    lookahead_source = None

    def __init__(self, name: str, hf_model, tokenizer, generation_config, batch_size: int):
        self.name, self.model, self.tokenizer, self.config = name, hf_model, tokenizer, generation_config
        self.decoding = "sample" if generation_config.do_sample else "greedy"
        # transformers' assisted generation (prompt lookup) only supports batch size 1.
        self.batch_size = 1 if generation_config.prompt_lookup_num_tokens else batch_size
        self.compile_s = 0.0

    def _generate(self, prompt_ids: list[list[int]], config=None) -> tuple[float, int]:
        import torch

        config = config or self.config
        pad = self.config.pad_token_id
        width = max(len(ids) for ids in prompt_ids)
        # Left padding: decoder-only generation continues from the last column.
        input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in prompt_ids])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids])
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        wall = time.perf_counter() - start
        return wall, sum(count_new_tokens(row[width:].tolist(), config.eos_token_id) for row in out)

    def _batches(self, prompts: Sequence[str]):
        encoded = [list(self.tokenizer(p)["input_ids"]) for p in prompts]
        return [encoded[i:i + self.batch_size] for i in range(0, len(encoded), self.batch_size)]

    def warmup(self, prompts: Sequence[str]) -> None:
        """A 2-token generation first: torch's one-time costs would otherwise land in round 0."""
        config = copy.deepcopy(self.config)
        config.max_new_tokens = 2
        self.compile_s += self._generate(self._batches(prompts[:1])[0], config)[0]

    def run(self, prompts: Sequence[str], seed: int) -> RoundResult:
        import torch

        torch.manual_seed(seed)
        walls, counts = zip(*(self._generate(batch) for batch in self._batches(prompts)))
        return RoundResult(sum(walls), sum(counts), None)


def count_new_tokens(generated: Sequence[int], eos_id: int | None) -> int:
    """New tokens up to and including the first EOS (transformers pads finished rows after it)."""
    if eos_id is not None and eos_id in generated:
        return generated.index(eos_id) + 1
    return len(generated)


def transformers_unavailable_reason() -> str | None:
    """Why the transformers+torch rows cannot run, or None when they can (the `bench` extra)."""
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'pass-jax[bench]')"
    return None


def load_transformers_model(source: str):
    """The pass-jax model's checkpoint in transformers+torch (float32), or a BenchError why not."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        where, extra = path.parent, {"gguf_file": path.name}  # needs `accelerate`
    elif (path / "config.json").is_file():
        where, extra = path, {}
    else:
        raise BenchError(f"transformers cannot load {source!r} (only a .gguf file or a Hugging Face directory)")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
    except ImportError as err:
        raise BenchError(f"transformers could not load {path.name}: {err}") from None
    return model.eval()


def transformers_methods(model, settings: BenchSettings) -> list[TransformersMethod]:
    """Greedy, sampling (unless the bench is greedy) and prompt lookup on the same checkpoint."""
    import transformers

    hf_model = load_transformers_model(model.source)
    eos = model.tokenizer.eos_token_id
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else (eos or 0)
    base = dict(max_new_tokens=settings.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    greedy = dict(do_sample=False)
    sampling = settings.sampling
    # top_k=0 disables transformers' top-k (None would fall back to its default of 50).
    sample = dict(do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k or 0, top_p=sampling.top_p)
    decoding = greedy if sampling.greedy else sample
    configs = [(HF_GREEDY, greedy)]
    if not sampling.greedy:
        configs.append((HF_SAMPLE, sample))
    configs.append((HF_LOOKUP, {**decoding, "prompt_lookup_num_tokens": settings.prompt_lookup_num_tokens}))
    return [TransformersMethod(name, hf_model, model.tokenizer, transformers.GenerationConfig(**base, **extra),
                               settings.batch_size) for name, extra in configs]


def pass_jax_methods(model, settings: BenchSettings, prompts: dict[str, list[str]], costs: dict | None = None,
                     found=None) -> dict[str, list[PassJaxMethod]]:
    """AR plus PaSS for each iteration (and the `-L auto` choice, `autotune.pick` on the domain's first
    prompt), per domain of `prompts`; generators with the same look-ahead parameters are shared across
    domains. `found`: a --lookahead PATH read already (`cli_args.read_lookahead_arg`)."""
    common = dict(max_new_tokens=settings.max_new_tokens, sampling=settings.sampling,
                  batch_size=settings.batch_size)
    ar = PassJaxMethod(Generator(model, Iteration.AR, **common))
    cache: dict[tuple[Iteration, str], PassJaxMethod] = {}
    resolved = {}
    methods = {}
    for domain in prompts:
        # `--lookahead default` means the shipped parameters trained on the prompts' domain
        shipped = "code" if domain == "code" else "text"
        key = shipped if settings.lookahead == "default" else settings.lookahead
        if key not in resolved:  # each file is read once
            resolved[key] = resolve_lookahead(model, settings.lookahead, shipped, found=found,
                                              num_lookahead=max([i.num_lookahead for i in settings.iterations()],
                                                                default=None))
        lookahead = resolved[key]
        chosen = settings.iterations()
        pick = None
        if settings.auto and costs is not None:
            first = Generator(model, Iteration.AR, **common).encode(prompts[domain][0])
            try:
                pick = autotune.pick(model, lookahead, settings.sampling, settings.batch_size, first, costs=costs)
            except autotune.AutotuneError as err:  # no acceptance metadata: no auto row
                log(f"-L auto ({domain}): {err}")
            else:  # what `generate -L auto` would conclude; the auto row runs the best prediction either way
                log(f"-L auto ({domain}): {pick.summary()}" + (
                    " (the auto row runs it anyway)" if pick.iteration.mode == "ar" else ""))
        for iteration in chosen + ([pick.best] if pick else []):
            if (iteration, key) not in cache:
                cache[iteration, key] = PassJaxMethod(Generator(model, iteration, lookahead=lookahead, **common))
        rows = [cache[iteration, key] for iteration in chosen]
        if pick:  # the auto row is its own method even when it repeats a listed iteration
            rows.append(PassJaxMethod(cache[pick.best, key].generator, auto=True))
        methods[domain] = [ar] + rows
    return methods
