"""`pass-jax train`: train look-ahead vectors from a config (found by `pass_jax.cli`)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex

EPILOG = """config keys (override any with KEY=VALUE; values are JSON, else strings):
  model.source   smollm2-135m (bundled) | FILE.gguf | HF or `pass-jax convert` dir | random
  model.preset   model preset whose shapes the model must have (smollm2_135m, llama1_7b, tiny)
  model.dtype    float32 | bfloat16 (default: the loader's, float32 on CPU)
  data.source    wiki | python (offline) | wikipedia | the-stack-python (TFDS) | PATH
  data.seq_len, data.max_documents, data.max_tokens, data.eval_max_tokens, data.add_bos,
  data.data_dir, data.cache_dir (TFDS data dir; the offline corpora cache)
  train.num_lookahead  look-ahead vectors L      train.anchors_per_seq  anchors per sequence
  train.loss     ce (paper: cross-entropy on the data) | distill (KL to the model's own p)
  train.batch_size, train.steps, train.lr, train.warmup, train.weight_decay, train.clip, train.seed
  train.log_every, train.eval_every, train.eval_batches, train.checkpoint_every, train.keep
  mesh           null (all devices data-parallel) | DATAxTENSOR | DATAxFSDPxTENSOR, e.g. 2x2
  output.dir     run dir (default runs/CONFIG): config.json, metrics.jsonl, checkpoints/
  output.export  the trained vectors (default OUTPUT_DIR/lookahead.npz, + lookahead.json)

examples:
  pass-jax train --config smollm2_135m_wiki                   # ~15 min on a 2-core CPU
  pass-jax train --config smollm2_135m_wiki train.steps=10 data.max_documents=50
  pass-jax train --config smollm2_135m_wiki --resume          # continue a killed run exactly
  pass-jax train --config tiny_overfit --print-config         # show the resolved config
  pass-jax train --config llama1_7b_wiki model.source=/data/llama-7b-hf   # on a TPU v4-8
  pass-jax generate --lookahead runs/smollm2_135m_wiki/lookahead.npz --prompt "The history of"

Only the L look-ahead vectors are trained; the base model stays frozen (the PaSS paper)."""


def register(subparsers) -> None:
    """Add the `train` subcommand to the `pass-jax` parser."""
    parser = subparsers.add_parser(
        "train", help="train PaSS look-ahead vectors (base model frozen)", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the look-ahead vectors of PaSS on a corpus: many anchors per sequence in one "
                    "masked forward, AdamW on the vectors only, periodic eval, Orbax checkpoints, and a "
                    ".npz export that `pass-jax generate --lookahead PATH` reads.")
    parser.add_argument("--config", required=True, metavar="NAME|PATH",
                        help="a train config: a name in configs/ (smollm2_135m_wiki, smollm2_135m_python, "
                             "llama1_7b_wiki, llama1_7b_stack_python, tiny_overfit) or a JSON file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.steps=10 data.max_documents=50")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run dir's latest checkpoint (starts fresh if there is none)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.set_defaults(func=cmd_train)


def command_line(args) -> str:
    """The command as a user would type it, for the export's metadata."""
    words = ["pass-jax", "train", "--config", args.config, *args.overrides]
    return shlex.join(words + ["--resume"] * args.resume)


def cmd_train(args) -> int:
    from train.loop import load_run_config, run

    config = load_run_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=1))
        return 0
    final = run(config, resume=args.resume, command=command_line(args))
    print(json.dumps({"run_dir": str(config.run_dir), "lookahead": str(config.export_path), "final_eval": final}))
    return 0
