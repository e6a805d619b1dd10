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
from .. import lookahead as lookahead_lib
from ..autotune import Setting
from ..cli_args import log
from ..generate import Generator, resolve_lookahead
from .settings import AR, HF_GREEDY, HF_LOOKUP, HF_SAMPLE, PASS, BenchError, BenchSettings


@dataclasses.dataclass
class RoundResult:
    wall_s: float
    new_tokens: int
    stats: list[dict[str, Any]] | None  # per-prompt `row_stats` (pass-jax only)


class PassJaxMethod:
    """One pass-jax `Generator` (built once, compiled on first use, reused across rounds)."""

    backend = "pass-jax"

    def __init__(self, generator, setting: Setting | None, auto: bool = False):
        self.generator = generator
        self.name = PASS if generator.spec.mode == "pass" else AR
        self.setting = setting
        self.auto = auto
        self.num_lookahead = None if setting is None else setting.num_lookahead
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
    setting = None
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


def auto_setting(model, settings: BenchSettings, vectors: str, costs: dict) -> tuple[Setting, dict] | None:
    """What `-L auto` picks for these vectors at the measured call costs (None without acceptance metadata)."""
    path = lookahead_lib.resolve_path(settings.lookahead, model.identity, vectors)
    table = autotune.acceptance_table(lookahead_lib.read_metadata(path) if path else None, settings.sampling.greedy)
    if table is None:
        return None
    candidates = [c for c in autotune.candidate_settings(autotune.MAX_AUTO_L) if autotune.predictable(c, table)]
    missing = {shape for c in candidates for shape in c.call_shapes()} - set(costs)
    costs.update(autotune.measure_call_costs(model, missing, settings.batch_size) if missing else {})
    return autotune.choose(candidates, table, autotune.relative(costs))[0]


def pass_jax_methods(model, settings: BenchSettings, prompts: dict[str, list[str]], costs: dict | None = None
                     ) -> dict[str, list[PassJaxMethod]]:
    """AR plus PaSS for each setting (and the `-L auto` choice, whose loop check runs on the domain's
    first prompt), per domain of `prompts`; generators with the same vectors are shared across domains."""
    common = dict(max_new_tokens=settings.max_new_tokens, sampling=settings.sampling,
                  batch_size=settings.batch_size)
    ar = PassJaxMethod(Generator(model, mode="ar", **common), None)
    cache: dict[tuple[Setting, str], PassJaxMethod] = {}
    methods = {}
    for domain in prompts:
        # `--lookahead default` means the shipped vectors trained on the prompts' domain
        vectors = "code" if domain == "code" else "text"
        key = vectors if settings.lookahead == "default" else settings.lookahead
        chosen = settings.pass_settings()
        auto = auto_setting(model, settings, vectors, costs) if settings.auto and costs is not None else None
        for setting in chosen + ([auto[0]] if auto else []):
            if (setting, key) not in cache:
                lookahead, source = resolve_lookahead(model, settings.lookahead, setting.num_lookahead, vectors)
                generator = Generator(model, mode="pass", num_lookahead=setting.num_lookahead, calls=setting.calls,
                                      draft_tree=() if setting.is_chain else setting.draft_tree,
                                      lookahead=lookahead, lookahead_source=source, **common)
                cache[setting, key] = PassJaxMethod(generator, setting)
        rows = [cache[setting, key] for setting in chosen]
        if auto:  # what `generate -L auto` would conclude; the auto row runs the setting either way
            setting, prediction = auto
            generator = cache[setting, key].generator
            timed = autotune.timed_ratio(model, setting, generator.lookahead, settings.sampling, settings.batch_size,
                                         prompt_ids=generator.encode(prompts[domain][0]))
            log(f"-L auto ({domain}): {setting.label()}, predicted {prediction['ratio_vs_ar']:.2f}x ar from call "
                f"costs, {timed:.2f}x from the timed decode loops on the first prompt" + (
                    "" if timed > 1 and prediction["ratio_vs_ar"] > 1 else
                    "; generate -L auto would decode with --mode ar (the auto row runs it anyway)"))
            # the auto row is its own method even when it repeats a listed setting
            rows.append(PassJaxMethod(cache[setting, key].generator, setting, auto=True))
        methods[domain] = [ar] + rows
    return methods
