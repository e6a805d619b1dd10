"""A training run's directory: checking it before anything loads (new, empty, or this command's own
run with --resume), preparing it, the settings a resume compares, Orbax checkpoints (look-ahead
parameters, optimizer state, step, and the data position that must match to resume exactly), and
`metrics.jsonl`.

The run directory holds `pass_jax_run.json` (the marker), `config.json`, `metrics.jsonl` and
`checkpoints/`; the loop (`pass_jax.train.loop`) adds the export at the end.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from pass_jax import lookahead as lookahead_lib
from pass_jax import outputs
from pass_jax.config import ConfigError
from pass_jax.distributed import gather_to_host
from pass_jax.errors import PassJaxError

from .data import PackedDataset
from .report import parse_record
from .run_config import RunConfig, TrainSection

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


def prepare_run_dir(run_dir: Path, overwrite: bool = False) -> None:
    """Create the run dir and mark it as a run; with `overwrite`, delete a previous run's checkpoints
    and metrics. Every process waits until it is ready."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        outputs.write_text(run_dir / RUN_MARKER, json.dumps({"format": RUN_FORMAT}))
        if overwrite:
            for name in ("checkpoints", "metrics.jsonl"):
                outputs.remove(run_dir / name)
    outputs.sync_processes("run dir ready")


def write_settings(run_dir: Path, config: RunConfig) -> None:
    """config.json: what a later --resume compares its optimizer settings with (process 0 writes)."""
    if jax.process_index() == 0:
        outputs.write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(config), indent=1))


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
    try:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   data=ocp.args.JsonSave(data_position(step, data, t))),
                     force=True)
    except BaseException:  # a full disk, Ctrl-C: the last complete checkpoint stays the one to resume
        directory = str(manager.directory)
        if jax.process_index() == 0 and "://" not in directory:  # local: gs:// has no partial directories
            # Orbax may have renamed the step's directory into place before the failure (seen on a full tmpfs):
            # a save that raised is never complete, whatever its directory is called.
            for partial in [*Path(directory).glob(f"{step}.orbax-checkpoint-tmp*"), Path(directory) / str(step)]:
                if partial.exists():
                    outputs.remove(partial)
        raise


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

