"""`pass-jax plan`: its arguments and the command (imports no JAX until the command runs; see `plan`)."""
from __future__ import annotations

import argparse
import json
import math

from .cli_args import add_iteration_args
from .defaults import MODES

RULE_HELP = """\
The recommended mesh: among all factorisations of the device count into data x fsdp x tensor
whose data-parallel part (data x fsdp) divides the batch, the one with the most data
parallelism (largest data, then fewest fsdp: fsdp all-gathers weights on every call, tensor
parallelism does not) whose per-device total fits the smallest device budget in the table that
any factorisation fits (TPU v5e first: 90% of 16 GiB). Parameter and KV-cache bytes are exact
(the real shardings on an abstract mesh); activations are an estimate."""


def cmd_plan(args) -> int:
    from .cli_args import iteration_from_args
    from .plan import PlanError, format_plan, mesh_shape, plan

    # as `generate` reads the same options; -L 0 still means plain decoding here, as it did before --mode
    iteration = iteration_from_args(args, "ar" if args.num_lookahead == "0" else args.mode)

    if args.mesh is None and args.devices is None:
        raise PlanError("give --mesh (e.g. 2x4) or --devices N")
    if args.mesh is not None and args.devices is not None:
        count = math.prod(mesh_shape(args.mesh).values())
        if count != args.devices:
            raise PlanError(f"--mesh {args.mesh} has {count} devices but --devices is {args.devices}")
    result = plan(args.config, args.mesh, args.batch, args.max_len, iteration=iteration, dtype=args.dtype,
                  train=args.train, anchors=args.anchors, num_devices=args.devices,
                  lookahead_kind=args.lookahead_kind, adapter_rank=args.adapter_rank)
    if args.json:
        result = {k: v for k, v in result.items() if k != "param_shards"}
        print(json.dumps(result, indent=1))
    else:
        print(format_plan(result, args.config))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="per-device memory of a run on a mesh, and the recommended mesh (no devices needed)",
        description="Per-device memory of generation (or look-ahead training with --train) of a model on a "
                    "device mesh: sharded parameters, KV cache, look-ahead vectors, optimizer state and an "
                    "activation estimate, and whether it fits TPU v4/v5e, A100 and H100.",
        epilog=RULE_HELP + "\n\nexamples:\n  pass-jax plan --config llama1_7b --mesh 2x4 --batch 8 --max-len 2048\n"
               "  pass-jax plan --config llama1_7b --devices 4 --batch 8 --max-len 512 --train\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a model preset (llama1_7b, llama2_7b, llama3_1_8b, "
                        "llama3_2_1b, mistral_7b, qwen2_5_7b, qwen3_8b, smollm2_135m, tiny) "
                        "or a model config .json")
    parser.add_argument("--mesh", help="DATAxTENSOR (e.g. 2x4) or DATAxFSDPxTENSOR (e.g. 2x2x2); "
                        "default: the recommended mesh of --devices")
    parser.add_argument("--devices", type=int, help="device count for the recommendation (default: the mesh's)")
    parser.add_argument("--batch", type=int, required=True, help="global batch (rows)")
    parser.add_argument("--max-len", type=int, required=True,
                        help="prompt + new tokens (generation) or the training sequence length (--train)")
    parser.add_argument("--mode", choices=MODES, default="pass", help="pass (default) or ar: plain decoding")
    add_iteration_args(parser)
    parser.add_argument("--lookahead-kind", choices=("vectors", "deep", "adapter"), default="vectors",
                        help="the look-ahead parameters counted (default vectors; adapter: every step adapted)")
    parser.add_argument("--adapter-rank", type=int, default=8, help="adapter rank for --lookahead-kind adapter "
                        "(default 8)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"),
                        help="parameter and compute dtype (default bfloat16)")
    parser.add_argument("--train", action="store_true", help="plan look-ahead training instead of generation")
    parser.add_argument("--anchors", type=int, default=32, help="anchors per sequence when training (default 32)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=cmd_plan)
