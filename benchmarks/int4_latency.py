"""What INT4 weights cost in latency on LiteRT's CPU kernels.

    python benchmarks/int4_latency.py [--net mobilenet_v2] [--examples 500]

Exports the same plan of one network (uniform W7/A8 on per-channel gains;
``--int4_layers`` of its weight layers at 4 bits: by default MobileNetV2's
expand / project convolutions of blocks 14-16 and ``Conv_1``, the layers
``benchmarks/deploy.py`` puts in INT4) as a ``full_integer=True`` file
twice: the 4-bit layers stored as packed INT4 (the default) and as INT8
(``weight_types``, same grid), and prints, side by side in one run, each
file's size, operator types, agreement with the fake-quant model and
median single-example latency (XNNPACK, 1 thread) over TF's int8 PTQ
file's.  XNNPACK has no INT4 CONV_2D: those operators run on the builtin
kernels.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import tfprec  # noqa: E402  (first: selects Keras 2)

DEFAULT_INT4 = [f"block_{b}_{k}" for b in (14, 15, 16) for k in ("expand", "project")] + [
    "Conv_1"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default="mobilenet_v2")
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--int4_layers", default=",".join(DEFAULT_INT4))
    args = ap.parse_args(argv)
    from deploy import load_net
    from tfprec.export.tflite import export_tflite
    model, ds = load_net(args.net)
    gains = tfprec.noise_gains(model, ds.x_train[:500], per_channel=True)
    plan = tfprec.uniform_plan(gains, bits=8)
    four = [n for n in args.int4_layers.split(",") if n]
    plan = plan.with_bits(weight_bits={l.name: 4 if l.name in four else 7
                                       for l in plan.layers})
    x, y = ds.x_test[:args.examples], ds.y_test[:args.examples]
    with tempfile.TemporaryDirectory() as d:
        reps = {}
        for tag, wt in (("INT4", None), ("INT8", dict.fromkeys(four, "int8"))):
            reps[tag] = export_tflite(model, plan, os.path.join(d, f"{tag}.tflite"), x,
                                      backend="ai_edge_quantizer", labels=y,
                                      check_examples=len(x), full_integer=True,
                                      weight_types=wt, latency=True,
                                      baselines=(tag == "INT4"))
    ptq = next(r for r in reps["INT4"].baselines if r["name"] == "TF int8 PTQ")
    print(f"\n## {args.net}: {len(four)} layers at 4 bits, the rest W7/A8; full_integer files\n")
    for tag, rep in reps.items():
        ops = collections.Counter((r["op"], r["weight"]) for r in rep.op_table
                                  if r["weight"] in ("int4", "int8"))
        print(f"- {len(four)} layers stored {tag}: size {rep.file_size_bytes} bytes "
              f"({rep.file_size_bytes / ptq['size_bytes']:.3f} of TF int8); latency "
              f"{1e6 * rep.latency_s:.0f} us = {rep.latency_s / ptq['latency_s']:.2f}x TF "
              f"int8 ({1e6 * ptq['latency_s']:.0f} us); agreement XNNPACK "
              f"{100 * rep.agreement_by_kernels['xnnpack']:.2f} %; weight ops "
              + ", ".join(f"{n} {op}/{w}" for (op, w), n in sorted(ops.items())))


if __name__ == "__main__":
    main()
