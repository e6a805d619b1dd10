"""`pass-jax bench`: PaSS against autoregressive decoding and transformers+torch, in one process.

Every method decodes the same prompts with the same seeds in interleaved rounds (round r runs each
method once, in an order rotated by r), so slow drifts of a shared machine hit all methods alike.
Compilation (pass-jax) and warm-up (transformers) happen before the timed calls and are reported
apart. pass-jax rows reuse `Generator` and `summarize` from `pass_jax.generate` for their
statistics; transformers rows are optional and skipped, with a note, when torch is missing.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from tqdm.auto import tqdm

from . import autotune
from . import lookahead as lookahead_lib
from .autotune import Setting
from . import outputs
from .cli import (_read_prompts, add_overwrite_arg, add_sampling_args, check_lookahead_arg, sampling_from_args,
                  seed_arg)
from .decoding import check_settings
from .errors import PassJaxError
from .generate import Generator, summarize
from .loading import load_model
from .sampling import PAPER, SamplingConfig

AR = "pass-jax-ar"
PASS = "pass-jax-pass"
HF_GREEDY = "transformers-greedy"
HF_SAMPLE = "transformers-sample"
HF_LOOKUP = "transformers-prompt-lookup"
CORPUS_FOR_DOMAIN = {"text": "wiki", "code": "python"}  # train.data sources of the held-out prompts
PLOT_FILES = ("speedup_vs_lookahead.png", "acceptance_by_position.png", "tokens_per_iteration.png")

EPILOG = """examples:
  pass-jax bench                                          # text prompts, L = 1,2,4,6,8, 3 rounds
  pass-jax bench --domain both --json bench.json --plot plots/
  pass-jax bench --temperature 0 --num-lookahead 4 --rounds 5    # greedy
  pass-jax bench --prompts prompts.jsonl --no-transformers

tokens/s counts new tokens (EOS included) over decoding wall time; compilation and warm-up are
excluded and reported separately. peak_host_mb is the process-wide peak so far (it only grows)."""


class BenchError(PassJaxError):
    """Benchmark settings or prompts that cannot run."""


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """Everything a benchmark run needs besides the model and the prompts."""

    num_lookahead: tuple[int, ...] = (1, 2, 4, 6)
    calls: tuple[int, ...] = (2, 1)  # PaSS calls per iteration to compare (--calls)
    draft_trees: tuple[tuple[int, ...], ...] = ((3, 1, 1), (4, 2, 1))  # trees beside the chains of each L
    auto: bool = True  # add the row `-L auto` picks (when the vectors carry acceptance metadata)
    max_new_tokens: int = 128
    sampling: SamplingConfig = PAPER  # top-k 10, temperature 0.8, as in the paper
    batch_size: int = 1
    rounds: int = 3
    lookahead: str = "default"
    seed: int = 0
    transformers: bool = True
    prompt_lookup_num_tokens: int = 10
    roofline: bool = True  # measure bandwidth after the runs and relate the AR step to it
    call_costs: bool = True  # time one decode call per width, to predict PaSS from its acceptance

    def __post_init__(self):
        if not self.num_lookahead:
            raise BenchError("--num-lookahead needs at least one value")
        for setting in self.pass_settings():
            check_settings("pass", setting.num_lookahead, self.max_new_tokens, setting.calls, setting.draft_tree)
        if self.rounds < 1:
            raise BenchError(f"--rounds must be >= 1, got {self.rounds}")
        if self.batch_size < 1:
            raise BenchError(f"--batch-size must be >= 1, got {self.batch_size}")

    def pass_settings(self) -> list[Setting]:
        """The PaSS rows: a chain of each L and each tree, with each number of calls."""
        shapes = [(1,) * value for value in self.num_lookahead] + [tuple(t) for t in self.draft_trees]
        return [Setting(calls, shape) for shape in shapes for calls in self.calls]

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["num_lookahead"] = list(self.num_lookahead)
        return values


def parse_int_list(text: str, option: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), sorted, without repeats, all >= 1."""
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise PassJaxError(f"{option} takes a comma list of integers such as 1,2,4, got {text!r}") from None
    if not values or values[0] < 1:
        raise PassJaxError(f"{option} values must be >= 1, got {text!r}")
    return tuple(values)


