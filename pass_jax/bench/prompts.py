"""The prompts a benchmark decodes: prefixes of held-out test documents, or a JSONL file."""
from __future__ import annotations

from ..cli_args import log, read_prompts
from .settings import BenchError

CORPUS_FOR_DOMAIN = {"text": "wiki", "code": "python"}  # pass_jax.corpora sources of the held-out prompts


def prefix_prompt(tokenizer, text: str, prompt_tokens: int) -> str | None:
    """The longest prefix of `text` that tokenizes to at most `prompt_tokens` tokens.

    None when the text is shorter than that (prompts should have about the same length) or the
    prefix is blank. Decoding a cut token list and re-encoding it can merge tokens differently, so
    shrink until the re-encoded prompt fits: prompts then stay in one length bucket (one compilation).
    """
    encode = lambda s: tokenizer(s)["input_ids"]  # noqa: E731 - as `Generator.encode` does
    ids = encode(text[: 16 * prompt_tokens])  # no token is longer than 16 characters in practice
    if len(ids) < prompt_tokens:
        return None
    for count in range(prompt_tokens, 0, -1):
        prompt = tokenizer.decode(ids[:count], skip_special_tokens=True)
        if len(encode(prompt)) <= prompt_tokens:
            return prompt if prompt.strip() else None
    return None


def corpus_prompts(tokenizer, domain: str, num_prompts: int, prompt_tokens: int) -> list[str]:
    """Prefixes of held-out test documents of the text (wiki) or code (python) corpus, in the order
    the training pipeline reads them (`pass_jax.corpora.held_out_documents`).

    Documents shorter than `prompt_tokens` tokens are skipped (see `prefix_prompt`).
    """
    from .. import corpora  # reads the corpus (the wiki one fetched on first use): only for built-in prompts

    prompts = []
    for document in corpora.held_out_documents(CORPUS_FOR_DOMAIN[domain]):
        prompt = prefix_prompt(tokenizer, document.text, prompt_tokens)
        if prompt is not None:
            prompts.append(prompt)
        if len(prompts) == num_prompts:
            return prompts
    if not prompts:
        raise BenchError(f"no {domain} test document has {prompt_tokens} tokens; lower --prompt-tokens")
    log(f"note: only {len(prompts)} {domain} test documents have {prompt_tokens} tokens; using them all")
    return prompts


def file_prompts(path: str) -> list[str]:
    """Prompts of a JSONL file, read exactly as `pass-jax generate --prompts` reads them."""
    return read_prompts(None, path)
