""".ci/run runs the README's two commands, fails when either fails (pytest's exit 5 included), and
runs the first one in a venv without the test extras even where ./.venv already exists.

The behaviour tests run a copy of .ci/run in a scratch git repository whose README holds the same
two commands, with stubs for setup.sh, pass-jax and python that log what ran and exit as told.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST = './setup.sh && .venv/bin/pass-jax generate --prompt "The capital of France is"'
TESTS = "./setup.sh --test && .venv/bin/python -m pytest -q"

SETUP_STUB = """#!/usr/bin/env bash
set -e
cd "$(dirname "$0")"
echo "setup $* in $PWD" >> "$LOG"
mkdir -p .venv/bin
printf '#!/bin/sh\\necho "generate in $PWD" >> "$LOG"\\nexit $GENERATE_RC\\n' > .venv/bin/pass-jax
# `python -c "import torch"` fails (exit 1) unless TORCH=1; `python -m pytest` exits $PYTEST_RC.
printf '#!/bin/sh\\nif [ "$1" = -c ]; then [ "$TORCH" = 1 ]; exit $?; fi\\necho pytest >> "$LOG"\\nexit $PYTEST_RC\\n' \\
  > .venv/bin/python
chmod +x .venv/bin/pass-jax .venv/bin/python
"""


def readme_commands() -> list[str]:
    """The first line of each of the README's first two ```bash blocks: what a new user copies."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.M | re.S)
    return [block.splitlines()[0] for block in blocks[:2]]


def test_ci_runs_the_readme_commands():
    printed = subprocess.run(["bash", ".ci/run", "--print"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert printed.stdout.splitlines() == readme_commands() == [FIRST, TESTS]


@pytest.fixture
def sandbox(tmp_path):
    """A git repository with .ci/run, a README holding the two commands, and the stub setup.sh."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    (repo / "README.md").write_text(f"# x\n\n```bash\n{FIRST}\n```\n\n```bash\n{TESTS}\n```\n")
    (repo / "setup.sh").write_text(SETUP_STUB)
    (repo / "setup.sh").chmod(0o755)
    (repo / ".gitignore").write_text(".venv/\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    return repo


def run_ci(repo: Path, tmp_path: Path, **codes) -> tuple[int, list[str]]:
    log = tmp_path / "log"
    log.write_text("")
    env = {**os.environ, "LOG": str(log), "GENERATE_RC": "0", "PYTEST_RC": "0", "TORCH": "0", **codes}
    done = subprocess.run(["bash", ".ci/run"], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, log.read_text().splitlines()


def test_ci_passes_when_both_commands_pass(sandbox, tmp_path):
    code, log = run_ci(sandbox, tmp_path)
    assert code == 0
    assert log == [f"setup  in {sandbox}", f"generate in {sandbox}", f"setup --test in {sandbox}", "pytest"]


def test_ci_fails_when_the_first_command_fails(sandbox, tmp_path):
    code, log = run_ci(sandbox, tmp_path, GENERATE_RC="3")
    assert code != 0
    assert "pytest" not in log


def test_ci_fails_when_pytest_collects_nothing(sandbox, tmp_path):
    assert run_ci(sandbox, tmp_path, PYTEST_RC="5")[0] == 5
    assert run_ci(sandbox, tmp_path, PYTEST_RC="1")[0] == 1


def test_ci_fails_when_the_plain_setup_has_torch(sandbox, tmp_path):
    code, log = run_ci(sandbox, tmp_path, TORCH="1")
    assert code != 0
    assert "pytest" not in log


def test_first_command_runs_in_a_fresh_copy_when_venv_exists(sandbox, tmp_path):
    (sandbox / ".venv").mkdir()  # e.g. a developer's venv with the test extras
    code, log = run_ci(sandbox, tmp_path)
    assert code == 0
    copy = log[0].removeprefix("setup  in ")
    assert copy != str(sandbox) and not Path(copy).exists()  # a scratch copy, removed when done
    assert log[1:] == [f"generate in {copy}", f"setup --test in {sandbox}", "pytest"]


def test_every_slow_name_is_a_collected_test():
    """The quick tier's SLOW list names real tests: a renamed test would otherwise slip into the quick tier."""
    import sys

    from conftest import SLOW

    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    collected = {re.sub(r"\[.*$", "", line).replace("tests/", "", 1) for line in out.splitlines() if "::" in line}
    assert SLOW <= collected, sorted(SLOW - collected)
