"""Calibrated plans at equal accuracy on the paper's networks (tfprec.calibrate).

For the paper's MNIST MLP and CIFAR-10 VGG (METHOD.md section 5), the
committed well-trained reference networks (examples/weights/, made by
examples/train_reference.py; ``--retrain`` trains the short CPU schedule
here instead), this finds for each plan family the cheapest level whose
fake-quant model loses at most ``--max_drop`` percentage points of accuracy
on the SEARCH examples (the "equal accuracy" criterion), and reports it on
the disjoint CONFIRM examples.  It prints ``name: value`` lines:

* ``<net>_<family>_compute_full_adders`` / ``_memory_bits``, ``_level``,
  ``_evaluations`` (fake-quant passes the family's search used),
  ``_bound`` (analytic bound of that plan) next to ``_mismatch`` and
  ``_mismatch_ucl95`` (measured on the search examples, one-sided 95 %
  Clopper-Pearson), ``_accuracy_drop_pp`` with its standard error
  ``_accuracy_drop_se_pp`` (search examples), ``_confirm_accuracy_drop_pp`` /
  ``_confirm_mismatch`` on the test examples NOT used by the search (the
  honest numbers) and ``_full_test_accuracy_drop_pp`` on all of them;
* families: ``cost_aware`` (shaped by the per-example bound,
  :func:`tfprec.planning.cost_aware.per_example_cost_aware_plan`; gains
  with ``per_example=True``), ``paper``, ``uniform``, ``measured_greedy``
  (the measured refinement of the cost-aware plan) and
  ``cost_aware_predicted`` (the cheapest plan under the predicted mismatch,
  from per-class gains on the search examples, measured first, then searched from there by
  calibrate's measurements; ``--no_predicted`` skips it);
* ``<net>_<family>_over_uniform_compute`` (goal <= 0.85) and
  ``<net>_<family>_over_paper_compute`` (goal <= 0.75) for the cost-aware,
  measured-greedy and predicted families, each followed by a ``..._goal``
  and ``..._met`` line;
* ``<net>_analytic_paper_1pct_*``: the paper's rule with B_min chosen by the
  analytic bound <= 1 %, to show how much the bound over-provisions;
* ``<net>_eqmismatch_*``: the analytic families calibrated to an equal
  measured *mismatch* (``--mismatch_target``, 1 %), a criterion with far
  less sampling noise than a 0.1 pp accuracy drop, so the shapes are
  compared on their merit.

Protocol: noise gains on the first ``--gain_examples`` (2000) training
images; the search on the first ``--search_examples`` (5000) test images;
the confirmation on the remaining 5000.  Costs: computational cost in 1-bit
full adders per example, representational cost in bits (METHOD.md section
4).

``--retrain`` CPU schedule (2 cores, no GPU): MNIST MLP 3 epochs (~17 s),
CIFAR-10 VGG 5 epochs (~210 s; 70.6 % test accuracy), trained once with
:func:`tfprec.models.cached_trained` and cached under ``benchmarks/.cache``
(gitignored).

Usage:
  python benchmarks/calibrated.py [--data_dir ../shared/data]
      [--networks mnist_mlp,cifar10_vgg] [--max_drop 0.1] [--retrain]
  (the data folder defaults to $TFPREC_DATA_DIR, then ../shared/data next to
  the repository)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import common  # noqa: E402  (examples/common.py: imports tfprec first)

import tfprec  # noqa: E402
from tfprec.planning import calibrate as C  # noqa: E402
from tfprec.planning.rules import level_text  # noqa: E402
from tfprec.application import data  # noqa: E402
from tfprec.application import models  # noqa: E402
from tfprec.quantization import validate as V  # noqa: E402
NETS = {  # builder: (dataset, load kwargs, CPU epochs)
    "mnist_mlp": ("mnist", {"flatten": True}, 3),
    "cifar10_vgg": ("cifar10", {}, 5),
}
GOALS = (("uniform", 0.85), ("paper", 0.75))


def say(name: str, value) -> None:
    if isinstance(value, float):
        value = f"{value:.6g}"
    print(f"{name}: {value}", flush=True)


def run(net: str, args) -> None:
    t0 = time.perf_counter()
    ds_name, kw, default_epochs = NETS[net]
    epochs = getattr(args, f"{net.split('_')[0]}_epochs") or default_epochs
    ds = data.load_dataset(ds_name, args.data_dir, **kw)
    if args.retrain:
        model = models.cached_trained(net, ds, epochs=epochs, cache_dir=args.cache_dir)
        how = f"trained here, {epochs} epochs (cached under {args.cache_dir})"
    else:
        model = common.load_reference(net, args.weights_dir)
        how = (f"well-trained reference weights "
               f"{os.path.relpath(common.reference_path(net, args.weights_dir))}")
    xg = ds.x_train[:args.gain_examples]
    n_s = args.search_examples
    xs, ys = ds.x_test[:n_s], ds.y_test[:n_s]
    xc, yc = ds.x_test[n_s:], ds.y_test[n_s:]
    gains = tfprec.noise_gains(model, xg, per_example=True)
    t1 = time.perf_counter()
    res = C.calibrate(model, gains, xs, ys, max_accuracy_drop=args.max_drop,
                      methods=("cost_aware", "paper", "uniform", "measured_greedy"),
                      cost="compute", batch_size=args.batch_size)
    t2 = time.perf_counter()
    cands = list(res.candidates)
    unmet = dict(res.unmet)
    t_pred = None
    if args.predicted:
        # the predictor's per-class gains on the held-out SEARCH examples (it
        # is made for held-out inputs); confirmed by calibrate's measurements
        tp = time.perf_counter()
        pgains = tfprec.noise_gains(model, xs, per_class=True)
        rp = C.calibrate(model, pgains, xs, ys, max_accuracy_drop=args.max_drop,
                         methods=("cost_aware_predicted",), cost="compute",
                         batch_size=args.batch_size)
        cands += list(rp.candidates)
        unmet.update(rp.unmet)
        t_pred = time.perf_counter() - tp
    cands.sort(key=lambda c: c.compute_cost)
    by = {c.method: c for c in cands}
    p = net
    say(f"{p}_model", how)
    say(f"{p}_gain_examples", len(xg))
    say(f"{p}_search_examples", res.num_examples)
    say(f"{p}_confirm_examples", len(xc))
    say(f"{p}_float_accuracy_pct", 100 * res.float_accuracy)
    say(f"{p}_target", f"accuracy drop <= {args.max_drop:g} pp on the search examples")
    say(f"{p}_best_family", cands[0].method if cands else "none")
    fdec_c = V.float_decisions(model, xc, args.batch_size) if len(xc) else None
    for c in cands:
        q = f"{p}_{c.method}"
        say(f"{q}_level", level_text(c.method, c.level))
        say(f"{q}_evaluations", c.evaluations)
        say(f"{q}_compute_full_adders", c.compute_cost)
        say(f"{q}_memory_bits", c.memory_cost)
        say(f"{q}_bits_w", ",".join(str(l.weight_bits) for l in c.plan.layers))
        say(f"{q}_bits_a", ",".join(str(l.act_bits) for l in c.plan.layers))
        say(f"{q}_bound", c.bound)
        say(f"{q}_per_example_bound", c.per_example_bound)
        say(f"{q}_mismatch", c.measured_mismatch)
        say(f"{q}_mismatch_ucl95", c.mismatch_ucl)
        say(f"{q}_accuracy_drop_pp", c.accuracy_drop_pp)
        say(f"{q}_accuracy_drop_se_pp", c.accuracy_drop_se_pp)
        say(f"{q}_guarantee", c.guarantee)
        if fdec_c is not None:
            qdec = V.quant_decisions(model, c.plan, xc, args.batch_size)
            drop = 100 * (np.mean(fdec_c == yc) - np.mean(qdec == yc))
            say(f"{q}_confirm_mismatch", float(np.mean(qdec != fdec_c)))
            say(f"{q}_confirm_accuracy_drop_pp", float(drop))
            n_all = res.num_examples + len(xc)
            say(f"{q}_full_test_accuracy_drop_pp",
                float((c.accuracy_drop_pp * res.num_examples + drop * len(xc)) / n_all))
    for m, why in unmet.items():
        say(f"{p}_{m}_unmet", why)
    for fam in ("cost_aware", "measured_greedy", "cost_aware_predicted"):
        if fam not in by:
            continue
        for base, goal in GOALS:
            if base not in by:
                continue
            r = by[fam].compute_cost / by[base].compute_cost
            say(f"{p}_{fam}_over_{base}_compute", r)
            say(f"{p}_{fam}_over_{base}_compute_goal", f"<= {goal}")
            say(f"{p}_{fam}_over_{base}_compute_met", "yes" if r <= goal else "NO")
    # the analytic rule the paper uses: B_min from bound <= 1 %
    try:
        ap = tfprec.paper_plan(gains, 0.01)
    except tfprec.UnattainableTargetError as e:
        say(f"{p}_analytic_paper_1pct", f"unattainable within 16 bits ({e})")
    else:
        v = V.validate(model, ap, xs, ys, args.batch_size)
        say(f"{p}_analytic_paper_1pct_b_min", ap.b_min)
        say(f"{p}_analytic_paper_1pct_bound", ap.bound())
        say(f"{p}_analytic_paper_1pct_mismatch", v.mismatch_rate)
        say(f"{p}_analytic_paper_1pct_compute_full_adders", v.compute_cost)
        if "paper" in by:
            say(f"{p}_analytic_paper_1pct_over_calibrated_paper_compute",
                v.compute_cost / by["paper"].compute_cost)
    say(f"{p}_total_fake_quant_evaluations", res.total_evaluations)
    say(f"{p}_calibrate_seconds", t2 - t1)
    if t_pred is not None:
        say(f"{p}_cost_aware_predicted_seconds", t_pred)
    if args.markdown:
        print(res.to_markdown(), flush=True)
    if args.mismatch_target > 0:
        # the same comparison at equal measured *mismatch*, a criterion with
        # far less sampling noise than a 0.1 pp accuracy drop
        t3 = time.perf_counter()
        rm = C.calibrate(model, gains, xs, target_mismatch=args.mismatch_target,
                         methods=("cost_aware", "paper", "uniform"), cost="compute",
                         batch_size=args.batch_size)
        q = f"{p}_eqmismatch"
        say(f"{q}_target", f"mismatch <= {args.mismatch_target:g} on the search examples")
        for c in rm.candidates:
            say(f"{q}_{c.method}_level", level_text(c.method, c.level))
            say(f"{q}_{c.method}_evaluations", c.evaluations)
            say(f"{q}_{c.method}_compute_full_adders", c.compute_cost)
            say(f"{q}_{c.method}_bound", c.bound)
            say(f"{q}_{c.method}_mismatch", c.measured_mismatch)
            say(f"{q}_{c.method}_mismatch_ucl95", c.mismatch_ucl)
        for base, _ in GOALS:
            if {"cost_aware", base} <= {c.method for c in rm.candidates}:
                say(f"{q}_cost_aware_over_{base}_compute",
                    rm["cost_aware"].compute_cost / rm[base].compute_cost)
        say(f"{q}_calibrate_seconds", time.perf_counter() - t3)
    say(f"{p}_seconds", time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data_dir", default=None,
                    help="folder with mnist.npz / cifar10_jpeg75.npz "
                         "(default $TFPREC_DATA_DIR, then ../shared/data)")
    ap.add_argument("--cache_dir", default=os.path.join(HERE, ".cache"))
    ap.add_argument("--networks", default="mnist_mlp,cifar10_vgg")
    ap.add_argument("--weights_dir", default="",
                    help="folder of the reference <net>.h5 ('': examples/weights)")
    ap.add_argument("--retrain", action="store_true",
                    help="train the short CPU schedule here (cached) instead of "
                         "loading the committed well-trained reference weights")
    ap.add_argument("--no_predicted", dest="predicted", action="store_false",
                    help="skip the predictor-based family (cost_aware_predicted)")
    ap.add_argument("--mnist_epochs", type=int, default=None)
    ap.add_argument("--cifar10_epochs", type=int, default=None)
    ap.add_argument("--gain_examples", type=int, default=2000)
    ap.add_argument("--search_examples", type=int, default=5000,
                    help="test images the levels are chosen on (the first N); "
                         "the others confirm them")
    ap.add_argument("--max_drop", type=float, default=0.1,
                    help="largest accuracy drop, percentage points")
    ap.add_argument("--mismatch_target", type=float, default=0.01,
                    help="also compare at equal measured mismatch (0: skip)")
    ap.add_argument("--batch_size", type=int, default=500)
    ap.add_argument("--markdown", action="store_true",
                    help="also print each network's markdown table")
    args = ap.parse_args(argv)
    args.data_dir = data.resolve_data_dir(args.data_dir)
    for net in args.networks.split(","):
        if net not in NETS:
            ap.error(f"unknown network {net!r}; choose from {', '.join(NETS)}")
        run(net, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
