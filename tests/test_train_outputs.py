"""`pass-jax train` never writes into a directory it did not create, resumes only its own run with
the same optimizer settings, stops when training diverges, and survives a SIGKILL mid-export
(issues 13 and 15)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from pass_jax.cli import main
from pass_jax.train import loop
from test_outputs import kill_when_paused

FAST = ["train.eval_batches=1", "train.eval_sequences=0", "train.eval_anchors_per_seq=0"]


def train_argv(corpus, run_dir, *overrides):
    return ["train", "--config", "tiny_overfit", f"data.source={corpus}", "data.max_documents=null",
            "train.steps=2", *FAST, f"output.dir={run_dir}", *overrides]


def no_loading(monkeypatch):
    monkeypatch.setattr(loop, "load_base_model", lambda *a, **k: pytest.fail("loaded a model before the checks"))


def test_run_dir_is_reused_only_by_its_own_resume(corpus, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert main(train_argv(corpus, run_dir)) == 0
    first = (run_dir / "metrics.jsonl").read_text()
    with monkeypatch.context() as patch:
        no_loading(patch)
        assert main(train_argv(corpus, run_dir)) == 2
        assert "holds a run: add --resume to continue it, --overwrite" in capsys.readouterr().err
        assert main(train_argv(corpus, run_dir, "train.lr=0.02", "--resume")) == 2
        assert "changed optimizer settings (train.lr 0.01 -> 0.02)" in capsys.readouterr().err
        assert main(train_argv(corpus, run_dir, "--resume", "--overwrite")) == 2
        assert "give one of them" in capsys.readouterr().err
    assert (run_dir / "metrics.jsonl").read_text() == first  # refused before touching the run

    assert main(train_argv(corpus, run_dir, "--overwrite")) == 0  # a fresh run: the old records are gone
    splits = [json.loads(line)["split"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert splits.count("compile") == 1 and splits[0] == "eval"


def test_foreign_directory_is_never_written(corpus, tmp_path, monkeypatch, capsys):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')  # e.g. a Hugging Face model's directory
    no_loading(monkeypatch)
    for extra in ([], ["--resume"]):
        assert main(train_argv(corpus, tmp_path, *extra)) == 2
        assert "is not empty; add --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert (tmp_path / "config.json").read_text() == '{"model_type": "llama"}'


@pytest.mark.parametrize("overrides, message", [
    (["train.log_every=1", "train.checkpoint_every=100"], "the loss is nan at step 3"),
    (["train.log_every=100", "train.checkpoint_every=2"], "the look-ahead parameters are not finite at step 2"),
])
def test_divergence_stops_training_before_a_checkpoint_or_export(corpus, tmp_path, capsys, overrides, message):
    # Adam's first step moves the parameters by about lr = 3e38, the second to inf: the loss of step 3 is NaN
    run_dir = tmp_path / "run"
    assert main(train_argv(corpus, run_dir, "train.lr=3e38", "train.warmup=0", "train.steps=6", *overrides)) == 2
    assert f"training diverged: {message}" in capsys.readouterr().err
    assert not (run_dir / "lookahead.npz").exists() and not (run_dir / "checkpoints" / "2").exists()


def test_killed_while_exporting_then_resumed(corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = train_argv(corpus, run_dir)[1:]  # `python -m pass_jax.train` takes the arguments after `train`
    kill_when_paused(argv, run_dir / "lookahead.npz", command=[sys.executable, "-m", "pass_jax.train"])
    assert not (run_dir / "lookahead.npz").exists() and (run_dir / "checkpoints" / "2").is_dir()
    assert main(train_argv(corpus, run_dir, "--resume")) == 0
    with np.load(run_dir / "lookahead.npz") as exported:
        assert exported["lookahead"].shape == (4, 64) and np.isfinite(exported["lookahead"]).all()