# --- prompts ------------------------------------------------------------------------------------

def prefix_prompt(tokenizer, text: str, prompt_tokens: int) -> str | None:
    """The longest prefix of `text` that tokenizes to at most `prompt_tokens` tokens.

    None when the text is shorter than that (prompts should have about the same length) or the
    prefix is blank. Decoding a cut token list and re-encoding it can merge tokens differently, so
    shrink until the re-encoded prompt fits: prompts then stay in one length bucket (one compilation).
    """
    encode = lambda s: tokenizer(s)["input_ids"]  # noqa: E731 - as `Generator.encode` does
    ids = encode(text[: 16 * prompt_tokens])  # no token is longer than 16 characters in practice
    if len(ids) < prompt_tokens:
        return None
    for count in range(prompt_tokens, 0, -1):
        prompt = tokenizer.decode(ids[:count], skip_special_tokens=True)
        if len(encode(prompt)) <= prompt_tokens:
            return prompt if prompt.strip() else None
    return None


def corpus_prompts(tokenizer, domain: str, num_prompts: int, prompt_tokens: int) -> list[str]:
    """Prefixes of held-out test documents of the text (wiki) or code (python) corpus.

    Documents shorter than `prompt_tokens` tokens are skipped (see `prefix_prompt`).
    """
    from train import data  # imports tensorflow_datasets: only when the built-in prompts are used

    prompts = []
    for document in data.load_documents(CORPUS_FOR_DOMAIN[domain], split="test"):
        prompt = prefix_prompt(tokenizer, document["text"], prompt_tokens)
        if prompt is not None:
            prompts.append(prompt)
        if len(prompts) == num_prompts:
            return prompts
    if not prompts:
        raise BenchError(f"no {domain} test document has {prompt_tokens} tokens; lower --prompt-tokens")
    _log(f"note: only {len(prompts)} {domain} test documents have {prompt_tokens} tokens; using them all")
    return prompts


def file_prompts(path: str) -> list[str]:
    """Prompts of a JSONL file, read exactly as `pass-jax generate --prompts` reads them."""
    return _read_prompts(argparse.Namespace(prompt=None, prompts=path))


# --- methods ------------------------------------------------------------------------------------

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


def pass_jax_methods(model, settings: BenchSettings, domains: Sequence[str], costs: dict | None = None
                     ) -> dict[str, list[PassJaxMethod]]:
    """AR plus PaSS for each setting (and the `-L auto` choice), per domain; generators with the same
    vectors are shared across domains."""
    common = dict(max_new_tokens=settings.max_new_tokens, sampling=settings.sampling,
                  batch_size=settings.batch_size)
    ar = PassJaxMethod(Generator(model, mode="ar", **common), None)
    cache: dict[tuple[Setting, str], PassJaxMethod] = {}
    methods = {}
    for domain in domains:
        # `--lookahead default` means the shipped vectors trained on the prompts' domain
        vectors = "code" if domain == "code" else "text"
        key = vectors if settings.lookahead == "default" else settings.lookahead
        chosen = settings.pass_settings()
        auto = auto_setting(model, settings, vectors, costs) if settings.auto and costs is not None else None
        if auto is not None:
            _log(f"-L auto ({domain}): {auto[0].label()}, predicted {auto[1]['ratio_vs_ar']:.2f}x ar")
        for setting in chosen + ([auto[0]] if auto else []):
            if (setting, key) not in cache:
                generator = Generator(model, mode="pass", num_lookahead=setting.num_lookahead, calls=setting.calls,
                                      draft_tree=() if setting.is_chain else setting.draft_tree,
                                      lookahead=settings.lookahead, domain=vectors, **common)
                cache[setting, key] = PassJaxMethod(generator, setting)
        rows = [cache[setting, key] for setting in chosen]
        if auto:  # the auto row is its own method even when it repeats a listed setting
            rows.append(PassJaxMethod(cache[auto[0], key].generator, auto[0], auto=True))
        methods[domain] = [ar] + rows
    return methods


