"""Hugging Face directories of the supported families (`families.py`: Llama, Mistral, Qwen2, Qwen3):
`config.json` -> `LlamaConfig`, `*.safetensors` streamed per tensor (each device reads only its slice)
straight onto its sharding, the tokenizer beside them."""
from __future__ import annotations

from pathlib import Path

from .. import config as config_lib
from .. import families
from ..config import LlamaConfig
from ..errors import root_reason
from ..sharding import make_mesh
from .common import LoadedModel, LoadError, WeightRow, build_params, default_dtype, place, read_json
from .tokenizers import hf_tokenizer


def hf_to_config(hf, **overrides) -> LlamaConfig:
    """`LlamaConfig` of a transformers config of a supported family (`families.hf_config_values`)."""
    try:
        values = families.hf_config_values(hf)
    except families.FamilyError as err:
        raise LoadError(str(err)) from None
    values.update(dtype=default_dtype(), param_dtype=default_dtype())
    values.update(overrides)
    return config_lib.from_dict(values)


def load_hf_directory(path: Path, mesh=None, **config_overrides) -> LoadedModel:
    import transformers
    from safetensors import safe_open

    if not (path / "config.json").is_file():
        raise LoadError(f"{path} has no config.json: not a Hugging Face model directory")
    read_json(path / "config.json")  # transformers reports a broken file with a traceback
    try:
        hf_config = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:  # e.g. no or an unknown model_type
        raise LoadError(f"{path / 'config.json'}: {root_reason(err)}") from None
    config = hf_to_config(hf_config, **config_overrides)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LoadError(f"{path} has no *.safetensors files (pytorch .bin checkpoints are not supported; "
                        "re-save with safe_serialization=True)")
    where = {}
    for file in files:
        with safe_open(file, framework="numpy") as handle:
            where.update(dict.fromkeys(handle.keys(), file))

    def fetch(row: WeightRow, shape_dtype, sharding):
        hf_name, kind = row.hf, row.kind
        if hf_name not in where:
            if row.path == ("lm_head",) and "model.embed_tokens.weight" in where:
                hf_name = "model.embed_tokens.weight"  # some untied configs reuse the embedding
            else:
                raise LoadError(f"{path}: tensor {hf_name!r} is missing from the safetensors files")
        # One handle per tensor: a handle kept open keeps every page it touched resident.
        with safe_open(where[hf_name], framework="numpy") as handle:
            tensor = handle.get_slice(hf_name)
            dtype = tensor.get_dtype()
            if dtype not in ("F32", "BF16", "F16"):
                raise LoadError(f"{hf_name}: unsupported dtype {dtype} (supported: F32, BF16, F16)")
            stored = tuple(tensor.get_shape())
            expected = tuple(shape_dtype.shape)
            if (stored[::-1] if kind != "copy" else stored) != expected:
                raise LoadError(f"{hf_name}: checkpoint shape {stored} does not match the config "
                                f"(expected {expected[::-1] if kind != 'copy' else expected})")
            if kind == "copy":
                return place(shape_dtype, sharding, read_slice=lambda idx: tensor[idx])
            # Stored (out, in); ours is (in, out): read the transposed slice only.
            return place(shape_dtype, sharding, read_slice=lambda idx: tensor[idx[::-1]].T)

    params = build_params(config, mesh or make_mesh(), fetch, f"loading {path.name}")
    return LoadedModel(config, params, hf_tokenizer(path), str(path), stop_ids=families.hf_stop_ids(path))

