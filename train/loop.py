"""The look-ahead training loop: run configs, one jitted step, eval, checkpoints, export.

Only the look-ahead parameters (`pass_jax.lookahead`, any kind) are trained. The base parameters
are an ordinary, non-differentiated argument of the jitted step (never closed over, so never baked
into the program, and never copied per step); gradients and optimizer state exist for the
look-ahead parameters alone.

A run directory holds `config.json`, `metrics.jsonl` (one JSON object per log/eval point),
`checkpoints/` (Orbax: look-ahead parameters, optimizer state, step; the data position is the step, see
`pass_jax.train.data.PackedDataset`) and, at the end, `lookahead.npz` + `lookahead.json` (the format
`pass-jax generate --lookahead PATH` reads).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from pass_jax import lookahead as lookahead_lib
from pass_jax import outputs
from pass_jax.config import ConfigError, LlamaConfig, load_config_file, load_preset, resolve_config_path
from pass_jax.defaults import DEFAULT_MODEL
from pass_jax.distributed import gather_to_host, global_array_from_local, process_local_batch
from pass_jax.errors import PassJaxError
from pass_jax.loading import LoadedModel, load_model
from pass_jax.model import init_params
from pass_jax.sampling import SamplingConfig
from pass_jax.sharding import make_mesh, shard_params
from pass_jax.typed_config import apply_overrides, build

from . import diagnostic
from .corpora import CorpusError
from .data import PackedDataset, build_packed_dataset
from .losses import (OBJECTIVES, TARGETS, cached_loss, lookahead_loss, num_valid_anchors, sample_anchors,
                     teach)
from .report import parse_record
from .tokenizers import ByteTokenizer

PREFIXES = ("cached", "masked")

RANDOM_MODEL = "random"


# --------------------------------------------------------------------------
# Run configuration
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelSection:
    """source: what `pass_jax.loading.load_model` takes (`smollm2-135m`, a .gguf, an HF or converted
    directory), or `random` for random weights of `preset` (smoke tests). preset: a model preset
    name whose shapes the loaded model must have (and planning tools read). dtype: overrides the
    activation and parameter dtype (bfloat16 on TPU; float32 on CPU, where bf16 is slow)."""

    source: str = DEFAULT_MODEL
    preset: str | None = None
    dtype: str | None = None


@dataclasses.dataclass(frozen=True)
class DataSection:
    """source: wiki | python (offline) | wikipedia | the-stack-python (TFDS) | a corpus path.
    max_documents caps each split; max_tokens the train split and eval_max_tokens the test split
    (default: max_tokens), since a few eval batches need far fewer tokens than training."""

    source: str = "wiki"
    seq_len: int = 256
    max_documents: int | None = None
    max_tokens: int | None = None
    eval_max_tokens: int | None = None
    add_bos: bool = False
    data_dir: str | None = None
    cache_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """num_lookahead: L; kind: vectors (the paper) | deep (per-layer vectors too) | adapter (deep plus
    low-rank adapters of rank adapter_rank at look-ahead slots, see pass_jax.lookahead); batch_size: global rows per step; anchors_per_seq: look-ahead groups per
    row; loss: ce | kl | tv | accept, targets: data | self, temperature/top_k: the decode's sampling
    that kl/tv/accept distil (see pass_jax.train.losses); prefix: cached (one no-gradient pass over the
    tokens) | masked (the reference: one masked forward and backward over tokens and groups);
    steps, lr, warmup: the warmup-cosine schedule; clip: global gradient norm;
    eval_every/eval_batches, checkpoint_every/keep: schedules, in steps; eval_sequences x
    eval_anchors_per_seq: held-out anchors of the [LA]_1 acceptance-and-ceiling eval (0: off);
    init: start from exported look-ahead parameters (a .npz or Orbax dir, any kind)."""

    num_lookahead: int = 8
    kind: str = "vectors"
    adapter_rank: int = 8
    batch_size: int = 8
    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.0
    clip: float = 1.0
    anchors_per_seq: int = 32
    loss: str = "ce"
    targets: str = "data"
    temperature: float = 0.8
    top_k: int = 10
    prefix: str = "cached"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 100
    keep: int = 3
    eval_sequences: int = 16
    eval_anchors_per_seq: int = 4
    init: str | None = None

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k)


@dataclasses.dataclass(frozen=True)
class OutputSection:
    """dir: the run directory (default runs/<config name>); export: the final .npz (default
    <dir>/lookahead.npz)."""

    dir: str | None = None
    export: str | None = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    name: str
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    output: OutputSection = OutputSection()
    mesh: str | None = None  # e.g. "2x2" (data x tensor); None: every device on the data axis
    description: str = ""

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir or f"runs/{self.name}").expanduser().absolute()

    @property
    def export_path(self) -> Path:
        return Path(self.output.export).expanduser().absolute() if self.output.export else self.run_dir / "lookahead.npz"


_AT_LEAST_ONE = ("seq_len", "max_documents", "max_tokens", "eval_max_tokens", "num_lookahead", "batch_size",
                 "steps", "anchors_per_seq", "adapter_rank", "log_every", "eval_every", "eval_batches", "checkpoint_every", "keep",
                 "top_k")
_POSITIVE = ("lr", "clip", "temperature")
_NON_NEGATIVE = ("warmup", "weight_decay")


def _check_range(name: str, value: Any, key: str) -> None:
    """The numeric ranges of the run config's keys (their types are checked by `typed_config.build`)."""
    if name in _AT_LEAST_ONE and value < 1 or name in _POSITIVE and not 0 < value < np.inf \
            or name in _NON_NEGATIVE and not 0 <= value < np.inf:
        rule = "finite and >= 0" if name in _NON_NEGATIVE else "finite and positive" if name in _POSITIVE else "positive"
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def run_config_from_dict(data: dict, name: str) -> RunConfig:
    """Validate a train config (as read from JSON, overrides applied) into a RunConfig."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind != "train":
        raise ConfigError(f"config {name!r} has kind {kind!r}; `pass-jax train` needs a config with "
                          '"kind": "train" (model presets are referenced from its "model" section)')
    config = build(RunConfig, {"name": name, **data}, check=_check_range)
    _check_consistency(config)
    return config


def _check_consistency(config: RunConfig) -> None:
    t, d = config.train, config.data
    choices = {"loss": OBJECTIVES, "targets": TARGETS, "kind": lookahead_lib.KINDS, "prefix": PREFIXES}
    for key, allowed in choices.items():
        if getattr(t, key) not in allowed:
            raise ConfigError(f"train.{key} must be one of {', '.join(allowed)}, got {getattr(t, key)!r}")
    if t.prefix == "masked" and t.targets != "data":
        raise ConfigError("train.targets=self needs train.prefix=cached (the continuation is sampled on the cache)")
    if (t.eval_sequences == 0) != (t.eval_anchors_per_seq == 0) or min(t.eval_sequences, t.eval_anchors_per_seq) < 0:
        raise ConfigError("train.eval_sequences and train.eval_anchors_per_seq must both be positive, or both 0 "
                          "(no acceptance eval)")
    if t.anchors_per_seq > num_valid_anchors(d.seq_len, t.num_lookahead):
        raise ConfigError(f"train.anchors_per_seq={t.anchors_per_seq} exceeds the "
                          f"{num_valid_anchors(d.seq_len, t.num_lookahead)} anchors with all "
                          f"{t.num_lookahead} targets inside data.seq_len={d.seq_len}")
    if config.model.source == RANDOM_MODEL and not config.model.preset:
        raise ConfigError(f"model.source={RANDOM_MODEL!r} needs model.preset to give the shapes")


def load_run_config(name_or_path: str, overrides: list[str] = ()) -> RunConfig:
    """A train config by name in `configs/` or path, with command-line overrides."""
    name = resolve_config_path(name_or_path).stem
    return run_config_from_dict(apply_overrides(load_config_file(name_or_path), list(overrides)), name)


# --------------------------------------------------------------------------
# Model and data
# --------------------------------------------------------------------------

def load_base_model(section: ModelSection, mesh) -> LoadedModel:
    """The frozen base model, sharded on the mesh, checked against the preset's shapes."""
    dtypes = {"dtype": section.dtype, "param_dtype": section.dtype} if section.dtype else {}
    if section.source == RANDOM_MODEL:
        config = load_preset(section.preset).replace(**dtypes)
        # jit: an eager init dispatches op by op and takes seconds even for the tiny preset.
        params = shard_params(jax.jit(init_params, static_argnums=0)(config, jax.random.key(0)), config, mesh)
        return LoadedModel(config, params, ByteTokenizer(config.vocab_size), f"{RANDOM_MODEL}:{section.preset}")
    model = load_model(section.source, mesh=mesh, **dtypes)
    if section.preset:
        _check_shapes(model.config, load_preset(section.preset), section)
    return model


