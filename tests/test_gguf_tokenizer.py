"""GGUF tokenizers without torch: `loading.gguf_tokenizer` equals transformers' own GGUF tokenizer.

The side under test runs in `tests/_no_torch_worker.py`, where `import torch` fails as in the plain
install; the reference is `AutoTokenizer.from_pretrained(dir, gguf_file=...)` here, which needs torch.
Both sides are described by the same `describe` (ids, decodes, special ids, chat template, the
tokenizers JSON) over a few hundred strings.
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _no_torch_worker import describe
from pass_jax.loading import LoadError, bundled_gguf_path, gguf_tokenizer

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("_no_torch_worker.py")
MESSAGES = [{"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": "The capital of France is?"}]
CASES = ["", " ", "  ", "\n", "\n\n\n", "\t\tx", "   leading and trailing   ", "Hello world", "hello  world",
         "The capital of France is", "café naïve façade Ångström", "e\u0301 (combining accent)", "ß straße",
         "😀 🙂‍↔️ 👩‍👩‍👧 🇫🇷", "東京は日本の首都です。", "北京欢迎你", "한국어 텍스트", "Привет, мир", "مرحبا بالعالم",
         "zero\u200bwidth", "tab\tseparated\tvalues", "CRLF\r\nline", "1234567890 3.14159 -42 1e-5",
         "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
         "<s> </s> <unk>", "a<|im_end|>b", "def f(x):\n    return x ** 2  # square\n",
         "for (int i = 0; i < n; ++i) { sum += a[i]; }", "{\"key\": [1, 2, {\"nested\": null}]}",
         "https://example.com/path?q=1&r=2#frag", "don't won't it's we're I'll", "ALLCAPS MixedCase camelCase",
         "\u00a0non-breaking\u00a0spaces", "trailing newline\n", "\x00\x01 control bytes", "~!@#$%^&*()_+`-=[]\\;',./"]
FRAGMENTS = ["the", " quick", "brown", " fox", "  ", "    ", "\n", "\n\n", "\t", "😀", "🇯🇵", "東京", "中文", "é", "ñ",
             "42", "3.14", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "def ", "return", "()", "{}", "->", "::",
             "'s", "’", "—", "…", "\u200d", "a" * 30, " " * 9, "αβγ", "∑∫√"]


def corpus() -> list[str]:
    """Hand-picked cases, chunks of real Python source, and seeded mixtures of awkward fragments."""
    source = Path(textwrap.__file__).read_text().splitlines(keepends=True)
    code = ["".join(source[i:i + 3]) for i in range(0, min(len(source), 360), 3)]
    rng = random.Random(0)
    mixed = ["".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12))) for _ in range(150)]
    return CASES + code + mixed


def run_worker(job: dict, timeout: int) -> list[dict]:
    done = subprocess.run([sys.executable, str(WORKER)], input=json.dumps(job), capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def reference(path: Path, strings: list[str]) -> dict:
    pytest.importorskip("torch")  # transformers' own GGUF tokenizer needs it
    import transformers

    return describe(transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name), strings, MESSAGES)


def assert_same(ours: dict, ref: dict) -> None:
    for key in ref:  # one key at a time, so a failure names what differs
        assert ours[key] == ref[key], key


def write_sentencepiece_gguf(path: Path) -> None:
    """A LLaMA-style GGUF vocabulary ("llama" model: SentencePiece BPE with byte fallback), as llama.cpp writes one."""
    import gguf
    import sentencepiece as spm

    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog café naïve 東京 北京 😀 def return".split()
    text = path.with_suffix(".txt")
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(path.with_suffix("")), vocab_size=380,
                                   model_type="bpe", character_coverage=1.0, byte_fallback=True,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(path.with_suffix(".model")))
    kinds = gguf.TokenType
    types = [kinds.UNKNOWN if sp.is_unknown(i) else kinds.CONTROL if sp.is_control(i) else
             kinds.BYTE if sp.is_byte(i) else kinds.NORMAL for i in range(sp.vocab_size())]
    writer = gguf.GGUFWriter(str(path), "llama")
    # transformers' reference reads a model config from the file too.
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in range(sp.vocab_size())])
    writer.add_token_scores([sp.get_score(i) for i in range(sp.vocab_size())])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                             "{% if add_generation_prompt %}[assistant]{% endif %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def sentencepiece_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sp_gguf") / "vocab.gguf"
    write_sentencepiece_gguf(path)
    return path


@pytest.fixture(scope="module")
def smollm2_reference() -> dict:
    return reference(bundled_gguf_path(), corpus())


def test_bundled_gguf_tokenizer_without_torch_equals_transformers(smollm2_reference):
    strings = corpus()
    assert len(strings) >= 300
    (ours,) = run_worker({"gguf": str(bundled_gguf_path()), "strings": strings, "messages": MESSAGES}, timeout=300)
    assert_same(ours, smollm2_reference)
    # And what that reference is: byte-level BPE round-trips every string; control tokens stay whole.
    assert ours["decoded"] == strings
    assert ours["plain_ids"][strings.index("<|im_start|>")] == [1]
    assert ours["special"]["bos_token_id"] == 1 and ours["special"]["eos_token"] == "<|im_end|>"
    assert ours["chat_text"].startswith("<|im_start|>system\nYou answer in one word.<|im_end|>\n")
    assert ours["chat_text"].endswith("<|im_start|>assistant\n")


def test_sentencepiece_gguf_tokenizer_without_torch_equals_transformers(sentencepiece_gguf):
    strings = corpus()
    ref = reference(sentencepiece_gguf, strings)
    (ours,) = run_worker({"gguf": str(sentencepiece_gguf), "strings": strings, "messages": MESSAGES}, timeout=300)
    assert_same(ours, ref)
    assert ours["ids"][CASES.index("Hello world")][0] == 1  # llama.cpp's default: BOS on a SentencePiece vocabulary
    assert ours["chat_text"].endswith("[assistant]")


def test_load_model_and_converted_tokenizers_without_torch(smollm2_reference, tmp_path):
    """The newcomer path: `load_model("smollm2-135m")` and a `pass-jax convert` directory of it, no torch."""
    job = {"model": "smollm2-135m", "convert_to": str(tmp_path / "converted"), "strings": corpus(),
           "messages": MESSAGES}
    loaded, converted = run_worker(job, timeout=600)
    assert_same(loaded, smollm2_reference)
    assert_same(converted, smollm2_reference)


def test_unsupported_gguf_tokenizers_are_load_errors(tmp_path):
    import gguf

    for name, model in (("none.gguf", None), ("bert.gguf", "bert")):
        writer = gguf.GGUFWriter(str(tmp_path / name), "llama")
        if model:
            writer.add_tokenizer_model(model)
            writer.add_token_list(["[UNK]", "a", "b"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    with pytest.raises(LoadError, match=r"none\.gguf: the GGUF file holds no tokenizer"):
        gguf_tokenizer(tmp_path / "none.gguf")
    with pytest.raises(LoadError, match=r"bert\.gguf: .*'bert'") as err:
        gguf_tokenizer(tmp_path / "bert.gguf")
    assert "\n" not in str(err.value)
