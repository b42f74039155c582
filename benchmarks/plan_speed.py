"""Time to plan a grid of predicted targets, measured side by side in one run.

A measured level search (``calibrate``'s ``cost_aware_predicted`` family,
``benchmarks/peers.py``'s tfprec search) builds one predicted plan per level
it measures, all from the same gains.  The prediction model of a gains
object is cached with it, and its searches memoize the move table of each
bit state they visit, whatever the target (``predict._model``,
``PredictedMismatch.moves``), so later levels reuse what earlier ones
computed.  Both sides plan the SAME targets in the SAME order, with the
per-class gains of the SAME images of a committed reference network:

* ``shared``: every plan from the one gains object (the cache at work);
* ``fresh``: every plan from a fresh copy of it (``dataclasses.replace``:
  equal gains, another object, so a model and move tables of its own; the
  time of planning each level from scratch).

The targets: the level search's usual path on a quarter-octave grid of
the label-free expected drop around 0.34 pp (``--targets``, in octaves
from it: the start, then the gallop and the bisection of a typical
search).  Each side runs ``--repeats`` times (a new gains copy for each
repeat of both sides, so no repeat starts warm); the median is reported.
Prints, per network, ``<net>_plan_seconds_shared``,
``<net>_plan_seconds_fresh`` (the whole grid) and ``<net>_plan_speedup``
(fresh / shared), and checks that both sides made the same plans.

Usage:  python benchmarks/plan_speed.py [--nets mnist_mlp,cifar10_vgg]
            [--targets 0,0.25,0.75,1.75,1.25,1] [--repeats 3] [--data_dir DIR]
            [--weights_dir DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "examples"))
import common  # noqa: E402  (examples/common.py: imports tfprec first)

import tfprec  # noqa: E402
from tfprec.application import data as data_lib  # noqa: E402
from tfprec.planning.predict import SOFTMAX  # noqa: E402
from peers import GAINS_EXAMPLES  # noqa: E402  (the gains images of peers.py)

#: A typical outward search: the start, +0.25, +0.75, +1.75 octaves (a
#: miss), then the bisection at +1.25 and +1.0.
DEFAULT_TARGETS = "0,0.25,0.75,1.75,1.25,1"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", default="mnist_mlp,cifar10_vgg",
                    help=f"comma-separated, from {sorted(GAINS_EXAMPLES)}")
    ap.add_argument("--targets", default=DEFAULT_TARGETS,
                    help="octaves above 0.34 pp, in planning order")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--weights_dir", default=None)
    return ap


def parse_args(argv=None):
    ap = parser()
    a = ap.parse_args(argv)
    a.nets = [n for n in a.nets.split(",") if n]
    bad = [n for n in a.nets if n not in GAINS_EXAMPLES]
    if bad or not a.nets:
        ap.error(f"--nets: unknown network(s) {bad}; choose from {sorted(GAINS_EXAMPLES)}")
    try:
        a.targets = [0.0034 * 2.0 ** float(t) for t in a.targets.split(",")]
    except ValueError:
        ap.error(f"--targets: comma-separated octaves, got {a.targets!r}")
    if a.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {a.repeats}")
    return a


def plan_grid(gains_for, targets) -> tuple:
    """(seconds, bits of each plan): one plan per target, the gains of each
    from ``gains_for()``."""
    t0 = time.perf_counter()
    plans = [tfprec.cost_aware_plan(gains_for(), t, criterion="predicted",
                                    labels=SOFTMAX) for t in targets]
    secs = time.perf_counter() - t0
    return secs, [tuple((l.weight_bits, l.act_bits) for l in p.layers) for p in plans]


def run_net(net: str, a) -> None:
    _, dataset, flatten = common.REFERENCE_NETS[net]
    ds = data_lib.load_dataset(dataset, data_lib.resolve_data_dir(a.data_dir),
                               flatten=flatten)
    model = common.load_reference(net, a.weights_dir)
    gains = tfprec.noise_gains(model, ds.x_test[:GAINS_EXAMPLES[net]], per_class=True)
    times = {"shared": [], "fresh": []}
    bits = {}
    for _ in range(a.repeats):
        shared = dataclasses.replace(gains)           # no repeat starts warm
        secs, bits["shared"] = plan_grid(lambda: shared, a.targets)
        times["shared"].append(secs)
        secs, bits["fresh"] = plan_grid(lambda: dataclasses.replace(gains), a.targets)
        times["fresh"].append(secs)
    if bits["shared"] != bits["fresh"]:
        sys.exit(f"plan_speed.py: {net}: the shared and fresh sides made different plans")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{net}_plans {len(a.targets)} (per-class gains of {GAINS_EXAMPLES[net]} "
          f"test images, {a.repeats} repeats, median)")
    print(f"{net}_plan_seconds_shared: {med['shared']:.2f}")
    print(f"{net}_plan_seconds_fresh: {med['fresh']:.2f}")
    print(f"{net}_plan_speedup: {med['fresh'] / med['shared']:.2f}", flush=True)


def main(argv=None) -> None:
    a = parse_args(argv)
    for net in a.nets:
        run_net(net, a)


if __name__ == "__main__":
    main()
