"""Run by tests/test_outputs.py: `pass-jax ARGV` with the model work of bench and eval humaneval
stubbed out, so that the test can SIGKILL the command while it writes its outputs."""
from __future__ import annotations

import sys

from pass_jax import bench, cli, humaneval


def _stub_completions(model, problems, mode, settings, progress=False):
    return [["    return 1\n"] * settings.num_samples for _ in problems], {"tokens_per_s": 1.0, "tokens_per_call": 1.0}


bench.load_model = humaneval.load_model = lambda *args, **kwargs: object()
bench.run_bench = lambda model, prompts, settings, progress=False: {"runs": [], "roofline": None, "call_costs": None,
                                                                    "settings": {}}
humaneval.sample_completions = _stub_completions
sys.exit(cli.main(sys.argv[1:]))