# --- measuring ----------------------------------------------------------------------------------

def peak_host_mb() -> float | None:
    """Peak resident memory of this whole process so far, in MiB."""
    try:
        import resource
    except ImportError:  # Windows: psutil's current RSS is the best available
        try:
            import psutil
        except ImportError:
            return None
        return psutil.Process().memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def peak_device_mb() -> float | None:
    """Peak memory of the first accelerator, when its runtime reports one (CPU reports nothing)."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def machine_info() -> dict[str, Any]:
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = jax.devices()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            **{name: version(name) for name in ("jax", "jaxlib", "flax", "transformers", "torch")},
            "backend": jax.default_backend(), "device_kind": device.device_kind, "device_count": jax.device_count()}


def summarize_method(method, domain: str, results: list[RoundResult], peak_mb: float | None,
                     device_mb: float | None, num_prompts: int) -> dict[str, Any]:
    """One JSON row: speeds over rounds plus, for pass-jax, the decode statistics of all rounds."""
    speeds = [r.new_tokens / r.wall_s if r.wall_s > 0 else 0.0 for r in results]
    setting = method.setting
    row = {"domain": domain, "method": method.name, "backend": method.backend, "decoding": method.decoding,
           "num_lookahead": method.num_lookahead, "calls": None if setting is None else setting.calls,
           "draft_tree": None if setting is None else list(setting.draft_tree),
           "setting": "–" if setting is None else setting.label() + (" (auto)" if method.auto else ""),
           "auto": method.auto, "lookahead_source": method.lookahead_source,
           "batch_size": method.batch_size, "prompts": num_prompts, "rounds": len(results),
           "new_tokens": sum(r.new_tokens for r in results), "wall_s": sum(r.wall_s for r in results),
           "tokens_per_s": statistics.median(speeds), "tokens_per_s_min": min(speeds),
           "tokens_per_s_max": max(speeds), "tokens_per_s_rounds": speeds,
           "ratio_vs_ar": None, "ratio_vs_transformers_greedy": None,
           "tokens_per_call": None, "calls_per_token": None, "mean_accepted": None,
           "predicted_ratio_vs_ar": None, "predicted_ratio_equal_call_cost": None,
           "position_acceptance": None, "tokens_per_iteration_hist": None,
           "compile_s": method.compile_s, "peak_host_mb": peak_mb, "peak_device_mb": device_mb}
    if results[0].stats is None:
        return row
    stats = [s for r in results for s in r.stats]
    summary = summarize(stats, row["wall_s"], method.compile_s)
    calls = summary["model_calls"]
    if method.num_lookahead is None:  # AR: one token per call; the prefill is no loop iteration
        hist = {"1": calls - len(stats)}
    else:  # an iteration with A accepted drafts commits A + calls tokens (fewer when cut by EOS/budget)
        hist = {str(accepted + setting.calls): int(count) for accepted, count in enumerate(summary["accepted_hist"])}
    row.update(tokens_per_call=summary["tokens_per_call"], calls_per_token=calls / max(summary["new_tokens"], 1),
               mean_accepted=summary["mean_accepted"], position_acceptance=summary["position_acceptance"],
               tokens_per_iteration_hist=hist)
    return row


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed ratios against pass-jax AR and transformers greedy of the same domain (None when absent)."""
    for row in rows:
        for key, reference in (("ratio_vs_ar", AR), ("ratio_vs_transformers_greedy", HF_GREEDY)):
            base = next((r for r in rows if r["domain"] == row["domain"] and r["method"] == reference), None)
            if base is not None and base["tokens_per_s"] > 0:
                row[key] = row["tokens_per_s"] / base["tokens_per_s"]


