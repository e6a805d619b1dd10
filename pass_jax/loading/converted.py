"""pass-jax Orbax directories (`pass-jax convert`): params as an Orbax checkpoint, the config and the
model's identity in `pass_jax.json`, the tokenizer's files; local or `gs://`. Reloaded sharded."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jax

from .. import config as config_lib
from ..errors import quiet_abandoned_reads, root_reason
from ..sharding import make_mesh, param_shardings
from .common import LoadedModel, LoadError, any_path, read_json
from .tokenizers import hf_tokenizer

PASS_JAX_FORMAT = "pass-jax-orbax-v1"


def check_convert_destination(dst: str | os.PathLike, overwrite: bool = False):
    """`pass-jax convert`'s destination: a new or empty directory, or any with `overwrite` (replaced)."""
    from ..outputs import check_dir
    return check_dir(any_path(dst), "destination", overwrite)


def save_converted(model: LoadedModel, dst: str | os.PathLike, overwrite: bool = False) -> None:
    """Write params (Orbax), config and tokenizer so that `load_model(dst)` reloads them sharded.

    Written into a sibling directory renamed into place at the end, so a killed conversion leaves
    no half checkpoint (and with `overwrite`, the old one until the new one is complete). One writer
    at a time (`outputs.locked`: another is refused in one line), and a full disk is one line too,
    checked before writing when the file system has less free space than the parameters need."""
    import orbax.checkpoint as ocp
    from .. import outputs

    writer = jax.process_index() == 0
    dst = check_convert_destination(dst, overwrite)
    needed = sum(leaf.nbytes for leaf in jax.tree.leaves(model.params))
    with (outputs.locked(dst if writer else None, "destination"), outputs.write_errors(dst, needed),
          outputs.atomic_dir(dst, is_writer=writer) as tmp):
        outputs.check_space(dst, needed)
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(tmp / "params", model.params)
        if writer:
            with tempfile.TemporaryDirectory() as local:  # tokenizers write local files only
                model.tokenizer.save_pretrained(local)
                for file in Path(local).iterdir():
                    (tmp / "tokenizer" / file.name).parent.mkdir(parents=True, exist_ok=True)
                    (tmp / "tokenizer" / file.name).write_bytes(file.read_bytes())
            meta = {"format": PASS_JAX_FORMAT, "config": config_lib.to_dict(model.config), "source": model.source,
                    "identity": model.identity, "stop_ids": list(model.stop_ids),
                    # what load_converted checks is there: a lost chat_template.jinja would silently
                    # turn chat prompts into raw continuation
                    "tokenizer_files": sorted(file.name for file in (tmp / "tokenizer").iterdir())}
            # Last: on gs:// (written in place) its presence is what marks a complete checkpoint.
            (tmp / "pass_jax.json").write_text(json.dumps(meta, indent=1))


def load_converted(path: Path, mesh=None, **config_overrides) -> LoadedModel:
    import orbax.checkpoint as ocp
    from ..model import param_shapes

    meta = read_json(path / "pass_jax.json")
    if meta.get("format") != PASS_JAX_FORMAT:
        raise LoadError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    if not isinstance(meta.get("config"), dict):
        raise LoadError(f"{path / 'pass_jax.json'} has no model config")
    if not (path / "params").is_dir() or not (path / "tokenizer").is_dir():
        raise LoadError(f"{path}: incomplete converted checkpoint (params/ or tokenizer/ is missing)")
    missing = [name for name in meta.get("tokenizer_files", []) if not (path / "tokenizer" / name).exists()]
    if missing:
        raise LoadError(f"{path / 'tokenizer' / missing[0]} is missing (the checkpoint was written with it): "
                        f"restore it, or convert the model again")
    config = config_lib.from_dict({**meta["config"], **config_overrides})
    shapes = param_shapes(config)
    shardings = param_shardings(config, mesh or make_mesh(), shapes)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    with ocp.StandardCheckpointer() as ckpt, quiet_abandoned_reads():
        try:
            params = ckpt.restore(path / "params", target)
        except Exception as err:  # Orbax and TensorStore raise ValueError, OSError, even a bare Exception
            raise LoadError(f"{path}: params/ is damaged or does not match its config ({root_reason(err)})") from None
    with tempfile.TemporaryDirectory() as local:  # tokenizers read local files only (the dir may be gs://)
        for file in (path / "tokenizer").iterdir():
            (Path(local) / file.name).write_bytes(file.read_bytes())
        tokenizer = hf_tokenizer(local, shown=path / "tokenizer")
    return LoadedModel(config, params, tokenizer, str(path), meta.get("identity"), tuple(meta.get("stop_ids", ())))

