"""`pass-jax generate --output FILE.jsonl`: results appended as each prompt finishes, resumable after a kill.

The file's first line records the settings (`{"pass_jax_results": 1, "settings": {...}}`); every later
line is one prompt's result with its `id`. A line is written with one `write` call and flushed, so a
kill leaves whole lines, at worst followed by one torn line, which the next run cuts off and redoes.
Rerunning the same command skips the ids already written; other settings are refused in one line
(`--overwrite` starts over). No JAX at import: the file is checked before the model loads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import outputs
from .errors import PassJaxError

HEADER_KEY = "pass_jax_results"
FLAG = "--output"


def id_key(prompt_id: Any) -> str:
    """An id as compared across runs: its JSON text (1 and "1" are different ids)."""
    return json.dumps(prompt_id)


def _read(path: Path, settings: dict[str, Any]) -> tuple[set[str], int]:
    """(the ids written, the byte length of the whole lines) of an existing results file."""
    done: set[str] = set()
    whole = 0
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.endswith(b"\n"):  # a line torn by a kill: redone
                break
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if number == 1:
                if not isinstance(record, dict) or HEADER_KEY not in record:
                    raise outputs.OutputError(f"{FLAG} {path} is not a pass-jax results file; add --overwrite to "
                                              "replace it, or choose another path")
                _check_settings(path, record.get("settings"), settings)
            elif not isinstance(record, dict) or "id" not in record:
                raise outputs.OutputError(f"{FLAG} {path}:{number}: not a result line; remove it to resume, or "
                                          "add --overwrite to start over")
            else:
                done.add(id_key(record["id"]))
            whole += len(raw)
    return done, whole


def _check_settings(path: Path, recorded: Any, settings: dict[str, Any]) -> None:
    recorded = recorded if isinstance(recorded, dict) else {}
    differ = [key for key in sorted(set(recorded) | set(settings)) if recorded.get(key) != settings.get(key)]
    if differ:
        shown = ", ".join(f"{key} {recorded.get(key)!r} there, {settings.get(key)!r} now" for key in differ)
        raise outputs.OutputError(f"{FLAG} {path} holds results of other settings ({shown}); rerun with its "
                                  "settings to resume, add --overwrite to start over, or choose another path")


def check(path: str | os.PathLike, settings: dict[str, Any], overwrite: bool) -> tuple[Path, set[str]]:
    """Before the model loads: the output path, and the ids it holds already (none with `overwrite`)."""
    path = outputs.check_file(path, FLAG, overwrite=True)  # an existing file is resumed, not refused
    if overwrite or not path.exists() or not path.stat().st_size:
        return path, set()
    return path, _read(path, settings)[0]


class ResultsWriter:
    """The open results file, held under `outputs.locked` (one writer), for `with`."""

    def __init__(self, path: Path, settings: dict[str, Any], overwrite: bool):
        self.path, self.settings, self.overwrite = path, settings, overwrite
        self.done: set[str] = set()
        self._lock = outputs.locked(path, FLAG)
        self._fd = -1

    def __enter__(self) -> ResultsWriter:
        self._lock.__enter__()
        try:
            whole = 0
            if not self.overwrite and self.path.exists():  # read again, now that the file is ours
                self.done, whole = _read(self.path, self.settings)
            fresh = whole == 0  # new, empty, or only a torn first line
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(self._fd, 0 if fresh else whole)  # a torn last line goes
            os.lseek(self._fd, 0, os.SEEK_END)
            if fresh:
                self._append({HEADER_KEY: 1, "settings": self.settings})
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with outputs.write_errors(self.path, len(line)):
            written = os.write(self._fd, line)  # one call: a kill leaves all of the line or a torn tail
            while written < len(line):  # a short write (full disk, signal): finish it
                written += os.write(self._fd, line[written:])

    def write(self, record: dict[str, Any]) -> None:
        """Append one result (a dict with its "id"), on disk before the next prompt's."""
        key = id_key(record["id"])
        if key in self.done:
            raise PassJaxError(f"{FLAG} {self.path}: id {key} is written already")
        self._append(record)
        self.done.add(key)

    def __exit__(self, *exc) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._lock.__exit__(*exc)