def _check_shapes(loaded: LlamaConfig, preset: LlamaConfig, section: ModelSection) -> None:
    fields = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
    diff = [f"{f}={getattr(loaded, f)} (preset {getattr(preset, f)})" for f in fields
            if getattr(loaded, f) != getattr(preset, f)]
    if diff:
        raise ConfigError(f"model {section.source!r} does not match model.preset={section.preset!r}: {', '.join(diff)}")


def load_split(section: DataSection, tokenizer, split: str) -> PackedDataset:
    """This host's share of the packed train or test split."""
    max_tokens = section.max_tokens if split == "train" else section.eval_max_tokens or section.max_tokens
    try:
        data = build_packed_dataset(section.source, tokenizer, section.seq_len, split=split, max_tokens=max_tokens,
                                    max_documents=section.max_documents, add_bos=section.add_bos,
                                    data_dir=section.data_dir, cache_dir=section.cache_dir)
    except CorpusError as err:
        raise CorpusError(f"data.source={section.source!r}, {split} split: {err}") from None
    return data.shard(jax.process_index(), jax.process_count())


def load_splits(section: DataSection, tokenizer) -> tuple[PackedDataset, PackedDataset]:
    """This host's share of the packed train and test splits."""
    return load_split(section, tokenizer, "train"), load_split(section, tokenizer, "test")


