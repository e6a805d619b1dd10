"""Tokenizers of loaded models: a directory's through `transformers.AutoTokenizer` (Hugging Face and
converted checkpoints), a GGUF file's from its metadata.

A GGUF's metadata is read with `gguf` and handed to transformers' converter, since transformers' own
GGUF path imports torch, which the plain install lacks.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import root_reason
from .common import LoadError


def hf_tokenizer(local_dir, shown=None):
    """The tokenizer saved in a local directory (`save_pretrained`'s files); errors name `shown` (the
    model's own directory, when `local_dir` is a temporary copy of it)."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(local_dir)
    except (OSError, ValueError, KeyError) as err:  # missing or unreadable tokenizer files
        raise LoadError(f"{shown or local_dir}: cannot load the tokenizer ({root_reason(err)})") from None


def gguf_tokenizer(path: Path, reader=None):
    """The file's tokenizer, built as `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds it, without torch.

    transformers' own GGUF path reads the metadata with a reader that imports torch, which the plain
    install lacks; its converter does not. So read the metadata with `gguf` (pass the model's `reader`
    to avoid a second read) and hand it to the converter. Building from a reader takes about as long
    as loading a saved tokenizer.json, so nothing is cached.
    """
    import transformers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    from .gguf import read_gguf  # not at the top: gguf imports this module

    reader = read_gguf(path) if reader is None else reader
    meta = {key: field.contents() for key, field in reader.fields.items() if key.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in meta:
        raise LoadError(f"{path}: the GGUF file holds no tokenizer (no tokenizer.ggml.tokens)")
    # The converter's input, under its own names.
    vocab = {name: meta[f"tokenizer.{key}"] for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
             if f"tokenizer.{key}" in meta}
    arch = reader.fields.get("general.architecture")
    try:
        backend, _ = convert_gguf_tokenizer(arch and arch.contents(), vocab)
    except ValueError as err:  # an unknown tokenizer.ggml.model; the message names the supported ones
        raise LoadError(f"{path}: {err}") from None
    settings = {name: meta[key] for name, key in (("chat_template", "tokenizer.chat_template"),
                                                  ("add_bos_token", "tokenizer.ggml.add_bos_token"),
                                                  ("add_eos_token", "tokenizer.ggml.add_eos_token")) if key in meta}
    if vocab.get("tokenizer_type") == "llama":
        settings.setdefault("add_bos_token", True)  # llama.cpp adds BOS to a SentencePiece vocabulary by default
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        index = meta.get(f"tokenizer.ggml.{key}")
        settings[name] = None if index is None else vocab["tokens"][index]
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **settings)
