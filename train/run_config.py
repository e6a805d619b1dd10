"""The `pass-jax train` run config: its sections (model, data, train, output), their ranges and
consistency checks, and reading a config by name or path with command-line overrides.

Built with `pass_jax.typed_config` (unknown keys and mistyped values named by dotted key).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from pass_jax import lookahead as lookahead_lib
from pass_jax.config import ConfigError, load_config_file, resolve_config_path
from pass_jax.defaults import DEFAULT_MODEL
from pass_jax.sampling import SamplingConfig
from pass_jax.typed_config import apply_overrides, build

from .losses import OBJECTIVES, TARGETS, num_valid_anchors

PREFIXES = ("cached", "masked")

RANDOM_MODEL = "random"


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
