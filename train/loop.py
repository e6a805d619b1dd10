"""The look-ahead training loop: the base model and data a run config names, one jitted step, eval,
the loop, export.

Only the look-ahead parameters (`pass_jax.lookahead`, any kind) are trained. The base parameters
are an ordinary, non-differentiated argument of the jitted step (never closed over, so never baked
into the program, and never copied per step); gradients and optimizer state exist for the
look-ahead parameters alone.

The run config is `pass_jax.train.run_config`; the run directory, Orbax checkpoints and resume are
`pass_jax.train.checkpoints` (the data position is the step, see `pass_jax.train.data.PackedDataset`).
At the end the loop writes `lookahead.npz` + `lookahead.json` (the format `pass-jax generate
--lookahead PATH` reads).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from pass_jax import lookahead as lookahead_lib
from pass_jax import outputs
from pass_jax.config import ConfigError, LlamaConfig, load_preset
from pass_jax.corpora import CorpusError
from pass_jax.distributed import gather_to_host, global_array_from_local, process_local_batch
from pass_jax.errors import PassJaxError
from pass_jax.loading import LoadedModel, load_model
from pass_jax.model import init_params
from pass_jax.sharding import make_mesh, shard_params

from . import diagnostic
from .checkpoints import (MetricsLog, check_run_outputs, open_checkpoints, prepare_run_dir, restore_checkpoint,
                          save_checkpoint, write_settings)
from .data import PackedDataset, build_packed_dataset
from .losses import cached_loss, lookahead_loss, sample_anchors, teach
from .run_config import RANDOM_MODEL, DataSection, ModelSection, RunConfig, TrainSection
from .tokenizers import ByteTokenizer


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


def check_window(config: LlamaConfig, seq_len: int, num_lookahead: int) -> None:
    """Refuse training sequences longer than a sliding attention window (Mistral v0.1): pass-jax attends
    to every earlier position, so past the window its targets would not be the model's."""
    window = config.sliding_window
    if window is not None and seq_len + num_lookahead > window:
        raise ConfigError(f"data.seq_len={seq_len} + num_lookahead={num_lookahead} positions exceed the model's sliding "
                          f"attention window of {window} tokens, which pass-jax does not implement; use "
                          f"data.seq_len <= {window - num_lookahead}")


def _check_shapes(loaded: LlamaConfig, preset: LlamaConfig, section: ModelSection) -> None:
    fields = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "head_dim",
              "qkv_bias", "qk_norm", "tie_embeddings")
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
        # An adapter init with adapters for fewer steps grows them for all L trained steps.
        loaded = lookahead_lib.as_kind(lookahead_lib.load(t.init, model.config), t.kind, model.config.num_layers,
                                       t.adapter_rank, num_adapted=t.num_lookahead, key=_keys(t.seed)[0])
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
# The loop
# --------------------------------------------------------------------------

def train(config: RunConfig, model: LoadedModel, mesh, train_data: PackedDataset, eval_data: PackedDataset,
          resume: bool = False, command: str = "", overwrite: bool = False) -> dict[str, Any]:
    """Train the look-ahead vectors, export them, and return the final eval metrics. With
    `overwrite`, a previous run's checkpoints and metrics in the run dir are deleted first."""
    t = config.train
    local_batch_size(t, mesh)  # fail early on a batch the hosts cannot share
    run_dir = config.run_dir
    prepare_run_dir(run_dir, overwrite)
    state = init_state(model, t, mesh)
    with open_checkpoints(run_dir, t) as manager:
        if manager.latest_step() is not None:
            if not resume:
                raise PassJaxError(f"{run_dir} holds checkpoints up to step {manager.latest_step()}: add --resume "
                                   "to continue that run, --overwrite to start afresh, or set output.dir=NEW_DIR")
            state = restore_checkpoint(manager, state, train_data, t)
        start = int(gather_to_host(state["step"]))
        write_settings(run_dir, config)
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
    metrics. One process writes a run directory at a time: a second run into it (a --resume of a run
    still going, two fresh runs at once) is refused with one line (process 0 holds the lock of a
    multi-host job); a full disk is one line too."""
    run_dir = config.run_dir if jax.process_index() == 0 else None
    with outputs.locked(run_dir, "output.dir"), outputs.write_errors(run_dir):
        check_run_outputs(config, resume, overwrite, allow_changed_settings)
        mesh = make_mesh(config.mesh)
        model = load_base_model(config.model, mesh)
        check_window(model.config, config.data.seq_len, config.train.num_lookahead)
        train_data, eval_data = load_splits(config.data, model.tokenizer)
        return train(config, model, mesh, train_data, eval_data, resume=resume, command=command,
                     overwrite=overwrite)
