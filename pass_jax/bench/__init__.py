"""`pass-jax bench`: PaSS against autoregressive decoding and transformers+torch, in one process.

Every method decodes the same prompts with the same seeds in interleaved rounds (round r runs each
method once, in an order rotated by r), so slow drifts of a shared machine hit all methods alike.
Compilation (pass-jax) and warm-up (transformers) happen before the timed calls and are reported
apart. pass-jax rows reuse `Generator` and `summarize` from `pass_jax.generate` for their
statistics; transformers rows are optional and skipped, with a note, when torch is missing.

One module per concern: `settings` (method names, `BenchSettings`), `prompts`, `methods` (pass-jax
and transformers adapters), `machine` (versions, memory, bandwidth, roofline), `rows` (a report's
rows and ratios), `run` (`run_bench`), `report` (Markdown, plots), `command` (the CLI). Their public
names are importable from here; each loads its module on first use.
"""
from .._lazy import exports, lazy_exports

_WHERE = exports(
    settings="AR PASS HF_GREEDY HF_SAMPLE HF_LOOKUP BenchError BenchSettings",
    prompts="CORPUS_FOR_DOMAIN prefix_prompt corpus_prompts file_prompts",
    methods="RoundResult PassJaxMethod TransformersMethod count_new_tokens transformers_unavailable_reason "
            "load_transformers_model transformers_methods pass_jax_methods",
    machine="peak_host_mb peak_device_mb machine_info measure_bandwidth roofline",
    rows="summarize_method add_ratios add_predictions cost_key",
    run="run_bench",
    report="PLOT_FILES markdown_table call_cost_table write_plots",
    command="EPILOG settings_from_args cmd_bench register",
)
__all__ = list(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
