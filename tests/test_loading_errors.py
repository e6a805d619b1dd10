"""Bad checkpoints give one clear `LoadError` line; `pass-jax convert` round-trips through Orbax."""
from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pass_jax.errors import PassJaxError
from pass_jax.loading import LoadError, load_model
from pass_jax.model import causal_mask, forward


@pytest.fixture(scope="module")
def hf_dir(make_hf_llama, tmp_path_factory):
    path, _ = make_hf_llama(tmp_path_factory.mktemp("hf") / "llama")
    return path


@pytest.fixture
def copy_dir(hf_dir, tmp_path):
    """A fresh copy of the tiny HF checkpoint to break."""
    return shutil.copytree(hf_dir, tmp_path / "llama")


def edit_config(path, **changes):
    data = json.loads((path / "config.json").read_text())
    data.update(changes)
    (path / "config.json").write_text(json.dumps(data))


def edit_tensors(path, edit):
    from safetensors.numpy import load_file, save_file

    (file,) = path.glob("*.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_model_path(tmp_path):
    with pytest.raises(LoadError, match=r"model '.*/nope' not found: give 'smollm2-135m', a \.gguf file"):
        load_model(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    with pytest.raises(LoadError, match="has no config.json: not a Hugging Face model directory"):
        load_model(tmp_path)


def test_non_llama_architecture(tmp_path):
    import transformers

    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100).save_pretrained(tmp_path)
    with pytest.raises(LoadError, match=r"unsupported architecture 'gpt2': pass-jax loads LLaMA-family"):
        load_model(tmp_path)


def test_non_llama_model_type_in_llama_dir(copy_dir):
    edit_config(copy_dir, model_type="gemma")
    with pytest.raises(LoadError, match="unsupported architecture 'gemma'"):
        load_model(copy_dir)
    edit_config(copy_dir, model_type="mistral", sliding_window=None)  # a supported family (tests/test_families.py)
    assert load_model(copy_dir).config.family == "mistral"


def test_shape_mismatch(copy_dir):
    edit_config(copy_dir, intermediate_size=96)
    with pytest.raises(LoadError, match=r"mlp\.gate_proj\.weight: checkpoint shape \(128, 64\) does not match the "
                                        r"config \(expected \(96, 64\)\)"):
        load_model(copy_dir)


def test_unsupported_dtype(copy_dir):
    def to_int8(tensors):
        name = "model.layers.0.mlp.up_proj.weight"
        tensors[name] = np.zeros(tensors[name].shape, np.int8)

    edit_tensors(copy_dir, to_int8)
    with pytest.raises(LoadError, match=r"model\.layers\.0\.mlp\.up_proj\.weight: unsupported dtype I8 "
                                        r"\(supported: F32, BF16, F16\)"):
        load_model(copy_dir)


def test_missing_tensor(copy_dir):
    edit_tensors(copy_dir, lambda tensors: tensors.pop("model.layers.1.self_attn.v_proj.weight"))
    with pytest.raises(LoadError, match=r"tensor 'model\.layers\.1\.self_attn\.v_proj\.weight' is missing"):
        load_model(copy_dir)


def test_no_safetensors(copy_dir):
    for file in copy_dir.glob("*.safetensors"):
        file.unlink()
    with pytest.raises(LoadError, match=r"has no \*\.safetensors files"):
        load_model(copy_dir)


def test_unsupported_activation_and_rope(copy_dir):
    edit_config(copy_dir, hidden_act="gelu")
    with pytest.raises(LoadError, match="unsupported activation 'gelu'"):
        load_model(copy_dir)
    edit_config(copy_dir, hidden_act="silu", rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                              "rope_theta": 10000.0})
    with pytest.raises(LoadError, match="unsupported rope scaling 'linear'"):
        load_model(copy_dir)


