"""Run by tests/test_outputs.py: `pass-jax ARGV` with the model work of bench and eval humaneval
stubbed out, so that the test can SIGKILL the command while it writes its outputs."""
from __future__ import annotations

import sys

from pass_jax import cli, loading
from pass_jax.bench import run as bench_run
from pass_jax.humaneval import evaluation


def _stub_completions(model, problems, mode, settings, progress=False, found=None):
    return [["    return 1\n"] * settings.num_samples for _ in problems], {"tokens_per_s": 1.0, "tokens_per_call": 1.0}


loading.load_model = lambda *args, **kwargs: object()
bench_run.run_bench = lambda model, prompts, settings, progress=False, log=None, found=None: {"runs": [], "roofline": None, "call_costs": None,
                                                                    "settings": {}}
evaluation.sample_completions = _stub_completions
sys.exit(cli.main(sys.argv[1:]))
