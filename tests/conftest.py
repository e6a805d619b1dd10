"""Shared session fixtures: the tiny random model, the bundled SmolLM2 (loaded once) and tiny HF checkpoints."""
from __future__ import annotations

import gc
import os
import random
from pathlib import Path

import jax
import pytest

# No persistent XLA compilation cache in the test session: the tests leave the user's cache alone (a test
# about the cache turns it on for its own subprocess).
os.environ.setdefault("PASS_JAX_COMPILATION_CACHE", "0")

SP_WORDS = ("the quick brown fox jumps over a lazy dog while parallel speculative sampling drafts several "
            "tokens with look ahead embeddings and the model validates them in one call of jax flax llama "
            "cache mesh shard tensor data batch prompt greedy").split()

# The quick tier, `pytest -m "not slow"`: the full suite less the tests below, each of which took more than
# about 6 s a case on an idle 2-core machine (12 s while it was shared); `pytest --durations=0` measures
# them. Names without parameters; a test not listed is quick.
SLOW = frozenset({
    "test_autotune.py::test_generate_auto_picks_a_setting_or_ar",
    "test_autotune.py::test_timed_ratios_runs_the_real_loops",
    "test_batch.py::test_every_row_of_a_refilled_batch_equals_its_prompt_decoded_alone",
    "test_batch.py::test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run",
    "test_bench.py::test_auto_row_is_the_best_predicted_setting",
    "test_bench.py::test_ratios_match_own_tokens_per_s",
    "test_bench.py::test_report_has_every_method_and_field",
    "test_cli.py::test_ar_and_pass_agree_through_cli",
    "test_cli.py::test_generate_json_output",
    "test_decoding.py::test_chunked_streamed_run_equals_the_one_shot_run_sampled",
    "test_decoding.py::test_greedy_eos_and_budget_cut_where_ar_does",
    "test_decoding.py::test_greedy_eos_at_first_token_beside_a_row_to_the_budget",
    "test_decoding.py::test_greedy_pass_accepts_good_drafts",
    "test_decoding.py::test_greedy_pass_equals_ar_smollm2",
    "test_decoding.py::test_pass_invariants_and_eos",
    "test_decoding.py::test_ragged_batch_rows_equal_unbatched",
    "test_decoding.py::test_sampled_pass_matches_exact_law",
    "test_decoding.py::test_sampled_test_rejects_lossy_rules",
    "test_decoding.py::test_stop_ids_end_a_row_at_that_token",
    "test_families.py::test_family_parity",
    "test_faults.py::test_ctrl_c_stops_generate_within_seconds",
    "test_faults.py::test_damaged_model_cache_is_found_and_rebuilt",
    "test_faults.py::test_stream_into_a_closed_pipe_is_quiet",
    "test_gguf_tokenizer.py::test_bundled_gguf_tokenizer_without_torch_equals_transformers",
    "test_gguf_tokenizer.py::test_load_model_and_converted_tokenizers_without_torch",
    "test_guards.py::test_nan_in_stale_cache_slots_changes_no_token",
    "test_lookahead.py::test_greedy_pass_with_deep_parameters_equals_ar",
    "test_model_cache.py::test_a_failed_load_leaves_no_entry",
    "test_model_cache.py::test_second_load_reads_the_cache_and_equals_the_gguf_load",
    "test_model_parity.py::test_smollm2_gguf_parity",
    "test_multihost.py::test_two_processes_match_one_process",
    "test_sharding.py::test_sharded_forward_and_decode_match_single_device",
    "test_stream_chat.py::test_cli_json_is_never_streamed",
    "test_stream_chat.py::test_cli_stream_prints_what_the_unstreamed_run_prints",
    "test_stream_chat.py::test_streamed_equals_unstreamed",
    "test_streamed_loading.py::test_loader_allocates_one_copy",
    "test_train.py::test_cached_prefix_loss_and_gradient_equal_the_masked_ones",
    "test_train.py::test_cli_run_writes_vectors_and_metrics",
    "test_train.py::test_masked_forward_and_losses_match_the_explicit_forward",
    "test_train.py::test_resumed_run_ends_exactly_like_an_uninterrupted_run",
    "test_train.py::test_self_targets_are_the_models_own_continuation",
    "test_train.py::test_sigkilled_run_resumes_to_the_same_parameters",
    "test_train.py::test_splice_keeps_an_adapter_heads_adapters",
    "test_train.py::test_splice_keeps_the_heads_steps_and_the_tails_later_ones",
    "test_train.py::test_tiny_model_overfits_a_periodic_corpus",
    "test_train.py::test_train_step_changes_only_the_lookahead_vectors",
    "test_train.py::test_train_step_never_sorts_the_vocabulary",
    "test_train_outputs.py::test_killed_while_exporting_then_resumed",
    "test_tuned.py::test_tuned_once_then_reused_and_explicit_options_win",
    "test_tuned.py::test_profiles_are_per_parameters_sampling_and_machine",
    "test_tuned.py::test_ar_when_nothing_beats_ar_and_mode_pass_takes_the_best_pass",
    "test_onpolicy.py::test_killed_data_set_resumes_to_what_an_uninterrupted_run_writes",
    "test_onpolicy.py::test_training_sources_hold_no_held_out_document",
    "test_onpolicy.py::test_data_command_refuses_bad_arguments_in_one_line",
    "test_onpolicy.py::test_eval_refuses_an_empty_own_file",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if f"{item.path.name}::{item.originalname}" in SLOW:
            item.add_marker(pytest.mark.slow)


def _memory_mappings() -> tuple[int, int]:
    """(this process's memory mappings, the kernel's limit on them); (0, 1) where /proc does not say."""
    try:
        with open("/proc/self/maps", "rb") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except OSError:
        return 0, 1


@pytest.fixture(autouse=True)
def _free_compiled_programs():
    """Drop every compiled program once the process holds a third of the kernel's memory mappings.
    XLA:CPU maps its code a few pages at a time per loaded executable and JAX keeps every executable
    (so do the compiled programs of live `Generator`s, which tests must not hoard):
    the full suite reached Linux's 65,530 (vm.max_map_count), and the next compilation aborted the
    whole pytest process in test_greedy_pass_equals_ar_smollm2 (measured: test_decoding.py's tests add
    30,000 mappings, mostly executable code pages; a compilation at the limit fails)."""
    yield
    used, limit = _memory_mappings()
    if used > limit // 3:
        jax.clear_caches()
        gc.collect()


@pytest.fixture(scope="session")
def tiny():
    """(config, params) of the `tiny` preset with random weights."""
    from pass_jax.config import load_preset
    from pass_jax.model import init_params

    config = load_preset("tiny")
    return config, jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))  # jit: 2x faster than eager


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A directory of eight short text files: a user's training corpus."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(8):
        (root / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps. " * 20)
    return root


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M-Instruct as a `pass_jax.loading.LoadedModel` (float32 on CPU)."""
    from pass_jax.loading import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def sp_tokenizer(tmp_path_factory):
    """A LLaMA SentencePiece tokenizer (~160 pieces) trained on the fly on generated text."""
    import sentencepiece as spm
    import transformers

    root = tmp_path_factory.mktemp("sp_tokenizer")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(SP_WORDS) for _ in range(12)) for _ in range(400)))
    (root / "model").mkdir()
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(root / "model" / "tokenizer"),
                                   vocab_size=160, model_type="bpe", character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    # transformers 5 converts a `tokenizer.model` SentencePiece file when loading from a directory.
    tokenizer = transformers.LlamaTokenizer.from_pretrained(root / "model")
    assert len(tokenizer) == 160 and tokenizer.bos_token_id == 1
    return tokenizer


@pytest.fixture(scope="session")
def make_hf_llama(sp_tokenizer):
    """Factory: save a random `transformers.LlamaForCausalLM` (fixed seed) plus the tokenizer into a dir.

    Returns (path, torch_model). Keyword arguments go to `transformers.LlamaConfig`.
    """
    import torch
    import transformers

    def make(path: Path, seed: int = 0, **overrides):
        values = dict(vocab_size=len(sp_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, initializer_range=0.1, tie_word_embeddings=False)
        values.update(overrides)
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**values)).eval()
        model.save_pretrained(path, safe_serialization=True)
        sp_tokenizer.save_pretrained(path)
        return Path(path), model

    return make