def test_model_files_must_be_gguf(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(LoadError, match=r"a model file must be \.gguf"):
        load_model(tmp_path / "weights.bin")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(LoadError, match="not a readable GGUF file"):
        load_model(tmp_path / "broken.gguf")


def test_load_errors_are_user_errors():
    assert issubclass(LoadError, PassJaxError)


def test_cli_reports_load_errors_in_one_line(tmp_path, capsys):
    from pass_jax.cli import main

    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pass-jax convert: error: model ") and "not found" in err[-1]
    assert not (tmp_path / "dst").exists()


def test_convert_round_trip(hf_dir, tmp_path, capsys):
    from pass_jax.cli import main

    dst = tmp_path / "converted"
    assert main(["convert", str(hf_dir), str(dst)]) == 0
    assert (dst / "pass_jax.json").is_file() and (dst / "params").is_dir()

    original = load_model(hf_dir)
    reloaded = load_model(dst)
    assert reloaded.config == original.config
    assert jax.tree.structure(reloaded.params) == jax.tree.structure(original.params)
    for a, b in zip(jax.tree.leaves(reloaded.params), jax.tree.leaves(original.params)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    text = "the quick brown fox"
    assert reloaded.tokenizer(text).input_ids == original.tokenizer(text).input_ids

    ids = jnp.asarray([[1] + original.tokenizer(text).input_ids], jnp.int32)
    width = ids.shape[1]
    args = (ids, jnp.arange(width)[None], causal_mask(jnp.zeros((1,), jnp.int32), width, width))
    np.testing.assert_array_equal(np.asarray(forward(reloaded.params, reloaded.config, *args)[0]),
                                  np.asarray(forward(original.params, original.config, *args)[0]))

    capsys.readouterr()
    assert main(["convert", str(hf_dir), str(dst)]) == 2  # never overwrite a checkpoint unasked
    assert "is not empty; add --overwrite" in capsys.readouterr().err


def test_converted_checkpoint_errors(hf_dir, tmp_path):
    from pass_jax.loading import save_converted

    dst = tmp_path / "converted"
    save_converted(load_model(hf_dir), dst)
    meta = json.loads((dst / "pass_jax.json").read_text())
    meta["config"]["intermediate_size"] = 96
    (dst / "pass_jax.json").write_text(json.dumps(meta))
    with pytest.raises(LoadError, match="params/ is damaged or does not match its config"):
        load_model(dst)
    meta["format"] = "something-else"
    (dst / "pass_jax.json").write_text(json.dumps(meta))
    with pytest.raises(LoadError, match="unknown checkpoint format 'something-else'"):
        load_model(dst)


def test_bias_terms_are_refused(copy_dir):
    """A checkpoint with biases would otherwise load silently with the biases dropped (wrong logits)."""
    edit_config(copy_dir, attention_bias=True)
    with pytest.raises(LoadError, match="unsupported attention_bias in a llama checkpoint"):
        load_model(copy_dir)
    edit_config(copy_dir, attention_bias=False, mlp_bias=True)
    with pytest.raises(LoadError, match="unsupported mlp_bias"):
        load_model(copy_dir)


def test_gguf_without_token_embedding_is_a_load_error(tmp_path, monkeypatch):
    """A GGUF file with llama metadata but no token_embd tensor: one LoadError line, not StopIteration."""
    import gguf

    monkeypatch.setenv("PASS_JAX_MODEL_CACHE", "0")
    writer = gguf.GGUFWriter(str(tmp_path / "noembd.gguf"), "llama")
    for add, value in ((writer.add_context_length, 64), (writer.add_embedding_length, 16),
                       (writer.add_block_count, 1), (writer.add_feed_forward_length, 32),
                       (writer.add_head_count, 2), (writer.add_layer_norm_rms_eps, 1e-5)):
        add(value)
    writer.add_tensor("output_norm.weight", np.ones(16, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(LoadError, match=r"noembd\.gguf: tensor 'token_embd.weight' \(the token embedding\) is missing"):
        load_model(tmp_path / "noembd.gguf")
