"""Tokens per model call and acceptance by depth of PaSS variants on held-out prompts (no timing).

Tokens per call is the hardware-independent figure: it is what `pass-jax bench` reports beside every
speed, measured here without the timed rounds so it can run on a busy machine. Usage:

    .venv/bin/python docs/bench/tokens_per_call.py --domain text --sampling paper \
        --variant calls=2,L=4 --variant calls=1,tree=4-2
"""
from __future__ import annotations

import argparse
import json

from pass_jax.bench import corpus_prompts
from pass_jax.generate import Generator, resolve_lookahead
from pass_jax.iteration import Iteration
from pass_jax.loading import load_model
from pass_jax.sampling import GREEDY, PAPER


def parse_variant(text: str) -> Iteration:
    """'calls=1,tree=4-2' or 'calls=2,L=4' -> the Iteration."""
    fields = dict(part.split("=") for part in text.split(","))
    tree = tuple(int(k) for k in fields["tree"].split("-")) if "tree" in fields else None
    return Iteration.from_options("pass", fields.get("L"), int(fields.get("calls", 2)), tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", choices=("text", "code"), action="append", required=True)
    parser.add_argument("--sampling", choices=("paper", "greedy"), action="append", required=True)
    parser.add_argument("--variant", action="append", required=True, type=parse_variant)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--lookahead", default="default",
                        help="--lookahead of generate; {domain} is replaced by the domain (default: the shipped ones)")
    args = parser.parse_args()
    model = load_model("smollm2-135m")
    for domain in args.domain:
        prompts = corpus_prompts(model.tokenizer, domain, args.num_prompts, 64)
        for name in args.sampling:
            for variant in args.variant:
                lookahead = resolve_lookahead(model, args.lookahead.format(domain=domain), domain,
                                              variant.num_lookahead)
                generator = Generator(model, variant, lookahead=lookahead,
                                      max_new_tokens=args.max_new_tokens, batch_size=len(prompts),
                                      sampling=PAPER if name == "paper" else GREEDY)
                _, summary = generator.generate(prompts, seed=0)
                print(json.dumps({"domain": domain, "sampling": name, "lookahead": lookahead.source,
                                  **variant.to_json(), "width": variant.width,
                                  "tokens_per_call": summary["tokens_per_call"],
                                  "position_acceptance": summary["position_acceptance"],
                                  "model_calls": summary["model_calls"], "new_tokens": summary["new_tokens"]}),
                      flush=True)


if __name__ == "__main__":
    main()