def local_batch_size(t: TrainSection, mesh) -> int:
    """Rows each host feeds per step. Hosts read disjoint shards of the data, so each must feed
    rows of its own: the mesh's data axes have to span the hosts evenly."""
    local = t.batch_size // jax.process_count()
    rows = process_local_batch(t.batch_size, mesh)
    if t.batch_size % jax.process_count() or rows.stop - rows.start != local:
        raise ConfigError(f"train.batch_size={t.batch_size} on mesh {dict(mesh.shape)} does not give each of the "
                          f"{jax.process_count()} hosts its own equal share of the rows; use a batch size divisible "
                          "by the data-parallel size and a mesh whose data axes span the hosts")
    return local


# --------------------------------------------------------------------------
# Optimizer and jitted steps
# --------------------------------------------------------------------------

def learning_rate(t: TrainSection) -> optax.Schedule:
    """Linear warmup, then cosine decay to 0 at train.steps. Warmup starts at lr/warmup, not 0,
    so that the first step is not wasted. Short runs keep at least one step of decay (optax needs it)."""
    warmup = min(t.warmup, t.steps - 1)
    return optax.warmup_cosine_decay_schedule(t.lr / max(warmup, 1), t.lr, warmup, t.steps)


def make_optimizer(t: TrainSection) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(t.clip),
                       optax.adamw(learning_rate(t), weight_decay=t.weight_decay))


