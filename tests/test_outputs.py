"""Outputs never clobber a user's files, and a writer killed with SIGKILL at the worst moment (its
new output complete in the temporary sibling, the rename not yet done) leaves the old state or
nothing (issue 13)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest

from pass_jax import cli, outputs
from pass_jax.loading import load_model, save_converted

STUBBED = [sys.executable, str(Path(__file__).with_name("_outputs_worker.py"))]  # bench, eval without a model
CLI = [sys.executable, "-m", "pass_jax.cli"]
STARTUP_LIMIT_S = 600  # generous: a loaded 2-core machine imports jax and friends slowly


def kill_when_paused(argv: list[str], target: Path, command: list[str] = STUBBED) -> None:
    """Run `COMMAND ARGV` until it pauses before renaming its output into `target`, then SIGKILL it."""
    env = {**os.environ, outputs.PAUSE_ENV: target.name}
    process = subprocess.Popen(command + argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(STARTUP_LIMIT_S, process.kill)
    watchdog.start()
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if line.startswith(outputs.PAUSE_ENV):
                process.send_signal(signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        process.wait()
    assert process.returncode == -signal.SIGKILL and seen[-1].startswith(outputs.PAUSE_ENV), "".join(seen)


def visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def test_check_file_and_dir(tmp_path):
    (tmp_path / "empty.json").touch()
    (tmp_path / "full.json").write_text("{}")
    assert outputs.check_file(tmp_path / "empty.json", "--json") == tmp_path / "empty.json"
    with pytest.raises(outputs.OutputError, match="full.json already exists; add --overwrite"):
        outputs.check_file(tmp_path / "full.json", "--json")
    outputs.check_file(tmp_path / "full.json", "--json", overwrite=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(outputs.OutputError, match="run is not empty; add --overwrite"):
        outputs.check_dir(tmp_path / "run", "output.dir")
    (tmp_path / "run" / ".marker").touch()
    outputs.check_dir(tmp_path / "run", "output.dir", marker=".marker")  # a directory the command made itself


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with outputs.atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and visible(tmp_path) == ["report.json"] and len(list(tmp_path.iterdir())) == 1


def test_bench_json_killed_mid_write_keeps_the_old_report(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    report = tmp_path / "bench.json"
    report.write_text('{"old": true}')
    kill_when_paused(["bench", "--prompts", str(prompts), "--json", str(report), "--overwrite"], report)
    assert json.loads(report.read_text()) == {"old": True}


def test_bench_plot_killed_mid_write_leaves_no_figure(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    plots = tmp_path / "plots"
    kill_when_paused(["bench", "--prompts", str(prompts), "--plot", str(plots)], plots / "speedup_vs_lookahead.png")
    assert visible(plots) == []


def test_humaneval_json_killed_mid_write_leaves_nothing(tmp_path):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"task_id": "t/0", "prompt": "def f():\n", "test": "", "entry_point": "f"}) + "\n")
    report = tmp_path / "humaneval.json"
    kill_when_paused(["eval", "humaneval", "--problems", str(problems), "--json", str(report), "--timeout", "20"],
                     report)
    assert visible(tmp_path) == ["problems.jsonl"]


def test_convert_killed_mid_write_keeps_the_old_checkpoint(make_hf_llama, tmp_path, capsys):
    old_dir, _ = make_hf_llama(tmp_path / "old", seed=0)
    new_dir, _ = make_hf_llama(tmp_path / "new", seed=1)
    dst = tmp_path / "converted"
    save_converted(load_model(old_dir), dst)
    old = [np.asarray(x) for x in jax.tree.leaves(load_model(dst).params)]

    kill_when_paused(["convert", str(new_dir), str(dst), "--overwrite"], dst, command=CLI)
    for kept, leaf in zip(old, jax.tree.leaves(load_model(dst).params)):
        np.testing.assert_array_equal(np.asarray(leaf), kept)

    assert cli.main(["convert", str(new_dir), str(dst), "--overwrite"]) == 0  # clears the killed run's leftovers
    new = jax.tree.leaves(load_model(new_dir).params)
    for converted, leaf in zip(jax.tree.leaves(load_model(dst).params), new):
        np.testing.assert_array_equal(np.asarray(converted), np.asarray(leaf))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "new", "old"]
