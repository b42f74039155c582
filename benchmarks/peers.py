"""Peers, side by side: tfprec's predictor-based plan against greedy search
and HAWQ-v2, on the well-trained reference networks.

Networks (``--nets``, default both): the committed well-trained MNIST MLP
784-512-512-512-10 and CIFAR-10 VGG-like network
(``examples/common.load_reference``: ``examples/weights/<net>.h5``, made by
``examples/train_reference.py``; ``--weights_dir`` points elsewhere), on
MNIST / CIFAR-10 from ``--data_dir`` (default $TFPREC_DATA_DIR, then
../shared/data).  Every plan is a tfprec PrecisionPlan measured by the same
fake-quant evaluator (tfprec.planning.evaluate.Evaluator) and priced by the
same cost model (METHOD.md section 4, compute cost in full adders per
example).

Splits (subsets keep the run near 10 minutes on 2 CPU cores; the CIFAR-10
defaults are smaller because each fake-quant pass of the VGG costs ~20x the
MLP's):

* calibration: the first ``--calib`` training images (MNIST 2000, CIFAR-10
  1000): the Hessian traces (the first ``--hessian_examples`` of them,
  MNIST 2000, CIFAR-10 500), and tfprec's gains with ``--gains_split
  train``;
* selection: the first ``--select`` test images (2000 on both; with 1000,
  greedy's CIFAR-10 plan over-fitted them and lost 0.65 pp on the report split):
  tfprec's per-class noise gains on the first ``--gains_examples`` of them
  (MNIST 2000, CIFAR-10 1000; ``noise_gains(..., per_class=True)``;
  ``--gains_split selection``, the default: the predictor is made for
  held-out inputs, the margins of a well-trained network's training images
  are far larger), and every plan that needs a measurement (greedy's
  search, tfprec's level search) is chosen on them, against the same
  selection target for both (below);
* report: the next ``--report`` test images (default 0: every test image
  after the selection split, 8000 on both datasets): every accuracy below
  marked "report" is on them, which no search saw.  (A 2000-image report
  split was too noisy to judge a 0.5 pp tolerance: the same CIFAR-10 plan
  measured a 0.70 pp drop on 2000 of these images and 0.03 pp on all
  8000.)

"First" is in the stored order of the test images; ``--split_seed S > 0``
slices a random permutation instead, so another selection / report split
(``benchmarks/peers_splits.py`` repeats the whole comparison over several
and averages the verdicts' figures: one split's selection noise, about
0.3 pp on 2000 CIFAR-10 images, is the size of the tolerance).

Prints ``name: value`` lines, every name prefixed by the network
(``mnist_mlp_`` / ``cifar10_vgg_``; ``#`` lines are comments):

Setup
* <net>_weights: the weights file; <net>_float_select_accuracy_pct,
  <net>_float_report_accuracy_pct: float top-1 accuracy on each split.

(a) cost at equal held-out accuracy: both plans must lose at most
``--tolerance_pp`` = 0.5 percentage points of float accuracy on the REPORT
split for their cost ratio to count.  Both searches choose on the selection
split against one common, stricter target, tolerance - margin: a plan
chosen as the cheapest that passes on the selection split is biased towards
a lucky split (greedy picks among hundreds of measured plans), so both keep
the same safety margin, by default (``--margin_pp -1``) the one-sigma
standard error of a drop equal to the tolerance on the selection split,
100 sqrt(t (1 - t) / n_select) pp with t = tolerance / 100 (0.16 pp for
0.5 pp on 2000 examples); the rule is the same for both methods.
* <net>_selection_margin_pp, <net>_selection_target_pp: the margin and the
  target (pp) both searches meet on the selection split.
* <net>_greedy_plan_cost, <net>_greedy_plan_bits: peers.greedy.greedy_search_plan
  from uniform 8 bits, or from the first uniform plan above 8 bits that
  meets the selection target when the 8-bit one does not (one tensor one
  bit lower per step, kept while the measured drop on the selection split
  holds the selection target): compute cost (FA), B_W/B_A per layer;
  <net>_greedy_start_bits: the start.
* <net>_tfprec_plan_cost, <net>_tfprec_plan_bits, <net>_tfprec_plan_level:
  tfprec's predictor-based plan: the cost-aware plans under the
  label-free expected accuracy drop (``cost_aware_plan(...,
  criterion="predicted", labels=predict.SOFTMAX)``: each possible flip
  weighted by p_y - p_i of the float softmax; ``--criterion mismatch``:
  under the predicted mismatch; ``--criterion drop``: under the predicted
  accuracy drop on the gains' labelled images, ``labels=...``) on a grid of predicted targets t = target * 2^(k/4) around the selection target (as a
  fraction; peers.matched.target_grid, ``--per_octave`` 4, the resolution of
  calibrate's cost-aware grid; ``--grid uniform``: the predictions of the
  uniform plans, ``--per_bit`` per bit, peers.matched.family_grid), the
  cheapest whose drop on the selection split meets the selection target,
  searched outward from the level at the target (``--search
  from_prediction``, default) or by bisection (``--search bisection``);
  both find the same level when the measured drop is monotone in the level.
* <net>_{greedy,tfprec}_select_drop_pp: drop on the selection split (both
  meet the selection target there by construction);
  <net>_{greedy,tfprec}_report_accuracy_pct, _report_drop_pp: on the report
  split.
* <net>_tfprec_over_greedy_cost: the ratio of the two costs (target <= 1.05),
  followed on its line by both report-split drops;
  <net>_cost_comparison_counts: "yes" when both report drops are within the
  tolerance, else "no" and which method missed it (the ratio then does not
  count: the plans are not at equal held-out accuracy).  When only greedy's
  plan misses it (its search over-fitted the selection split), greedy is
  given an oracle instead: its kept path (peers.greedy.path_plans) stopped
  at the cheapest plan whose REPORT-split drop is within the tolerance
  (<net>_greedy_oracle_stop: the round, its drop, cost and bits), and
  <net>_tfprec_over_greedy_oracle_cost is the ratio that counts; the stop
  uses the report labels tfprec never sees, so it can only favour greedy.
  Beside it, like for like: tfprec's grid from its chosen level to the
  cheapest, stopped by the same oracle (<net>_tfprec_oracle_stop), and
  <net>_tfprec_oracle_over_greedy_oracle_cost: the two searches' plan
  families compared at equal held-out accuracy, with the selection split's
  noise taken out of both (on 2000 images the drop of one plan has a
  standard error of 0.3-0.4 pp at these mismatch rates, as large as the
  tolerance).
  The mirror, when tfprec's plan misses the tolerance: its grid from the
  chosen level towards the most precise, stopped at the cheapest level
  whose report-split drop is within it (<net>_tfprec_oracle_stop; an
  oracle in tfprec's favour), against greedy's own plan or, when that
  missed as well, greedy's oracle stop:
  <net>_tfprec_oracle_over_greedy_cost.  So each split has one ratio at
  equal held-out accuracy, whichever search over-fitted its selection
  split (benchmarks/peers_splits.py averages it over splits).
  <net>_tfprec_grid_<k>: tfprec's grid from its chosen level (k = 0) to
  the cheapest, each level's cost and drop on both splits (measured after
  the timing; they show where the selection split's noise stopped it).

(b) time to a plan (the same process, each paying its own tracing)
* <net>_warm_up_seconds: untimed, before both searches: one per-class
  noise-gains pass on 64 images and one fake-quant evaluation of a
  throwaway copy of the model, so the library's first use in the process
  (about 1.7 s on MNIST) is charged to neither search (before, the search
  timed first, tfprec's, paid it for both).
* <net>_greedy_seconds, <net>_greedy_evaluations: the whole greedy search
  (its float pass and every fake-quant evaluation).
* <net>_tfprec_seconds: on a fresh copy of the model (so the gains pass is
  traced anew): the noise-gains pass (per-class data) + planning (the grid
  and the plans the level search asks for) + the confirmation evaluations
  (the float pass of the selection split and the search's fake-quant passes);
  <net>_tfprec_gains_seconds, <net>_tfprec_evaluations: its parts.
* <net>_greedy_over_tfprec_time: the ratio (target >= 10).

(c) accuracy at equal cost budgets: budget_k = fraction f_k of the compute
cost of the uniform plan at greedy's start bits, the first uniform plan
that meets the selection target (``--budget_base start``: 8 bits on the
MNIST MLP, 10 on the CIFAR-10 VGG, whose 8-bit per-tensor weights lose
2 pp; ``uniform8``: always 8 bits) (``--fractions``, default 0.5, 0.4, 0.3,
0.25; the all-2-bit plan costs about 0.19 of the 8-bit one)
* <net>_budget_<k>_full_adders: the budget.
* <net>_budget_<k>_tfprec_report_accuracy_pct: tfprec's plan for the
  budget, the plan with the lowest label-free expected accuracy drop
  (``--budget_criterion softmax``, default; ``mismatch``: the lowest
  predicted mismatch; ``drop``: the lowest predicted accuracy drop on the
  gains' labelled images, which can count on gains that are particular to
  those images) that fits
  (peers.matched.predicted_at_budget: greedy descent and local search under
  the prediction, tfprec.planning.budget.predicted_budget_plan); <net>_budget_<k>_hawq_report_accuracy_pct:
  the HAWQ-v2 plan (peers.hawq.hawq_plan: weights and activations allocated
  by their Hessian traces, ``--samples`` Hutchinson probes, bits 2..16, the
  same cost model); both on the report split, each with its count of
  changed decisions.
* <net>_budget_<k>_{tfprec,hawq}_cost, _bits: each plan's cost and bits.
* <net>_budget_<k>_tfprec_predicted_drop_pp, _tfprec_report_drop_pp (with
  ``--budget_criterion softmax`` or ``drop``): the predicted and the
  report-split accuracy drop.
* <net>_budget_<k>_tfprec_predicted_mismatch: tfprec's prediction for its
  plan (probability); _tfprec_report_mismatch_pct: its measured mismatch
  (changed decisions) on the report split, percent.
* <net>_budget_<k>_report_paired: on the report images, how many only
  tfprec's plan classifies right, how many only HAWQ's, and McNemar's
  exact two-sided p-value (``tfprec.peers.matched.paired_test``): whether
  the accuracy difference is larger than the disagreements explain.
* <net>_budget_<k>_{tfprec,hawq}_heldout_accuracy_pct,
  <net>_budget_<k>_heldout_paired (``--heldout 1`` with a smaller
  ``--report``): the same on every test image outside the selection split.
* <net>_hessian_seconds: the Hessian-trace pass.

Verdicts (one line each, "yes" / "no" and the numbers)
* <net>_verdict_cost: tfprec_over_greedy_cost (or, when greedy's own plan
  missed the tolerance, tfprec_over_greedy_oracle_cost; when tfprec's did,
  tfprec_oracle_over_greedy_cost) <= 1.05, when the comparison counts
  (else "n/a" and why).
* <net>_verdict_cost_like_for_like (only with greedy's oracle stop):
  tfprec_oracle_over_greedy_oracle_cost <= 1.05.
* <net>_verdict_time: greedy_over_tfprec_time >= 10.
* <net>_verdict_hawq: tfprec at least as accurate as HAWQ-v2 on the report
  split at every budget (counts of budgets).
* <net>_verdict_hawq_significant: at how many budgets tfprec's plan is
  significantly less (more) accurate than HAWQ-v2's (McNemar p < 0.05).
* <net>_verdict_hawq_heldout, _heldout_significant (``--heldout 1``): the
  same on every held-out test image.
* total_seconds: the whole run.

Usage: python benchmarks/peers.py [--nets mnist_mlp,cifar10_vgg] [--data_dir DIR]
       python benchmarks/peers.py --budgets_only 1    # (c) alone: MNIST ~2 min,
                                                      # CIFAR-10 ~8 min
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np


HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import common  # noqa: E402  (examples/common.py: imports tfprec first)

import tfprec  # noqa: E402
from tfprec._tf import keras  # noqa: E402
from tfprec.application import data as data_lib  # noqa: E402
from tfprec.errors import UnattainableTargetError  # noqa: E402
from tfprec.peers import greedy, hawq, hessian, matched  # noqa: E402
from tfprec.planning.predict import SOFTMAX  # noqa: E402
from tfprec.planning.rules import uniform_plan  # noqa: E402
from tfprec.quantization import validate as validate_lib  # noqa: E402

#: tfprec's criteria (--criterion, --budget_criterion)
CRITERIA = ("softmax", "mismatch", "drop")
# per-network defaults: calibration, Hessian, selection examples
DEFAULTS = {"mnist_mlp": (2000, 2000, 2000), "cifar10_vgg": (1000, 500, 2000)}
#: tfprec's per-class gains: the first images of the gains split (MNIST: all
#: 2000 selection images, 2 s; CIFAR-10: 1000 of them, the recommended
#: minimum of noise_gains; all 2000 take 107 s, 80 % of tfprec's time).
GAINS_EXAMPLES = {"mnist_mlp": 2000, "cifar10_vgg": 1000}


def bits(plan) -> str:
    return " ".join(f"{l.weight_bits}/{l.act_bits}" for l in plan.layers)


def out(net: str, name: str, value) -> None:
    print(f"{net}_{name}: {value}", flush=True)


def fresh_copy(model):
    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    return m


def criterion_labels(criterion: str, y):
    """The ``labels`` argument of tfprec's predicted plans for a criterion:
    None (mismatch), the gains' labels (drop) or predict.SOFTMAX (the
    label-free expected drop under the float softmax)."""
    return {"mismatch": None, "drop": y, "softmax": SOFTMAX}[criterion]


def split_order(x, y, seed: int):
    """The test images in the order the splits slice them: as stored for
    seed 0 (selection = the first --select images), else a permutation
    drawn with numpy's default_rng(seed) (benchmarks/peers_splits.py
    repeats the comparison over several)."""
    if seed == 0:
        return x, y
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order]


def oracle_stop(plans, rep, meets):
    """The cheapest of ``plans`` whose REPORT-split drop ``meets`` the
    tolerance: an oracle (it reads the report labels), scanned from the
    cheapest plan up, so the first that meets is the cheapest.  Used on
    greedy's kept path when its own plan over-fitted the selection split,
    and, for the like-for-like comparison, on tfprec's level grid from its
    chosen level on.  Returns (index in ``plans``, len(plans), plan, its
    Measured, report evaluations) or None when none meets it."""
    order = sorted(range(len(plans)), key=lambda i: plans[i].cost().total_compute)
    for n, i in enumerate(order, 1):
        m = matched.measure(plans[i], rep)
        if meets(m.accuracy_drop_pp):
            return i, len(plans), plans[i], m, n
    return None


def stop_text(where: str, m, plan, n_ev: int) -> str:
    """One line for an oracle stop: where it stopped, its report-split
    drop (pp), cost (full adders), bits and the report evaluations it took."""
    return (f"{where} (report-split drop {m.accuracy_drop_pp:.2f} pp, cost "
            f"{plan.cost().total_compute:.6g}, bits {bits(plan)}; {n_ev} report "
            "evaluations)")


def run_net(net: str, a) -> None:
    """Runs (a), (b) and (c) on one network, printing every line (the
    output benchmarks/peers_splits.py reads)."""
    d_cal, d_hess, d_sel = DEFAULTS[net]
    n_cal = a.calib or d_cal
    n_hess = min(a.hessian_examples or d_hess, n_cal)
    n_sel = a.select or d_sel
    kw, dataset, flatten = common.REFERENCE_NETS[net]
    ds = data_lib.load_dataset(dataset, data_lib.resolve_data_dir(a.data_dir),
                               flatten=flatten)
    model = common.load_reference(net, a.weights_dir)
    n_rep = ds.num_test - n_sel if a.report == 0 else min(a.report, ds.num_test - n_sel)
    xc, yc = ds.x_train[:n_cal], ds.y_train[:n_cal]
    x_test, y_test = split_order(ds.x_test, ds.y_test, a.split_seed)
    xs, ys = x_test[:n_sel], y_test[:n_sel]
    xr, yr = x_test[n_sel:n_sel + n_rep], y_test[n_sel:n_sel + n_rep]
    print(f"# {net}: {n_cal} calibration ({n_hess} for the Hessian), {n_sel} "
          f"selection, {n_rep} report examples (--split_seed {a.split_seed})",
          flush=True)
    out(net, "weights", os.path.relpath(common.reference_path(net, a.weights_dir)))
    rep = matched.report_evaluator(model, xr, yr)      # also warms TensorFlow up
    sel_float = matched.report_evaluator(model, xs, ys).float_accuracy
    out(net, "float_select_accuracy_pct", f"{100 * sel_float:.2f}")
    out(net, "float_report_accuracy_pct", f"{100 * rep.float_accuracy:.2f}")
    margin = matched.selection_margin_pp(a.tolerance_pp, len(xs), a.margin_pp)
    sel_tol = a.tolerance_pp - margin
    if sel_tol < 0:
        sys.exit(f"peers.py: the selection margin {margin:g} pp (--margin_pp "
                 f"{a.margin_pp:g}, --select {len(xs)}) is larger than "
                 f"--tolerance_pp {a.tolerance_pp:g}")
    out(net, "selection_margin_pp", f"{margin:.3f}")
    out(net, "selection_target_pp", f"{sel_tol:.3f}")

    xg, yg = (xs, ys) if a.gains_split == "selection" else (xc, yc)
    n_g = a.gains_examples or GAINS_EXAMPLES[net]
    xg, yg = xg[:n_g], yg[:n_g]
    oracle_note = ""
    ratio_like = None
    if a.budgets_only:
        # (c) alone: the gains, and greedy's start bits (the first uniform
        # plan from 8 bits up that meets the selection target), no searches
        gains = tfprec.noise_gains(model, xg, per_class=True)
        ev = matched.selection_evaluator(model, xs, ys, sel_tol)
        start_bits = next((b for b in range(8, 17)
                           if ev.meets(ev.measure(uniform_plan(gains, bits=b)))), None)
        if start_bits is None:
            sys.exit(f"peers.py: {net}: even the uniform 16-bit plan misses the "
                     "selection target")
        ratio_cost = ratio_time = None
        cost_note = "--budgets_only 1"
    else:
        # warm-up, untimed: the process's first noise-gains pass and first
        # fake-quant build (library first use: about 1.7 s on MNIST, which
        # the search timed first used to pay for both) on a throwaway copy;
        # each timed search still traces its own models
        t0 = time.perf_counter()
        warm = fresh_copy(model)
        validate_lib.quant_decisions(
            warm, uniform_plan(tfprec.noise_gains(warm, xs[:64], per_class=True), bits=8),
            xs[:64])
        out(net, "warm_up_seconds", f"{time.perf_counter() - t0:.2f}")
        del warm
        # ------------------------------------------- (b) tfprec's time to a plan
        print(f"# {net}: tfprec, predictor-based plan within {sel_tol:.3f} pp "
              "on the selection split", flush=True)
        fresh = fresh_copy(model)
        t0, c0 = time.perf_counter(), time.process_time()
        out(net, "tfprec_gains_examples", len(xg))
        gains = tfprec.noise_gains(fresh, xg, per_class=True)
        t_gains = time.perf_counter() - t0
        labels = criterion_labels(a.criterion, yg)
        if a.grid == "target":
            grid = matched.target_grid(gains, sel_tol / 100.0, labels=labels,
                                       per_octave=a.per_octave)
            start = grid.start
        else:
            grid = matched.family_grid(gains, "cost_aware_predicted", per_bit=a.per_bit,
                                       labels=labels)
            # the cheapest level whose prediction (accuracy drop, or mismatch,
            # which is at least the drop) is at most the selection target
            start = grid.index_at(sel_tol / 100.0)
        ev = matched.selection_evaluator(fresh, xs, ys, sel_tol)
        chosen = matched.select_level(grid, ev, start if a.search == "from_prediction"
                                      else None)
        t_tfprec = time.perf_counter() - t0
        c_tfprec = time.process_time() - c0
        n_tfprec = ev.passes

        # ------------------------------------------------------ greedy search
        print(f"# {net}: greedy search within {sel_tol:.3f} pp on the selection "
              "split", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        g_evals = 0
        for start_bits in range(8, 17):       # the usual 8-bit start, else the
            try:                              # first uniform start that meets it
                gp, n = greedy.greedy_search_plan(model, gains, xs, ys, tolerance_pp=sel_tol,
                                                  start_bits=start_bits)
                g_evals += n
                break
            except UnattainableTargetError:
                g_evals += 1
        else:
            sys.exit(f"peers.py: {net}: even the uniform 16-bit plan misses the selection "
                     "target")
        t_greedy = time.perf_counter() - t0
        c_greedy = time.process_time() - c0

        # ------------------------------------------------ (a) cost, report split
        gc = gp.cost().total_compute
        gm = matched.measure(gp, rep)
        out(net, "greedy_start_bits", start_bits)
        out(net, "greedy_plan_cost", f"{gc:.6g}")
        out(net, "greedy_plan_bits", bits(gp))
        out(net, "greedy_select_drop_pp",
            f"{100 * (gp.info['float_accuracy'] - gp.info['quant_accuracy']):.2f}")
        out(net, "greedy_report_accuracy_pct", f"{100 * gm.quant_accuracy:.2f}")
        out(net, "greedy_report_drop_pp", f"{gm.accuracy_drop_pp:.2f}")
        ratio_cost, cost_note = None, "tfprec found no plan"
        if chosen.met:
            tp = chosen.plan
            tc = tp.cost().total_compute
            tm = matched.measure(tp, rep)
            ratio_cost = tc / gc
            out(net, "tfprec_plan_cost", f"{tc:.6g}")
            out(net, "tfprec_plan_bits", bits(tp))
            out(net, "tfprec_plan_level", chosen.label)
            out(net, "tfprec_select_drop_pp", f"{chosen.accuracy_drop_pp:.2f}")
            out(net, "tfprec_report_accuracy_pct", f"{100 * tm.quant_accuracy:.2f}")
            out(net, "tfprec_report_drop_pp", f"{tm.accuracy_drop_pp:.2f}")
            out(net, "tfprec_over_greedy_cost",
                f"{ratio_cost:.3f} (report-split drops: tfprec "
                f"{tm.accuracy_drop_pp:.2f} pp, greedy {gm.accuracy_drop_pp:.2f} pp; "
                f"tolerance {a.tolerance_pp:g} pp)")
            tol_ok = lambda d: d <= a.tolerance_pp + 1e-9  # noqa: E731
            stop = (oracle_stop(greedy.path_plans(gains, gp), rep, tol_ok)
                    if not tol_ok(gm.accuracy_drop_pp) and tol_ok(tm.accuracy_drop_pp)
                    else None)
            missed = [f"{who} {d:.2f} pp" for who, d in
                      (("greedy", gm.accuracy_drop_pp), ("tfprec", tm.accuracy_drop_pp))
                      if not tol_ok(d)]
            mirror = None
            if not tol_ok(tm.accuracy_drop_pp):      # (so stop is None)
                # the mirror of greedy's oracle: tfprec's grid from its chosen
                # level towards the most precise, stopped by the report split
                # (and greedy's path too when its plan missed as well)
                more = list(range(grid.levels.index(chosen.level)))
                t_stop = oracle_stop([grid.plan(k) for k in more], rep, tol_ok)
                g_stop = (oracle_stop(greedy.path_plans(gains, gp), rep, tol_ok)
                          if not tol_ok(gm.accuracy_drop_pp) else None)
                if t_stop is not None and (g_stop is not None
                                           or tol_ok(gm.accuracy_drop_pp)):
                    mirror = t_stop, g_stop
            if stop is not None:
                i, n_path, op, om, n_ev = stop
                oc = op.cost().total_compute
                ratio_cost = tc / oc
                out(net, "greedy_oracle_stop",
                    stop_text(f"round {i} of {n_path - 1}", om, op, n_ev))
                # like for like: tfprec's grid, from its chosen level to the
                # cheapest, stopped by the same oracle (its chosen plan meets)
                idx = list(range(grid.levels.index(chosen.level), len(grid.levels)))
                j, _, sp, sm, n_ev = oracle_stop([grid.plan(k) for k in idx], rep, tol_ok)
                ratio_like = sp.cost().total_compute / oc
                out(net, "tfprec_oracle_stop",
                    stop_text(f"level {grid.labels[idx[j]]}", sm, sp, n_ev))
                # the grid on both splits, untimed: why the selection stopped
                for k in idx:
                    p = grid.plan(k)
                    out(net, f"tfprec_grid_{k - idx[0]}",
                        f"{grid.labels[k]}: cost {p.cost().total_compute:.6g}, drop "
                        f"{ev.accuracy_drop_pp(ev.measure(p)):.2f} pp on the selection "
                        f"split, {matched.measure(p, rep).accuracy_drop_pp:.2f} pp on "
                        "the report split")
                out(net, "tfprec_oracle_over_greedy_oracle_cost",
                    f"{ratio_like:.3f} (both searches stopped by the report split: "
                    "their plans at equal held-out accuracy, like for like)")
                out(net, "tfprec_over_greedy_oracle_cost",
                    f"{ratio_cost:.3f} (greedy stopped by the report split: an "
                    "oracle in greedy's favour)")
                oracle_note = "; greedy's path stopped by the report split"
                out(net, "cost_comparison_counts",
                    f"yes, against greedy stopped by the report split (its own "
                    f"plan lost {gm.accuracy_drop_pp:.2f} pp there)")
            elif mirror is not None:
                (j, _, sp, sm, n_ev), g_stop = mirror
                out(net, "tfprec_oracle_stop",
                    stop_text(f"level {grid.labels[more[j]]}", sm, sp, n_ev))
                oc = gc
                if g_stop is not None:
                    i, n_path, op, om, n_ev = g_stop
                    oc = op.cost().total_compute
                    out(net, "greedy_oracle_stop",
                        stop_text(f"round {i} of {n_path - 1}", om, op, n_ev))
                ratio_cost = sp.cost().total_compute / oc
                oracle_note = ("; tfprec's grid" + (" and greedy's path" if g_stop
                                                    else "")
                               + " stopped by the report split")
                out(net, "tfprec_oracle_over_greedy_cost",
                    f"{ratio_cost:.3f} (" + oracle_note[2:] + ": an oracle in "
                    "tfprec's favour)")
                out(net, "cost_comparison_counts",
                    f"yes, against tfprec stopped by the report split (its own "
                    f"plan lost {tm.accuracy_drop_pp:.2f} pp there)")
            elif missed:
                cost_note = (f"not at equal held-out accuracy: report-split drop over "
                             f"{a.tolerance_pp:g} pp for " + ", ".join(missed)
                             + ", and no plan on its path meets it")
                out(net, "cost_comparison_counts", f"no ({cost_note})")
                ratio_cost = None
            else:
                out(net, "cost_comparison_counts",
                    f"yes (both report-split drops <= {a.tolerance_pp:g} pp)")
        else:
            out(net, "tfprec_plan_not_met", chosen.note)

        # ---------------------------------------------------------- (b) times
        ratio_time = t_greedy / t_tfprec
        out(net, "greedy_seconds", f"{t_greedy:.2f}")
        out(net, "greedy_evaluations", g_evals)
        out(net, "tfprec_seconds", f"{t_tfprec:.2f}")
        out(net, "tfprec_gains_seconds", f"{t_gains:.2f}")
        out(net, "tfprec_evaluations", n_tfprec)
        out(net, "greedy_over_tfprec_time", f"{ratio_time:.1f}")
        out(net, "greedy_over_tfprec_cpu_time", f"{c_greedy / c_tfprec:.1f}")

    # ------------------------------------------------ (c) equal budgets
    print(f"# {net}: equal compute budgets, tfprec (lowest prediction) "
          "vs HAWQ-v2; report-split accuracy", flush=True)
    t0 = time.perf_counter()
    traces = hessian.hessian_trace_sensitivity(model, xc[:n_hess], yc[:n_hess],
                                               num_samples=a.samples)
    out(net, "hessian_seconds", f"{time.perf_counter() - t0:.2f}")
    base_bits = start_bits if a.budget_base == "start" else 8
    u8 = uniform_plan(gains, bits=base_bits).cost().total_compute
    out(net, "budget_base_bits", base_bits)
    fracs = [float(s) for s in a.fractions.split(",")]
    # --heldout 1 with a smaller --report: every test image outside the
    # selection split, a second, larger look at the same plans
    held = (matched.report_evaluator(model, x_test[n_sel:], y_test[n_sel:])
            if a.heldout and n_sel + n_rep < ds.num_test else None)
    looks = [("report", rep)] + ([("heldout", held)] if held is not None else [])
    wins = {what: 0 for what, _ in looks}
    worse_sig = {what: 0 for what, _ in looks}
    better_sig = {what: 0 for what, _ in looks}
    for k, frac in enumerate(fracs):
        budget = frac * u8
        tp = matched.predicted_at_budget(
            gains, budget, labels=criterion_labels(a.budget_criterion, yg))
        hp = hawq.hawq_plan(model, gains, traces, budget)
        for what, ev_ in looks:
            dec = {who: validate_lib.quant_decisions(model, p, ev_.x, ev_.batch_size)
                   for who, p in (("tfprec", tp), ("hawq", hp))}
            acc = {who: float(np.mean(d == ev_.y)) for who, d in dec.items()}
            wins[what] += int(acc["tfprec"] >= acc["hawq"])
            for who, d in dec.items():
                out(net, f"budget_{k}_{who}_{what}_accuracy_pct",
                    f"{100 * acc[who]:.2f} ({int(np.sum(d != ev_.fdec))} of {ev_.n} "
                    "decisions changed)")
            pt = matched.paired_test(dec["tfprec"], dec["hawq"], ev_.y)
            sig = pt.p_value < 0.05
            worse_sig[what] += int(sig and pt.only_b > pt.only_a)
            better_sig[what] += int(sig and pt.only_a > pt.only_b)
            out(net, f"budget_{k}_{what}_paired",
                f"right only under tfprec {pt.only_a}, only under HAWQ {pt.only_b}: "
                f"McNemar two-sided p = {pt.p_value:.3g}")
            if what == "report":      # tfprec's drop and mismatch there, pp / %
                t_drop = 100 * (ev_.float_accuracy - acc["tfprec"])
                t_mis = 100 * float(np.mean(dec["tfprec"] != ev_.fdec))
        out(net, f"budget_{k}_fraction_of_uniform{base_bits}", f"{frac:g}")
        out(net, f"budget_{k}_full_adders", f"{budget:.6g}")
        out(net, f"budget_{k}_tfprec_cost", f"{tp.cost().total_compute:.6g}")
        out(net, f"budget_{k}_hawq_cost", f"{hp.cost().total_compute:.6g}")
        out(net, f"budget_{k}_tfprec_bits", bits(tp))
        out(net, f"budget_{k}_hawq_bits", bits(hp))
        out(net, f"budget_{k}_tfprec_predicted_mismatch",
            f"{tp.info['predicted_mismatch']:.4g}")
        if "predicted_accuracy_drop" in tp.info:
            out(net, f"budget_{k}_tfprec_predicted_drop_pp",
                f"{100 * tp.info['predicted_accuracy_drop']:.2f}")
            out(net, f"budget_{k}_tfprec_report_drop_pp", f"{t_drop:.2f}")
        out(net, f"budget_{k}_tfprec_report_mismatch_pct",
            f"{t_mis:.2f}")

    # ------------------------------------------------------------ verdicts
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    out(net, "verdict_cost",
        f"n/a ({cost_note})" if ratio_cost is None else
        f"{yes(ratio_cost <= 1.05)} (tfprec/greedy cost {ratio_cost:.3f}, target "
        f"<= 1.05{oracle_note})")
    if ratio_like is not None:
        out(net, "verdict_cost_like_for_like",
            f"{yes(ratio_like <= 1.05)} (both stopped by the report split: "
            f"tfprec/greedy cost {ratio_like:.3f}, target <= 1.05)")
    out(net, "verdict_time", "n/a (--budgets_only 1)" if ratio_time is None else
        f"{yes(ratio_time >= 10)} (greedy/tfprec time {ratio_time:.1f}, target >= 10)")
    for what, ev_ in looks:
        where = ("report split" if what == "report" else
                 f"all {ev_.n} test images outside the selection split")
        out(net, f"verdict_hawq{'' if what == 'report' else '_heldout'}",
            f"{yes(wins[what] == len(fracs))} (tfprec at least as accurate at "
            f"{wins[what]} of {len(fracs)} budgets, {where})")
        out(net, f"verdict_hawq{'' if what == 'report' else '_heldout'}_significant",
            f"tfprec significantly less accurate (McNemar p < 0.05, {where}) at "
            f"{worse_sig[what]} of {len(fracs)} budgets, significantly more accurate "
            f"at {better_sig[what]}")


def parser() -> argparse.ArgumentParser:
    """peers.py's flags (benchmarks/peers_splits.py passes its other flags on)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="mnist_mlp,cifar10_vgg",
                    help="comma-separated: mnist_mlp, cifar10_vgg")
    ap.add_argument("--data_dir", default=None,
                    help="folder with mnist.npz / cifar10_jpeg75.npz (default "
                         "$TFPREC_DATA_DIR, then ../shared/data)")
    ap.add_argument("--weights_dir", default="",
                    help="folder of <net>.h5 ('' : examples/weights)")
    ap.add_argument("--calib", type=int, default=0,
                    help="calibration (training) examples; 0: MNIST 2000, CIFAR-10 1000")
    ap.add_argument("--hessian_examples", type=int, default=0,
                    help="examples of the Hessian pass; 0: MNIST 2000, CIFAR-10 500")
    ap.add_argument("--select", type=int, default=0,
                    help="selection test examples; 0: 2000 (a 1000-image split lets greedy over-fit: its CIFAR-10 plan lost 0.65 pp on the report split)")
    ap.add_argument("--report", type=int, default=0,
                    help="report test examples (after the selection split); 0: "
                         "every one (8000 on both datasets)")
    ap.add_argument("--samples", type=int, default=32, help="Hutchinson probes")
    ap.add_argument("--tolerance_pp", type=float, default=0.5,
                    help="accuracy drop allowed on the report split, pp")
    ap.add_argument("--margin_pp", type=float, default=-1.0,
                    help="safety margin both searches keep on the selection split "
                         "(target tolerance - margin), pp; < 0: the one-sigma "
                         "standard error of a drop equal to the tolerance there")
    ap.add_argument("--gains_split", choices=("selection", "train"),
                    default="selection",
                    help="images of tfprec's per-class noise gains: the selection "
                         "split (default; the predictor is made for held-out "
                         "inputs, and greedy searches on the same images) or the "
                         "first --calib training images")
    ap.add_argument("--criterion", choices=CRITERIA, default="softmax",
                    help="what tfprec's plans are made under: the label-free "
                         "expected accuracy drop under the float model's softmax "
                         "(default), the predicted mismatch (label-free), or the "
                         "predicted accuracy drop from the labels of the gains' "
                         "images (the right answers expected to be lost)")
    ap.add_argument("--budget_criterion", choices=CRITERIA, default="softmax",
                    help="what tfprec's budget plans minimize (as --criterion)")
    ap.add_argument("--search", choices=("from_prediction", "bisection"),
                    default="from_prediction",
                    help="tfprec's level search on the selection split: outward "
                         "from the level whose predicted mismatch meets the "
                         "selection target (default), or bisection of the grid; "
                         "both find the same level when the drop is monotone")
    ap.add_argument("--grid", choices=("target", "uniform"), default="target",
                    help="tfprec's levels: predicted targets around the selection "
                         "target, --per_octave per octave (peers.matched.target_grid; "
                         "default), or the predictions of the uniform plans, "
                         "--per_bit per bit (peers.matched.family_grid)")
    ap.add_argument("--per_octave", type=int, default=4,
                    help="target-grid points per octave of the prediction")
    ap.add_argument("--per_bit", type=int, default=2,
                    help="uniform-grid points per bit of the uniform plans")
    ap.add_argument("--gains_examples", type=int, default=0,
                    help="images of the gains split for tfprec's per-class gains; "
                         "0: MNIST 2000, CIFAR-10 1000")
    ap.add_argument("--budgets_only", type=int, default=0,
                    help="1: only (c), the equal-budget comparison with HAWQ-v2 "
                         "(no greedy search, no timing)")
    ap.add_argument("--heldout", type=int, default=0,
                    help="1: also measure the budget plans on every test image "
                         "outside the selection split (report split included)")
    ap.add_argument("--fractions", default="0.5,0.4,0.3,0.25",
                    help="budgets as fractions of the compute cost of the "
                         "--budget_base uniform plan")
    ap.add_argument("--budget_base", choices=("start", "uniform8"), default="start",
                    help="start: the uniform plan at greedy's start bits (the "
                         "first that meets the selection target); uniform8: 8 bits")
    ap.add_argument("--split_seed", type=int, default=0,
                    help="0: the selection split is the first --select test images; "
                         "S > 0: the first of a random permutation of the test "
                         "images (numpy default_rng(S))")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    """Parsed and checked flags (errors name the flag)."""
    ap = parser()
    a = ap.parse_args(argv)
    nets = [n.strip() for n in a.nets.split(",") if n.strip()]
    for n in nets:
        if n not in DEFAULTS:
            ap.error(f"--nets: unknown network {n!r}; use mnist_mlp, cifar10_vgg")
    for flag in ("calib", "hessian_examples", "select", "report", "gains_examples"):
        if getattr(a, flag) < 0:                    # 0 means the default
            ap.error(f"--{flag} must be a count >= 0 (0: the default), got "
                     f"{getattr(a, flag)}")
    if not (a.tolerance_pp >= 0 and math.isfinite(a.tolerance_pp)):
        ap.error(f"--tolerance_pp must be a finite number >= 0, got {a.tolerance_pp}")
    if not math.isfinite(a.margin_pp) or a.margin_pp > a.tolerance_pp:
        ap.error(f"--margin_pp must be finite and at most --tolerance_pp "
                 f"({a.tolerance_pp:g}), got {a.margin_pp}")
    if a.split_seed < 0:
        ap.error(f"--split_seed must be >= 0, got {a.split_seed}")
    a.nets = nets
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    t_all = time.perf_counter()
    for n in a.nets:
        run_net(n, a)
    print(f"total_seconds: {time.perf_counter() - t_all:.1f}")


if __name__ == "__main__":
    main()