def measure_bandwidth(megabytes: int = 512, repeats: int = 5) -> dict[str, float]:
    """Memory bandwidth as XLA sees it here: a float32 reduction and a matrix-vector product."""
    import jax
    import jax.numpy as jnp

    n = megabytes * 2**20 // 4
    cols = 4096
    matrix = jnp.ones((n // cols, cols), jnp.float32)
    vector = jnp.ones((cols,), jnp.float32)
    kernels = {"reduction_gb_s": jax.jit(jnp.sum), "matvec_gb_s": jax.jit(lambda m: m @ vector)}
    out = {}
    for name, kernel in kernels.items():
        kernel(matrix).block_until_ready()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            kernel(matrix).block_until_ready()
            times.append(time.perf_counter() - start)
        out[name] = matrix.nbytes / min(times) / 1e9
    return out


def roofline(model, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Autoregressive step time against weight bytes / bandwidth (a decode step reads every weight)."""
    import jax

    ar = [r for r in rows if r["method"] == "pass-jax-ar" and r["tokens_per_s"]]
    if not ar or ar[0]["batch_size"] != 1:
        return None
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
    bandwidth = measure_bandwidth()
    step_ms = 1000 / ar[0]["tokens_per_s"]
    best = max(bandwidth.values())
    return {"weight_bytes": weight_bytes, **bandwidth, "ar_step_ms": step_ms,
            "roofline_step_ms": weight_bytes / best / 1e6,
            "ar_step_over_roofline": step_ms / (weight_bytes / best / 1e6)}


def add_predictions(rows: list[dict[str, Any]], relative_cost: dict[tuple[int, int], float]) -> None:
    """For each PaSS row: the speed ratio its measured tokens per call predict at this machine's call
    costs (tokens per iteration over the iteration's cost in ar steps), and at equal call costs (the
    memory-bound regime of the paper)."""
    for row in rows:
        if row["method"] == PASS and row["tokens_per_call"]:
            setting = Setting(row["calls"], tuple(row["draft_tree"]))
            cost = sum(relative_cost[shape] for shape in setting.call_shapes())
            row["iteration_cost_vs_ar_step"] = cost
            row["predicted_ratio_vs_ar"] = row["tokens_per_call"] * setting.calls / cost
            row["predicted_ratio_equal_call_cost"] = row["tokens_per_call"]


def _cost_key(shape: tuple[int, int]) -> str:
    width, projected = shape
    return str(width) if width == projected else f"{width}/{projected}"


def run_bench(model, prompts: dict[str, list[str]], settings: BenchSettings, *, progress: bool = False,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Benchmark every method on `prompts` ({domain: [prompt, ...]}) with an already-loaded model.

    Returns the report: {"machine", "settings", "notes", "runs"}. Transformers rows are skipped
    with a note when torch is missing, `settings.transformers` is off, or the checkpoint is not
    one transformers can read.
    """
    log = log or _log
    notes = []
    costs: dict[tuple[int, int], float] | None = None
    if settings.call_costs or settings.auto:  # time one decode call per shape first: `-L auto` needs them
        shapes = {shape for setting in settings.pass_settings() for shape in setting.call_shapes()}
        costs = autotune.measure_call_costs(model, shapes, settings.batch_size)
    by_domain = pass_jax_methods(model, settings, list(prompts), costs)
    if settings.transformers:
        reason = transformers_unavailable_reason()
        if reason is None:
            try:
                hf = transformers_methods(model, settings)
            except BenchError as err:
                reason = str(err)
            else:
                by_domain = {domain: methods + hf for domain, methods in by_domain.items()}
        if reason is not None:
            notes.append(f"transformers+torch rows skipped: {reason}")
            log("note: " + notes[-1])
    units = [(domain, method) for domain, methods in by_domain.items() for method in methods]
    for domain, method in units:
        method.warmup(prompts[domain])
    results: dict[int, list[RoundResult]] = {i: [] for i in range(len(units))}
    peaks: dict[int, float | None] = {}
    bar = tqdm(total=settings.rounds * len(units), desc="bench", unit="run", disable=not progress)
    for round_index in range(settings.rounds):
        shift = round_index % len(units)
        for i in [*range(shift, len(units)), *range(shift)]:  # rotated order
            domain, method = units[i]
            bar.set_postfix_str(f"round {round_index + 1}: {domain} {method.name} L={method.num_lookahead}")
            results[i].append(method.run(prompts[domain], seed=settings.seed + 1000 * round_index))
            peaks[i] = peak_host_mb()
            bar.update()
    bar.close()
    device_mb = peak_device_mb()
    rows = [summarize_method(method, domain, results[i], peaks[i], device_mb, len(prompts[domain]))
            for i, (domain, method) in enumerate(units)]
    add_ratios(rows)
    call_costs = None
    if costs is not None:
        add_predictions(rows, autotune.relative(costs))
        call_costs = {"batch_size": settings.batch_size, "context": 256,
                      "ms": {_cost_key(k): v for k, v in sorted(costs.items())},
                      "relative": {_cost_key(k): v for k, v in sorted(autotune.relative(costs).items())}}
    notes.append("peak_host_mb is the process-wide peak resident memory when the row's last run ended "
                 "(it only grows); peak_device_mb is the device peak over the whole bench")
    return {"machine": machine_info(),
            "settings": {**settings.to_json(), "domains": {d: len(p) for d, p in prompts.items()},
                         "model": model.source, "torch_threads": os.cpu_count()},
            "notes": notes, "runs": rows, "call_costs": call_costs,
            "roofline": roofline(model, rows) if settings.roofline else None}


# --- output -------------------------------------------------------------------------------------

def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = ("| domain | method | setting | tok/s median [min, max] | × ar | × HF greedy | tok/call | "
              "mean accepted | compile/warm-up s | peak host MB |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['domain']} | {r['method']} | {r.get('setting', '–')} | "
            f"{r['tokens_per_s']:.1f} [{r['tokens_per_s_min']:.1f}, {r['tokens_per_s_max']:.1f}] | "
            f"{_fmt(r['ratio_vs_ar'])} | {_fmt(r['ratio_vs_transformers_greedy'])} | {_fmt(r['tokens_per_call'])} | "
            f"{_fmt(r['mean_accepted'])} | {_fmt(r['compile_s'], 1)} | {_fmt(r['peak_host_mb'], 0)} |")
    return "\n".join(lines)


def call_cost_table(report: dict[str, Any]) -> str:
    """Per PaSS row: its calls' shapes, their cost in ar steps, acceptance, predicted and measured ratio."""
    costs = report["call_costs"]
    lines = [f"decode call cost (batch {costs['batch_size']}, {costs['context']} cached tokens): width 1 = "
             f"{costs['ms']['1']:.1f} ms; by width (/projected positions): "
             + ", ".join(f"{k} {v:.2f}x" for k, v in costs["relative"].items()),
             "", "| domain | setting | calls (width/projected) | iteration cost (ar steps) | tok/call | "
             "acceptance by depth | predicted × ar | measured × ar |", "|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        if r.get("predicted_ratio_vs_ar") is not None:
            shapes = Setting(r["calls"], tuple(r["draft_tree"])).call_shapes()
            acceptance = " ".join(f"{a:.2f}" for a in r["position_acceptance"])
            lines.append(f"| {r['domain']} | {r['setting']} | {' + '.join(_cost_key(s) for s in shapes)} | "
                         f"{r['iteration_cost_vs_ar_step']:.2f} | {r['tokens_per_call']:.2f} | {acceptance} | "
                         f"{r['predicted_ratio_vs_ar']:.2f} | {_fmt(r['ratio_vs_ar'])} |")
    return "\n".join(lines)


def write_plots(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """PNG figures: speed-up vs L (one line per domain), acceptance per position, tokens per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in report["runs"] if r["method"] == PASS and not r.get("auto")
            and all(k == 1 for k in r["draft_tree"])]  # chains: one line per domain and number of calls
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    paths = [out_dir / name for name in PLOT_FILES]

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for domain in domains:
        for calls in sorted({r["calls"] for r in rows}):
            mine = [r for r in rows if r["domain"] == domain and r["calls"] == calls]
            ax.plot([r["num_lookahead"] for r in mine], [r["ratio_vs_ar"] or 0.0 for r in mine], "o-",
                    label=f"{domain}, {calls} call{'s' if calls == 2 else ''}")
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="autoregressive")
    ax.set(xlabel="look-ahead steps L", ylabel="speed-up over autoregressive (tokens/s)",
           title="PaSS speed-up")
    ax.legend()
    _save(fig, paths[0])

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in rows:
        positions = range(1, len(r["position_acceptance"]) + 1)
        ax.plot(positions, r["position_acceptance"], "o-", label=f"{r['domain']} {r['setting']}")
    ax.set(xlabel="look-ahead position i", ylabel="acceptance rate", ylim=(0, 1), title="Draft acceptance")
    ax.legend(fontsize="small")
    _save(fig, paths[1])

    fig, axes = plt.subplots(1, max(len(domains), 1), figsize=(5 * max(len(domains), 1), 3.5), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        mine = [r for r in rows if r["domain"] == domain]
        width = 0.8 / len(mine)
        for k, r in enumerate(mine):
            hist = r["tokens_per_iteration_hist"]
            total = sum(hist.values()) or 1
            ax.bar([int(t) + (k - (len(mine) - 1) / 2) * width for t in hist], [c / total for c in hist.values()],
                   width=width, label=r["setting"])
        ax.set(xlabel="tokens committed per iteration", ylabel="fraction of iterations", title=domain)
        ax.legend(fontsize="small")
    _save(fig, paths[2])
    return paths


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with outputs.atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


# --- command line -------------------------------------------------------------------------------

def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def settings_from_args(args) -> BenchSettings:
    values = [v.strip() for v in args.num_lookahead.split(",") if v.strip()]
    auto = "auto" in values
    chains = parse_int_list(",".join(v for v in values if v != "auto"), "--num-lookahead") if len(values) > auto else ()
    given = [text for text in (args.draft_tree or []) if text != "none"]
    trees = tuple(_parse_tree(text) for text in given) if args.draft_tree else BenchSettings.draft_trees
    if not chains and not trees and not auto:
        raise BenchError("give at least one PaSS setting: --num-lookahead, --draft-tree or auto")
    return BenchSettings(num_lookahead=chains, calls=parse_int_list(args.calls, "--calls"), draft_trees=trees,
                         auto=auto, max_new_tokens=args.max_new_tokens,
                         sampling=sampling_from_args(args), batch_size=args.batch_size, rounds=args.rounds,
                         lookahead=args.lookahead, seed=args.seed, transformers=not args.no_transformers)


def _parse_tree(text: str) -> tuple[int, ...]:
    from .draft_tree import parse
    try:
        return parse(text)
    except ValueError as err:
        raise BenchError(str(err)) from None


def cmd_bench(args) -> int:
    # Reject bad settings before spending seconds on loading the model.
    settings = settings_from_args(args)
    if args.num_prompts < 1 or args.prompt_tokens < 1:
        raise BenchError("--num-prompts and --prompt-tokens must be >= 1")
    prompts = {"custom": file_prompts(args.prompts)} if args.prompts else None
    check_lookahead_arg(args.lookahead)
    json_path = outputs.check_file(args.json, "--json", args.overwrite) if args.json else None
    plot_dir = outputs.check_files_in(args.plot, PLOT_FILES, "--plot", args.overwrite) if args.plot else None
    _log(f"loading {args.model} ...")
    model = load_model(args.model)
    if prompts is None:
        domains = ("text", "code") if args.domain == "both" else (args.domain,)
        prompts = {d: corpus_prompts(model.tokenizer, d, args.num_prompts, args.prompt_tokens) for d in domains}
    report = run_bench(model, prompts, settings, progress=True)
    report["settings"]["prompt_source"] = (args.prompts or
                                           f"held-out test documents, {args.prompt_tokens}-token prefixes")
    print(markdown_table(report["runs"]), flush=True)
    if report["roofline"]:
        r = report["roofline"]
        print(f"\nroofline: {r['weight_bytes'] / 1e6:.0f} MB of weights per step; bandwidth {r['reduction_gb_s']:.1f} GB/s "
              f"(reduction), {r['matvec_gb_s']:.1f} GB/s (matvec); AR step {r['ar_step_ms']:.1f} ms = "
              f"{r['ar_step_over_roofline']:.2f}x the {r['roofline_step_ms']:.1f} ms roofline", flush=True)
    if report["call_costs"]:
        print("\n" + call_cost_table(report), flush=True)
    if json_path:
        outputs.write_text(json_path, json.dumps(report, indent=1))
        _log(f"wrote {json_path}")
    if plot_dir:
        for path in write_plots(report, plot_dir):
            _log(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    """Add the `bench` subcommand to the `pass-jax` parser."""
    parser = subparsers.add_parser(
        "bench", help="benchmark PaSS against autoregressive decoding and transformers+torch",
        description="Time pass-jax AR, pass-jax PaSS for each L and transformers+torch generate (greedy, "
                    "sampling, prompt lookup) on the same prompts, in interleaved rounds.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("prompts")
    source.add_argument("--prompts", metavar="FILE.jsonl", help='one {"prompt": ...} object per line '
                        "(default: prefixes of held-out test documents)")
    source.add_argument("--domain", choices=("text", "code", "both"), default="text",
                        help="built-in prompts: wiki text, Python code or both (default text; "
                        "ignored with --prompts)")
    source.add_argument("--num-prompts", type=int, default=8, help="built-in prompts per domain (default 8)")
    source.add_argument("--prompt-tokens", type=int, default=64, help="tokens per built-in prompt (default 64)")
    parser.add_argument("--model", default="smollm2-135m",
                        help="smollm2-135m (bundled, default), a .gguf file, a Hugging Face LLaMA directory, "
                             "or a directory from `pass-jax convert` (no transformers rows for that one)")
    parser.add_argument("--lookahead", default="default", metavar="{default,text,code,none,PATH}",
                        help="look-ahead vectors: default (the shipped ones for the prompts' domain), none "
                             "(untrained), or a .npz / Orbax path")
    parser.add_argument("--num-lookahead", "-L", default="1,2,4,6,auto", metavar="L1,L2,...[,auto]",
                        help="PaSS chains of L look-ahead steps to compare; auto adds the setting `generate -L auto` "
                             "picks from the vectors' acceptance and this machine's call costs (default 1,2,4,6,auto)")
    parser.add_argument("--calls", default="2,1", metavar="C1,C2",
                        help="model calls per PaSS iteration to compare: 2 (the paper) and/or 1 (default 2,1)")
    parser.add_argument("--draft-tree", action="append", metavar="K1,K2,...",
                        help="a draft tree to compare (repeatable; default 3,1,1 and 4,2,1; none for no tree)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="new tokens per prompt (default 128)")
    add_sampling_args(parser)
    parser.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (default 1; "
                        "transformers prompt lookup always uses 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of every method (default 3)")
    parser.add_argument("--seed", type=seed_arg, default=0, help="PRNG seed of round 0 (default 0)")
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers+torch rows")
    parser.add_argument("--json", metavar="OUT.json", help="write the full report as JSON")
    parser.add_argument("--plot", metavar="DIR", help="write PNG figures into DIR")
    add_overwrite_arg(parser)
    parser.set_defaults(func=cmd_bench)