def init_state(model: LoadedModel, t: TrainSection, mesh) -> dict:
    """Step 0: untrained look-ahead parameters of train.kind (mean embedding + noise, zero per-layer
    vectors), or those of `t.init` converted to that kind, kept in float32 whatever the model dtype.

    Built under jit straight into replicated arrays, which also works when the embedding is
    sharded across hosts."""
    start = None
    if t.init:
        loaded = lookahead_lib.as_kind(lookahead_lib.load(t.init, model.config), t.kind, model.config.num_layers,
                                       t.adapter_rank, key=_keys(t.seed)[0])
        start = jax.tree.map(lambda x: np.asarray(x, np.float32),
                             lookahead_lib.prepare(loaded, model.config, t.num_lookahead, f"train.init={t.init}"))

    def init(embedding):
        if start is None:
            lookahead = lookahead_lib.init(t.kind, {"embedding": embedding}, model.config, t.num_lookahead,
                                           _keys(t.seed)[0], t.adapter_rank)
        else:
            lookahead = jax.tree.map(jnp.asarray, start)
        lookahead = jax.tree.map(lambda x: x.astype(jnp.float32), lookahead)
        return {"step": jnp.zeros((), jnp.int32), "lookahead": lookahead,
                "opt_state": make_optimizer(t).init(lookahead)}

    return jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec()))(model.params["embedding"])


def _keys(seed: int):
    """(init key, anchor key) of a run; anchors of step k use fold_in(anchor key, k)."""
    return jax.random.split(jax.random.key(seed))


