"""JSON-lines input, read lazily: one loop for `--prompts FILE.jsonl` (`cli_args`) and user corpora
(`corpora`). No JAX at import."""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Iterator

from .errors import PassJaxError


def records(path: str | Path, text_key: str, error: type[PassJaxError] = PassJaxError,
            what: str = "file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of `path` (`-` is standard input), one line in
    memory at a time; each object is checked to hold a string `text_key`. Anything else is one line
    `error` naming the file and line."""
    name = "<stdin>" if str(path) == "-" else str(path)
    if str(path) != "-":
        path = Path(path)
        if not path.exists():
            raise error(f"{what} {name} not found")
        if path.is_dir():
            raise error(f"{what} {name} is a directory")
    number = 0
    try:
        # Bytes, decoded a line at a time: `-`, /dev/stdin, a named pipe or <(...) read fine front to back.
        with contextlib.nullcontext(sys.stdin.buffer) if name == "<stdin>" else open(path, "rb") as lines:
            for number, raw in enumerate(lines, 1):
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise error(f"{name}:{number}: not a JSON object") from None
                if not isinstance(record, dict):
                    raise error(f"{name}:{number}: not a JSON object")
                if not isinstance(record.get(text_key), str):
                    raise error(f'{name}:{number}: each line needs a string "{text_key}" key')
                yield number, record
    except UnicodeDecodeError as err:
        raise error(f"{what} {name} is not UTF-8 text ({err.reason} at line {number})") from None
    except OSError as err:
        raise error(f"{what} {name}: cannot read it ({err.strerror or err})") from None
