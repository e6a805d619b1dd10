"""Splice look-ahead parameters: the first steps from one set, the later steps from another.

    python -m pass_jax.train.splice --head runs/x/lookahead.npz --tail pass_jax/lookahead_weights/smollm2-135m-text.npz \\
        --out runs/x/spliced.npz

A run that trains [LA]_1..[LA]_h only (train.num_lookahead=h) spends all its compute on the
positions that are accepted most often; the decode still wants up to 8 steps. The result holds the
head's h steps, then the tail's steps h+1..L (L = the tail's length). If either is "deep", the
result is deep, the vectors-kind part with zero per-layer vectors (the same function); a head of the
"adapter" kind keeps its adapters (they cover its own steps only). A tail's adapters on steps after
the head's would be lost, so such a tail is refused.

Slot i attends to slots 1..i-1, so the tail's steps now see other earlier slots than they were
trained with: their acceptance must be measured again (`pass-jax train eval`), never assumed.
The metadata is the head's (its training run), plus a "splice" entry naming both sources.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def splice(head, tail):
    """Host arrays: head's steps, then tail's later steps; deep if either is deep, adapter if the head is."""
    from pass_jax import lookahead as lookahead_lib

    kinds = {lookahead_lib.kind_of(head), lookahead_lib.kind_of(tail)}
    h, total = lookahead_lib.num_steps(head), lookahead_lib.num_steps(tail)
    if h >= total:
        raise ValueError(f"the head holds {h} steps, the tail {total}: nothing to splice")
    if lookahead_lib.adapter_steps(tail) > h:
        raise ValueError(f"the tail has adapters on {lookahead_lib.adapter_steps(tail)} steps; those after the "
                         f"head's {h} would be lost")
    if kinds == {"vectors"}:
        return np.concatenate([np.asarray(head), np.asarray(tail)[h:]])
    layers = next(x["layers"].shape[0] for x in (head, tail) if lookahead_lib.kind_of(x) != "vectors")
    head_deep, tail_deep = ({name: np.asarray(x[name]) for name in lookahead_lib.DEEP_KEYS}
                            if lookahead_lib.kind_of(x) != "vectors" else lookahead_lib.as_kind(x, "deep", layers)
                            for x in (head, tail))
    result = {"embeds": np.concatenate([np.asarray(head_deep["embeds"]), np.asarray(tail_deep["embeds"])[h:]]),
              "layers": np.concatenate([np.asarray(head_deep["layers"]), np.asarray(tail_deep["layers"])[:, h:]],
                                       axis=1)}
    if lookahead_lib.kind_of(head) == "adapter":
        result.update({name: np.asarray(head[name]) for name in lookahead_lib.ADAPTER_LEAVES})
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", type=Path, required=True, help="parameters of the first steps (a .npz)")
    parser.add_argument("--tail", type=Path, required=True, help="parameters whose later steps are kept")
    parser.add_argument("--out", type=Path, required=True, help="the spliced .npz (+ .json metadata)")
    args = parser.parse_args(argv)

    from pass_jax import lookahead as lookahead_lib

    head, tail = lookahead_lib.read(args.head), lookahead_lib.read(args.tail)
    result = splice(head, tail)
    head_meta, tail_meta = lookahead_lib.read_metadata(args.head), lookahead_lib.read_metadata(args.tail)
    h = lookahead_lib.num_steps(head)
    metadata = {k: v for k, v in head_meta.items() if k not in ("kind", "acceptance", "diagnostic")}
    metadata.update(num_lookahead=lookahead_lib.num_steps(result), parameters=lookahead_lib.num_parameters(result),
                    splice={"steps": {f"1-{h}": str(args.head), f"{h + 1}-{lookahead_lib.num_steps(tail)}": str(args.tail)},
                            "head_command": head_meta.get("command"), "tail_command": tail_meta.get("command"),
                            "command": f"python -m pass_jax.train.splice --head {args.head} --tail {args.tail} --out {args.out}"})
    lookahead_lib.save(args.out, result, metadata)
    print(json.dumps({"out": str(args.out), "kind": lookahead_lib.kind_of(result),
                      "num_lookahead": lookahead_lib.num_steps(result)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