# Cached: runs with the same model config and settings (a resumed run, tests) reuse one compilation.
@functools.cache
def make_train_step(config: LlamaConfig, t: TrainSection):
    """jit(params, state, tokens [B, T]) -> (new state, metrics). The state's buffers are donated."""
    optimizer = make_optimizer(t)

    def train_step(params, state, tokens):
        key = jax.random.fold_in(_keys(t.seed)[1], state["step"])
        anchors = sample_anchors(key, tokens.shape[0], tokens.shape[1], t.anchors_per_seq, t.num_lookahead)
        if t.prefix == "masked":
            loss = functools.partial(lookahead_loss, params=params, config=config, tokens=tokens, anchors=anchors)
        else:  # the frozen model's part runs once, outside the gradient
            teacher = teach(params, config, tokens, anchors, t.num_lookahead, t.sampling, t.targets,
                            jax.random.fold_in(key, 1))
            loss = functools.partial(cached_loss, params=params, config=config, teacher=teacher,
                                     seq_len=tokens.shape[1], anchors=anchors)
        grad_fn = jax.value_and_grad(loss, has_aux=True)  # w.r.t. the look-ahead parameters only
        (_, metrics), grads = grad_fn(state["lookahead"], objective=t.loss, sampling=t.sampling)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["lookahead"])
        new_state = {"step": state["step"] + 1, "lookahead": optax.apply_updates(state["lookahead"], updates),
                     "opt_state": opt_state}
        return new_state, {**metrics, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(train_step, donate_argnums=1)


@functools.cache
def make_eval_step(config: LlamaConfig, t: TrainSection):
    """jit(params, look-ahead parameters, tokens, index) -> metrics on data targets (whatever the
    run's targets), cached prefix. Anchors come from a fixed key (not the run's seed), so eval
    numbers of different runs are comparable."""
    def eval_step(params, lookahead, tokens, index):
        key = jax.random.fold_in(jax.random.key(0), index)
        anchors = sample_anchors(key, tokens.shape[0], tokens.shape[1], t.anchors_per_seq, t.num_lookahead)
        teacher = teach(params, config, tokens, anchors, t.num_lookahead, t.sampling)
        return cached_loss(lookahead, params, config, teacher, tokens.shape[1], anchors, t.loss, t.sampling)[1]

    return jax.jit(eval_step)


def _mean_metrics(metrics: list[dict]) -> dict[str, Any]:
    """Average device metrics on the host; per-position arrays become lists. A collective: every
    process calls it."""
    host = gather_to_host(metrics)
    return {k: np.mean([m[k] for m in host], axis=0, dtype=np.float64).round(6).tolist() for k in host[0]}


def evaluate(eval_step, model: LoadedModel, lookahead, data: PackedDataset, t: TrainSection, mesh) -> dict[str, Any]:
    """Mean metrics over the first `eval_batches` batches of the test split (never repeating rows),
    and (single-process runs) [LA]_1's exact acceptance and the blind-drafter ceilings on
    eval_sequences x eval_anchors_per_seq held-out anchors (`pass_jax.train.diagnostic`, depth 1)."""
    batch = min(local_batch_size(t, mesh), len(data))
    num = min(t.eval_batches, data.steps_per_epoch(batch))
    results = _mean_metrics([eval_step(model.params, lookahead, global_array_from_local(rows, mesh), i)
                             for i, rows in data.batches(batch, num_steps=num)])
    if t.eval_sequences and jax.process_count() == 1:
        tokens, anchors = diagnostic.pick_anchors(data, t.eval_sequences, t.eval_anchors_per_seq)
        spec = diagnostic.DiagnosticSpec(num_lookahead=1, sampling=t.sampling, depth=1, max_candidates=1)
        found = diagnostic.diagnose(model.params, model.config, lookahead, tokens, anchors, spec, progress=False)
        results.update(accept1=round(found["model_path"][0], 6),
                       ceiling1={kind: round(v[0], 6) for kind, v in found["ceiling"].items()})
    return results


# --------------------------------------------------------------------------
# Checkpoints and logs
# --------------------------------------------------------------------------

RUN_MARKER = "pass_jax_run.json"  # marks a directory as a `pass-jax train` run, which --resume may reuse
RUN_FORMAT = "pass-jax-train-run-v1"
# What the optimizer and its schedule are built from: a resumed run that changes them no longer
# continues the run its checkpoints came from.
OPTIMIZER_KEYS = ("lr", "warmup", "weight_decay", "clip", "steps")


def check_run_outputs(config: RunConfig, resume: bool = False, overwrite: bool = False,
                      allow_changed_settings: bool = False) -> None:
    """Before anything is loaded: output.dir must be new, empty or this command's own run (with
    --resume, and unchanged optimizer settings), and the export must not replace a user's file."""
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts afresh: give one of them")
    run_dir = outputs.check_dir(config.run_dir, "output.dir", overwrite, marker=RUN_MARKER)
    if (run_dir / RUN_MARKER).is_file() and not overwrite:
        if not resume:
            raise ConfigError(f"output.dir {run_dir} holds a run: add --resume to continue it, --overwrite to start "
                              "afresh, or set output.dir=NEW_DIR")
        if not allow_changed_settings:
            _check_unchanged_settings(run_dir, config.train)
    export = config.export_path
    if run_dir not in export.parents:
        if export.suffix == ".npz":
            outputs.check_files_in(export.parent, [export.name, lookahead_lib.metadata_path(export).name],
                                   "output.export", overwrite)
        else:
            outputs.check_dir(export, "output.export", overwrite)


def _check_unchanged_settings(run_dir: Path, t: TrainSection) -> None:
    path = run_dir / "config.json"
    if not path.is_file():  # killed before its first step: nothing was trained with other settings
        return
    try:
        before = json.loads(path.read_text())["train"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: cannot read the run's settings ({err}); --allow-changed-settings resumes "
                          "without comparing them") from None
    changed = [f"train.{key} {before.get(key)!r} -> {getattr(t, key)!r}" for key in OPTIMIZER_KEYS
               if before.get(key) != getattr(t, key)]
    if changed:
        raise ConfigError(f"--resume with changed optimizer settings ({', '.join(changed)}): the checkpoints were "
                          "trained with the old ones; add --allow-changed-settings to continue anyway")


def open_checkpoints(run_dir: Path, t: TrainSection):
    import orbax.checkpoint as ocp

    # Synchronous saves: the state is small (the look-ahead parameters, three copies), and a killed
    # run must find its last checkpoint complete; a save cut short by the kill is swept on resume.
    options = ocp.CheckpointManagerOptions(max_to_keep=t.keep, enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(run_dir / "checkpoints", options=options)


def data_position(step: int, data: PackedDataset, t: TrainSection) -> dict[str, int]:
    """What must match for batch k of a resumed run to be batch k of the original run."""
    return {"step": step, "seed": t.seed, "batch_size": t.batch_size, "num_sequences": len(data),
            "seq_len": data.seq_len, "process_count": jax.process_count()}


def save_checkpoint(manager, step: int, state: dict, data: PackedDataset, t: TrainSection,
                    force: bool = False) -> None:
    """Save every train.checkpoint_every steps, or when forced. `step` is passed in, not read from
    the state, so that skipped saves never wait for the device."""
    import orbax.checkpoint as ocp

    if step == manager.latest_step() or not (force or step % t.checkpoint_every == 0):
        return
    if not all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(gather_to_host(state["lookahead"]))):
        raise PassJaxError(f"training diverged: the look-ahead parameters are not finite at step {step}; lower "
                           "train.lr (the checkpoints so far hold finite ones)")
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave(data_position(step, data, t))),
                 force=True)


