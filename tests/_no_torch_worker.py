"""Run by tests/test_gguf_tokenizer.py: pass-jax's tokenizer paths in a process where `import torch`
fails, as in the plain install (`./setup.sh` without --test).

Reads a JSON job on stdin, prints `describe(tokenizer, ...)` of each tokenizer as one JSON line:
  {"gguf": PATH, "strings": [...], "messages": [...]}         `loading.gguf_tokenizer(PATH)`
  {"model": NAME, "convert_to": DIR, "strings": [...], ...}   `load_model(NAME)`, then the same model
                                                              through `save_converted(DIR)` + `load_model(DIR)`
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path


def describe(tokenizer, strings: list[str], messages: list[dict]) -> dict:
    """Everything the comparison looks at, as JSON-able values; the reference side calls this too."""
    ids = [tokenizer(text).input_ids for text in strings]
    chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(chat_ids, Mapping):  # transformers 5 returns a BatchEncoding here
        chat_ids = chat_ids["input_ids"]
    return {
        "ids": ids,
        "plain_ids": [tokenizer(text, add_special_tokens=False).input_ids for text in strings],
        "decoded": [tokenizer.decode(row) for row in ids],
        "decoded_skip": [tokenizer.decode(row, skip_special_tokens=True) for row in ids],
        "special": {name: getattr(tokenizer, name) for name in (
            "bos_token", "eos_token", "unk_token", "pad_token",
            "bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id")},
        "size": len(tokenizer),
        "chat_text": tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
        "chat_ids": list(chat_ids),
        "backend": json.loads(tokenizer.backend_tokenizer.to_str()),
    }


def main() -> None:
    job = json.load(sys.stdin)
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("torch is importable: this worker must run without it")
    from pass_jax import loading

    if "gguf" in job:
        tokenizers = [loading.gguf_tokenizer(Path(job["gguf"]))]
    else:
        model = loading.load_model(job["model"])
        loading.save_converted(model, Path(job["convert_to"]))
        tokenizers = [model.tokenizer, loading.load_model(job["convert_to"]).tokenizer]
    for tokenizer in tokenizers:
        print(json.dumps(describe(tokenizer, job["strings"], job["messages"])))


if __name__ == "__main__":
    sys.modules["torch"] = None  # before anything imports transformers: `import torch` now raises ImportError
    main()
