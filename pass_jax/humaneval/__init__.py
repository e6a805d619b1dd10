"""`pass-jax eval humaneval`: HumanEval pass@k of PaSS and autoregressive sampling, side by side.

PaSS samples exactly from the model's distribution, so its scores must match autoregressive
sampling up to noise; the report gives each mode's pass@k with a 95% bootstrap interval over
problems and a paired comparison of the two modes on the same problems.

Completions run untrusted model output, in the subprocess sandbox of `pass_jax.sandbox` (not a
security sandbox: see there).

One module per concern: `problems` (problems, prompts, stop sequences), `execution` (run completions
against their tests), `stats` (pass@k, intervals, paired comparison), `evaluation` (`EvalSettings`,
`evaluate`, the report), `command` (the CLI). Their public names, and the sandbox's, are importable
from here; each loads its module on first use.
"""
from .._lazy import exports, lazy_exports

_WHERE = exports(**{
    "problems": "STOP_SEQUENCES PROMPT_STYLES CHAT_INSTRUCTION CODE_FENCE CHAT_STOP_SEQUENCES HumanEvalError "
                "problems_path load_problems truncate_completion resolve_prompt_style model_prompt fence_stop_ids",
    ".sandbox": "OUTPUT_TAIL PREAMBLE PROXY_VARIABLES ExecResult sandbox_env run_program",
    "execution": "build_program check_completion check_all",
    "stats": "pass_at_k bootstrap_ci score paired_comparison sign_test",
    "evaluation": "EvalSettings sample_completions evaluate format_report",
    "command": "EPILOG default_ks settings_from_args cmd_humaneval register",
})
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