def restore_checkpoint(manager, state: dict, data: PackedDataset, t: TrainSection) -> dict:
    """The latest checkpoint into `state`'s shapes and shardings; refuses changed data."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                             data=ocp.args.JsonRestore()))
    expected = data_position(step, data, t)
    if restored["data"] != expected:
        changed = sorted(k for k in expected if restored["data"].get(k) != expected[k])
        raise PassJaxError(f"cannot resume step {step} exactly: {', '.join(changed)} changed since the "
                           f"checkpoint ({restored['data']} vs now {expected})")
    return restored["state"]


class MetricsLog:
    """metrics.jsonl in the run dir, written by process 0. On resume, records after the restored
    step (written before the kill, to be redone) are dropped, and so is a line the kill cut short
    (not a JSON record)."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        kept = []
        if start_step > 0 and path.is_file():
            kept = [line for line, record in map(parse_record, path.read_text().splitlines())
                    if record is not None and record["step"] <= start_step]
        outputs.write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------

def train(config: RunConfig, model: LoadedModel, mesh, train_data: PackedDataset, eval_data: PackedDataset,
          resume: bool = False, command: str = "", overwrite: bool = False) -> dict[str, Any]:
    """Train the look-ahead vectors, export them, and return the final eval metrics. With
    `overwrite`, a previous run's checkpoints and metrics in the run dir are deleted first."""
    t = config.train
    local_batch_size(t, mesh)  # fail early on a batch the hosts cannot share
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        outputs.write_text(run_dir / RUN_MARKER, json.dumps({"format": RUN_FORMAT}))
        if overwrite:
            for name in ("checkpoints", "metrics.jsonl"):
                outputs.remove(run_dir / name)
    outputs.sync_processes("run dir ready")
    state = init_state(model, t, mesh)
    with open_checkpoints(run_dir, t) as manager:
        if manager.latest_step() is not None:
            if not resume:
                raise PassJaxError(f"{run_dir} holds checkpoints up to step {manager.latest_step()}: add --resume "
                                   "to continue that run, --overwrite to start afresh, or set output.dir=NEW_DIR")
            state = restore_checkpoint(manager, state, train_data, t)
        start = int(gather_to_host(state["step"]))
        if jax.process_index() == 0:  # what a later --resume compares its optimizer settings with
            outputs.write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=1))
        log = MetricsLog(run_dir / "metrics.jsonl", start)
        eval_step = make_eval_step(model.config, t)
        if start == 0:  # the untrained baseline
            log.write({"step": 0, "split": "eval", **evaluate(eval_step, model, state["lookahead"], eval_data, t,
                                                               mesh)})
        state = _train_steps(config, model, mesh, train_data, eval_data, state, manager, log, eval_step)
        final = evaluate(eval_step, model, state["lookahead"], eval_data, t, mesh)
        log.write({"step": t.steps, "split": "eval", **final})
        save_checkpoint(manager, t.steps, state, train_data, t, force=True)
    _export(config, model, gather_to_host(state["lookahead"]), final, train_data, eval_data, command)
    return final


def _clock() -> np.ndarray:
    """(wall, this process's CPU) seconds: on a shared machine the CPU time per step is the stable
    cost, the wall time depends on the other processes."""
    return np.array([time.perf_counter(), time.process_time()])


