"""Tokens per model call and acceptance by depth of PaSS variants on held-out prompts (no timing).

Tokens per call is the hardware-independent figure: it is what `pass-jax bench` reports beside every
speed, measured here without the timed rounds so it can run on a busy machine. Usage:

    .venv/bin/python docs/bench/tokens_per_call.py --domain text --sampling paper \
        --variant calls=2,L=4 --variant calls=1,tree=4-2 --variant calls=1,tree=4-2,ctx=4

With --own, the prompts are a `pass-jax train data` file's (held-out ones: --split test), chat records
put in the chat template and raw ones continued, as that command generated them:

    .venv/bin/python docs/bench/tokens_per_call.py --domain text --sampling paper --mode chat --mode raw \
        --own 'runs/onpolicy/{domain}-test.jsonl' --variant calls=1,tree=4-2 --variant calls=2,L=4

The copy-text and copy-code domains are a copy-heavy workload: a held-out document's first
COPY_TOKENS tokens inside an instruction to rewrite it (text) or to return it with type hints and
a docstring (code), asked in the model's chat template; they use the text and code look-ahead
parameters.
"""
from __future__ import annotations

import argparse
import itertools
import json

from pass_jax.bench import corpus_prompts
from pass_jax.generate import Generator, resolve_lookahead
from pass_jax.iteration import NGRAM, Iteration
from pass_jax.loading import load_model
from pass_jax.sampling import GREEDY, PAPER
from pass_jax.train import onpolicy


COPY_TOKENS = 160
COPY_INSTRUCTIONS = {"text": "Rewrite the following passage in your own words, keeping every fact:\n\n{}",
                     "code": "Return this Python code with type hints and a docstring added:\n\n{}"}


def parse_variant(text: str) -> Iteration:
    """'calls=1,tree=4-2', 'calls=2,L=4', 'calls=1,tree=4-2,ctx=4' (a context chain of 4), with ngram=N (its
    longest match) and rec=R (a recycle chain of R) -> the Iteration."""
    fields = dict(part.split("=") for part in text.split(","))
    tree = tuple(int(k) for k in fields["tree"].split("-")) if "tree" in fields else None
    drafts = ["lookahead"]
    if "ctx" in fields:
        drafts.append(f"context:{fields['ctx']}:{fields.get('ngram', NGRAM)}")
    if "rec" in fields:
        drafts.append(f"recycle:{fields['rec']}")
    return Iteration.from_options("pass", fields.get("L"), int(fields.get("calls", 2)), tree, ",".join(drafts))


def domain_prompts(tokenizer, domain: str, num_prompts: int) -> tuple[str, list[str], bool]:
    """(the look-ahead domain, the prompts, whether they go in the chat template) of a --domain."""
    if domain.startswith("copy-"):
        base = domain.removeprefix("copy-")
        passages = corpus_prompts(tokenizer, base, num_prompts, COPY_TOKENS)
        return base, [COPY_INSTRUCTIONS[base].format(p) for p in passages], True
    return domain, corpus_prompts(tokenizer, domain, num_prompts, 64), False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", choices=("text", "code", "copy-text", "copy-code"), action="append", required=True)
    parser.add_argument("--sampling", choices=("paper", "greedy"), action="append", required=True)
    parser.add_argument("--variant", action="append", required=True, type=parse_variant)
    parser.add_argument("--mode", choices=("chat", "raw"), action="append",
                        help="with --own: its chat or raw records (default raw)")
    parser.add_argument("--own", help="prompts of a `pass-jax train data` file; {domain} is replaced by the domain")
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--lookahead", default="default",
                        help="--lookahead of generate; {domain} is replaced by the domain (default: the shipped ones)")
    args = parser.parse_args()
    model = load_model("smollm2-135m")
    modes = args.mode or ["raw"]
    if not args.own and modes != ["raw"]:
        parser.error("--mode chat needs --own (corpus prompts are raw)")
    for domain, mode in itertools.product(args.domain, modes):
        if args.own:
            records = onpolicy.read_records(args.own.format(domain=domain))
            la_domain, chat = domain, mode == "chat"
            prompts = [r["prompt"] for r in records if r["mode"] == mode][:args.num_prompts]
        else:
            la_domain, prompts, chat = domain_prompts(model.tokenizer, domain, args.num_prompts)
        for name in args.sampling:
            for variant in args.variant:
                lookahead = resolve_lookahead(model, args.lookahead.format(domain=la_domain), la_domain,
                                              variant.num_lookahead)
                generator = Generator(model, variant, lookahead=lookahead, chat=chat,
                                      max_new_tokens=args.max_new_tokens, batch_size=len(prompts),
                                      sampling=PAPER if name == "paper" else GREEDY)
                _, summary = generator.generate(prompts, seed=0)
                print(json.dumps({"domain": domain, "context": mode, "prompts": len(prompts), "sampling": name,
                                  "lookahead": lookahead.source, **variant.to_json(), "width": variant.width,
                                  "tokens_per_call": summary["tokens_per_call"],
                                  "position_acceptance": summary["position_acceptance"],
                                  "context_share": summary["context_share"],
                                  "recycle_share": summary["recycle_share"],
                                  "model_calls": summary["model_calls"], "new_tokens": summary["new_tokens"]}),
                      flush=True)


if __name__ == "__main__":
    main()