def _train_steps(config: RunConfig, model: LoadedModel, mesh, train_data, eval_data, state, manager, log,
                 eval_step) -> dict:
    """From the state's step to train.steps: step, log, eval and checkpoint on schedule."""
    t = config.train
    start = int(gather_to_host(state["step"]))
    train_step = make_train_step(model.config, t)
    schedule = learning_rate(t)
    local_batch = local_batch_size(t, mesh)
    tokens_per_step = t.batch_size * train_data.seq_len
    pending: list[dict] = []
    bar = tqdm(train_data.batches(local_batch, start, t.seed, num_steps=t.steps - start), total=t.steps,
               initial=start, desc=f"training {config.name}", unit="step", disable=jax.process_index() != 0)
    tick = _clock()
    for index, rows in bar:
        state, metrics = train_step(model.params, state, global_array_from_local(rows, mesh))
        pending.append(metrics)
        step = index + 1
        if index == start:  # keep compilation out of the step time
            jax.block_until_ready(state)
            log.write({"step": step, "split": "compile", "first_step_s": round(_clock()[0] - tick[0], 3)})
            pending, tick = [], _clock()
        elif step % t.log_every == 0 or step == t.steps:
            record = _mean_metrics(pending)
            if not np.isfinite(record["loss"]):
                raise PassJaxError(f"training diverged: the loss is {record['loss']} at step {step}; lower train.lr "
                                   "(the checkpoints so far hold finite parameters)")
            step_s, step_cpu_s = (_clock() - tick) / len(pending)
            log.write({"step": step, "split": "train", "lr": float(schedule(index)), **record,
                       "step_s": round(step_s, 4), "tokens_per_s": round(tokens_per_step / step_s, 1),
                       "anchors_per_s": round(t.batch_size * t.anchors_per_seq / step_s, 2),
                       "step_cpu_s": round(step_cpu_s, 3),
                       "anchors_per_cpu_s": round(t.batch_size * t.anchors_per_seq / step_cpu_s, 3)})
            bar.set_postfix(loss=f"{record['loss']:.3f}", accept1=f"{record['accept'][0]:.3f}")
            pending, tick = [], _clock()
        if step % t.eval_every == 0 and step < t.steps:  # the final eval follows the loop
            eval_start = _clock()
            log.write({"step": step, "split": "eval",
                       **evaluate(eval_step, model, state["lookahead"], eval_data, t, mesh)})
            tick += _clock() - eval_start  # eval time is not step time
        save_checkpoint(manager, step, state, train_data, t)
    bar.close()
    return state


def _export(config: RunConfig, model: LoadedModel, vectors, final: dict, train_data, eval_data,
            command: str) -> None:
    if jax.process_index() != 0:
        return
    t = config.train
    metadata = {
        "format": "pass-jax-lookahead-v1",
        "model": model.source,
        "num_lookahead": t.num_lookahead,
        "parameters": lookahead_lib.num_parameters(vectors),
        "hidden_size": model.config.hidden_size,
        "config": dataclasses.asdict(config),
        "data": {"source": config.data.source, "seq_len": train_data.seq_len,
                 "train_sequences": len(train_data) * jax.process_count(),
                 "test_sequences": len(eval_data) * jax.process_count(),
                 "tokens_seen": t.steps * t.batch_size * train_data.seq_len,
                 "target_tokens": t.steps * t.batch_size * t.anchors_per_seq * t.num_lookahead},
        "steps": t.steps,
        "final_eval": final,
        "command": command,
    }
    lookahead_lib.save(config.export_path, vectors, metadata)


def run(config: RunConfig, resume: bool = False, command: str = "", overwrite: bool = False,
        allow_changed_settings: bool = False) -> dict[str, Any]:
    """Check the outputs, load the model and data a config names, then train; returns the final eval
    metrics."""
    check_run_outputs(config, resume, overwrite, allow_changed_settings)
    mesh = make_mesh(config.mesh)
    model = load_base_model(config.model, mesh)
    train_data, eval_data = load_splits(config.data, model.tokenizer)
    return train(config, model, mesh, train_data, eval_data, resume=resume, command=command, overwrite=overwrite)
