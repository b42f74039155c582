"""Peers, side by side: tfprec against Hessian-trace (HAWQ-v2) and greedy search.

One run, one network, one data set: the paper's MNIST MLP 784-512-512-512-10
(clip(0, 2) activations, weights in [-1, 1]) trained with
``tfprec.models.cached_trained`` (3 epochs, Adam, seed 0; weights cached
under benchmarks/.cache) on MNIST from ``--data_dir`` / ``$TFPREC_DATA_DIR``
(default $TFPREC_DATA_DIR, then ../shared/data).  Sensitivities (tfprec's noise gains and the
Hessian traces) use the first 2000 training examples; plans are evaluated on
the first 2000 test examples ("eval set"); the other 8000 test examples are a
hold-out the searches never saw.  Every plan is a tfprec PrecisionPlan
evaluated by the same fake-quant model (tfprec.validate.quant_decisions) and
priced by the same cost model (METHOD.md section 4, full adders per example).

Prints ``name: value`` lines (``#`` lines are comments):

Setup
* float_accuracy_pct: float top-1 accuracy on the eval set, percent.
* hutchinson_samples: Rademacher probes per batch of the Hessian pass.

Sensitivity pass cost (2000 training examples; both passes warmed up first,
so these are steady-state times without tf.function tracing)
* gains_pass_seconds: tfprec.noise_gains (exact, all 9 wrong classes),
  median of 3 runs.
* hessian_pass_seconds: peers.hessian.hessian_trace_sensitivity on the same
  examples with their labels (weight and activation traces, joint
  Rademacher probes, one forward-over-backward HVP per probe and batch of
  500; probes="per_block", HAWQ-v2's per-block form, needs 2 x 4 = 8 HVPs
  per probe instead of 1).
* hessian_over_gains_time: hessian_pass_seconds / gains_pass_seconds;
  hessian_over_gains_cpu_time: the same ratio of process CPU times (less
  sensitive to other load on the machine).
* gains_first_call_seconds: the first gains pass of the process (tracing
  and TensorFlow's one-time start-up included); hessian_first_call_seconds:
  the Hessian engine's tracing call (one probe, 500 examples) + the
  steady-state pass.
* hessian_trace_max_rel_stderr: largest Monte-Carlo standard error of a
  weight trace relative to the trace (estimate quality at this sample count).

Same cost budget (budget_<k> = fraction f_k of the compute cost of the
uniform 8-bit plan, f = 0.5, 0.4, 0.3, 0.25, 0.22; the all-2-bit plan costs
0.19 of it)
* budget_<k>_fraction_of_uniform8: f_k.
* budget_<k>_full_adders: the budget, 1-bit full adders per example.
* budget_<k>_tfprec_accuracy_pct: eval-set fake-quant accuracy of tfprec's
  plan for the budget (the smallest-bound cost_aware plan that fits,
  planning.budget_lib.cost_aware_at_budget).
* budget_<k>_hawq_accuracy_pct: same for the HAWQ-v2-style plan
  (peers.hawq.hawq_plan: weights and activations allocated by their Hessian
  traces, same bit range 2..16 and cost model).
* budget_<k>_tfprec_cost / _hawq_cost: compute cost of each plan (both fit).
* budget_<k>_tfprec_bits / _hawq_bits: B_W/B_A per layer fc1 fc2 fc3 logits.
* budget_<k>_tfprec_bound / _hawq_bound: tfprec's analytic mismatch bound
  of each plan (probability; can exceed 1).
* budget_<k>_plans_identical: 1 if both methods chose the same bits.

Time to a plan within 0.1 pp of float accuracy (eval set; both measured in
the same, already warm process, each paying its own tracing)
* greedy_search_seconds, greedy_evaluations: peers.greedy.greedy_search_plan
  from uniform 8 bits, wall time and fake-quant evaluations (each
  evaluation builds the fake-quant model and runs the eval set).
* greedy_evaluations_if_all_candidates: evaluations a greedy search that
  measures every candidate of every round would need (same result).
* tfprec_time_to_plan_seconds: on a fresh copy of the model (so the gains
  pass is traced anew): noise_gains on the 2000 training examples + the
  time of planning.budget_lib.bisect_target_plan (cost_aware plans on a grid of bound
  targets, 4 per decade from 1e-3 to the all-2-bit plan's bound, bisected
  on measured accuracy; plan construction included).
* tfprec_evaluations: fake-quant evaluations the bisection used.
* greedy_over_tfprec_time: greedy_search_seconds / tfprec_time_to_plan_seconds
  (the goal is >= 10); greedy_over_tfprec_cpu_time: the same ratio of
  process CPU times (less sensitive to other load on the machine).
* tfprec_calibrate_*: tfprec's own path on another fresh copy:
  noise_gains(per_example=True) + tfprec.calibrate(max_accuracy_drop, the
  cost-aware family shaped by the per-example bound): time, evaluations,
  greedy_over_tfprec_calibrate_time, the plan's cost against greedy's, and
  its accuracy on the eval and held-out sets.
* greedy_all_candidates_seconds_estimate: greedy_search_seconds scaled by
  greedy_evaluations_if_all_candidates / greedy_evaluations (estimated, not
  run: the time of a greedy search that measures every candidate each
  round); greedy_all_candidates_over_tfprec_time is its ratio to tfprec.
* greedy_plan_cost, tfprec_plan_cost: compute cost of both final plans
  (full adders per example); tfprec_over_greedy_cost is their ratio.
* greedy_plan_bits, tfprec_plan_bits: B_W/B_A per layer.
* greedy_plan_accuracy_pct, tfprec_plan_accuracy_pct: eval-set accuracy
  (both within 0.1 pp of float by construction).
* tfprec_budget_bisection_seconds / _evaluations / _plan_cost /
  _plan_bits / _plan_accuracy_pct: the alternative confirmation,
  planning.budget_lib.bisect_budget_plan (tfprec's plan for a compute budget, the
  budget bisected geometrically on measured accuracy to within 5 %), time
  including the same gains pass; tfprec_budget_bisection_not_met (the
  reason) instead when even its upper plan misses the tolerance.
* greedy_plan_holdout_accuracy_pct, tfprec_plan_holdout_accuracy_pct,
  float_holdout_accuracy_pct: accuracy on the 8000 hold-out test examples.
* total_seconds: the whole run.

Usage: python benchmarks/peers.py [--data_dir DIR] [--samples 32]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import tfprec
from tfprec.peers import greedy, hawq, hessian
from tfprec.planning import budget as budget_lib
from tfprec.application import models
from tfprec.quantization import validate as V
from tfprec.application import data as data_lib
from tfprec.application.data import load_dataset
from tfprec._tf import keras
from tfprec.planning.rules import uniform_plan
from tfprec.errors import UnattainableTargetError

HERE = os.path.dirname(os.path.abspath(__file__))


def bits(plan) -> str:
    return " ".join(f"{l.weight_bits}/{l.act_bits}" for l in plan.layers)


def acc_pct(model, plan, x, y) -> float:
    return 100.0 * float(np.mean(V.quant_decisions(model, plan, x) == y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data_dir", default=None,
                    help="folder with mnist.npz (default $TFPREC_DATA_DIR, then "
                         "../shared/data next to the repository)")
    ap.add_argument("--cache_dir", default=os.path.join(HERE, ".cache"))
    ap.add_argument("--calib", type=int, default=2000)
    ap.add_argument("--eval", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--tolerance_pp", type=float, default=0.1)
    ap.add_argument("--fractions", default="0.5,0.4,0.3,0.25,0.22",
                    help="budgets as fractions of the uniform 8-bit compute cost")
    a = ap.parse_args()
    t_all = time.perf_counter()
    data_dir = data_lib.resolve_data_dir(a.data_dir)
    ds = load_dataset("mnist", data_dir=data_dir, flatten=True)
    model = models.cached_trained("mnist_mlp", ds, epochs=a.epochs,
                                  cache_dir=a.cache_dir)
    xc, yc = ds.x_train[:a.calib], ds.y_train[:a.calib]
    xe, ye = ds.x_test[:a.eval], ds.y_test[:a.eval]
    xh, yh = ds.x_test[a.eval:], ds.y_test[a.eval:]
    fe = V.float_decisions(model, xe)            # also warms TensorFlow up
    print(f"float_accuracy_pct: {100 * np.mean(fe == ye):.2f}")
    print(f"hutchinson_samples: {a.samples}")

    # ---------------------------------------------- sensitivity passes
    print("# sensitivity passes over", len(xc), "training examples")
    t = time.perf_counter()
    gains = tfprec.noise_gains(model, xc)
    t_gains_first = time.perf_counter() - t
    runs, cpu_runs = [], []
    for _ in range(3):                          # steady state: median of 3
        t, c = time.perf_counter(), time.process_time()
        gains = tfprec.noise_gains(model, xc)
        runs.append(time.perf_counter() - t)
        cpu_runs.append(time.process_time() - c)
    t_gains, c_gains = float(np.median(runs)), float(np.median(cpu_runs))
    t = time.perf_counter()
    hessian.hessian_trace_sensitivity(model, xc[:500], yc[:500], num_samples=1)
    t_hess_trace = time.perf_counter() - t     # tracing + one probe
    t, c = time.perf_counter(), time.process_time()
    traces = hessian.hessian_trace_sensitivity(model, xc, yc, num_samples=a.samples)
    t_hess = time.perf_counter() - t
    c_hess = time.process_time() - c
    print(f"gains_pass_seconds: {t_gains:.3f}")
    print(f"hessian_pass_seconds: {t_hess:.3f}")
    print(f"hessian_over_gains_time: {t_hess / t_gains:.1f}")
    print(f"hessian_over_gains_cpu_time: {c_hess / c_gains:.1f}")
    print(f"gains_first_call_seconds: {t_gains_first:.3f}")
    # first call = tracing + one probe + the steady-state full pass
    print(f"hessian_first_call_seconds: {t_hess_trace + t_hess:.3f}")
    rel = max(traces.weight_stderr[n] / abs(traces[n]) for n in traces)
    print(f"hessian_trace_max_rel_stderr: {rel:.3f}")

    # ----------------------------------------------------- same budget
    print("# same compute budget: tfprec cost_aware vs HAWQ-v2 style "
          "(eval set accuracy, percent)")
    u8 = uniform_plan(gains, bits=8).cost().total_compute
    for k, frac in enumerate(float(s) for s in a.fractions.split(",")):
        budget = frac * u8
        tp = budget_lib.cost_aware_at_budget(gains, budget)
        hp = hawq.hawq_plan(model, gains, traces, budget)
        print(f"budget_{k}_fraction_of_uniform8: {frac:g}")
        print(f"budget_{k}_full_adders: {budget:.6g}")
        print(f"budget_{k}_tfprec_accuracy_pct: {acc_pct(model, tp, xe, ye):.2f}")
        print(f"budget_{k}_hawq_accuracy_pct: {acc_pct(model, hp, xe, ye):.2f}")
        print(f"budget_{k}_tfprec_cost: {tp.cost().total_compute:.6g}")
        print(f"budget_{k}_hawq_cost: {hp.cost().total_compute:.6g}")
        print(f"budget_{k}_tfprec_bits: {bits(tp)}")
        print(f"budget_{k}_hawq_bits: {bits(hp)}")
        print(f"budget_{k}_tfprec_bound: {tp.bound():.3g}")
        print(f"budget_{k}_hawq_bound: {hp.bound():.3g}")
        print(f"budget_{k}_plans_identical: {int(bits(tp) == bits(hp))}")

    # ------------------------------------------------- time to a plan
    print(f"# time to a plan within {a.tolerance_pp} pp of float accuracy")
    t, c = time.perf_counter(), time.process_time()
    gp, g_evals = greedy.greedy_search_plan(model, gains, xe, ye,
                                            tolerance_pp=a.tolerance_pp)
    t_greedy = time.perf_counter() - t
    c_greedy = time.process_time() - c
    fresh = keras.models.clone_model(model)
    fresh.set_weights(model.get_weights())
    t, c = time.perf_counter(), time.process_time()
    g2 = tfprec.noise_gains(fresh, xc)
    t_g2 = time.perf_counter() - t
    tp, t_evals = budget_lib.bisect_target_plan(fresh, g2, xe, ye,
                                                tolerance_pp=a.tolerance_pp)
    t_tfprec = time.perf_counter() - t
    c_tfprec = time.process_time() - c
    t = time.perf_counter()
    try:
        tp2, t_evals2 = budget_lib.bisect_budget_plan(fresh, g2, xe, ye,
                                                      tolerance_pp=a.tolerance_pp)
    except UnattainableTargetError as e:     # its upper plan misses the tolerance
        tp2, t_evals2, why2 = None, None, str(e)
    t_tfprec2 = t_g2 + time.perf_counter() - t
    print(f"greedy_search_seconds: {t_greedy:.2f}")
    print(f"greedy_evaluations: {g_evals}")
    print(f"greedy_evaluations_if_all_candidates: "
          f"{gp.info['evaluations_if_all_candidates']}")
    print(f"tfprec_time_to_plan_seconds: {t_tfprec:.2f}")
    print(f"tfprec_evaluations: {t_evals}")
    print(f"greedy_over_tfprec_time: {t_greedy / t_tfprec:.1f}")
    print(f"greedy_over_tfprec_cpu_time: {c_greedy / c_tfprec:.1f}")
    t_all_c = t_greedy * gp.info["evaluations_if_all_candidates"] / g_evals
    print(f"greedy_all_candidates_seconds_estimate: {t_all_c:.1f}")
    print(f"greedy_all_candidates_over_tfprec_time: {t_all_c / t_tfprec:.1f}")
    gc, tc = gp.cost().total_compute, tp.cost().total_compute
    print(f"greedy_plan_cost: {gc:.6g}")
    print(f"tfprec_plan_cost: {tc:.6g}")
    print(f"tfprec_over_greedy_cost: {tc / gc:.3f}")
    print(f"greedy_plan_bits: {bits(gp)}")
    print(f"tfprec_plan_bits: {bits(tp)}")
    print(f"greedy_plan_accuracy_pct: {100 * gp.info['quant_accuracy']:.2f}")
    print(f"tfprec_plan_accuracy_pct: {100 * tp.info['quant_accuracy']:.2f}")
    print(f"tfprec_budget_bisection_seconds: {t_tfprec2:.2f}")
    if tp2 is None:
        print(f"tfprec_budget_bisection_not_met: {why2}")
    else:
        print(f"tfprec_budget_bisection_evaluations: {t_evals2}")
        print(f"tfprec_budget_bisection_plan_cost: {tp2.cost().total_compute:.6g}")
        print(f"tfprec_budget_bisection_plan_bits: {bits(tp2)}")
        print(f"tfprec_budget_bisection_plan_accuracy_pct: "
              f"{100 * tp2.info['quant_accuracy']:.2f}")
    # tfprec's own path: per-example gains + tfprec.calibrate (cost-aware
    # family shaped by the per-example bound), on a fresh copy (fresh trace).
    fresh3 = keras.models.clone_model(model)
    fresh3.set_weights(model.get_weights())
    t, c = time.perf_counter(), time.process_time()
    g3 = tfprec.noise_gains(fresh3, xc, per_example=True)
    cal = tfprec.calibrate.calibrate(fresh3, g3, xe, ye,
                                     max_accuracy_drop=a.tolerance_pp,
                                     methods=("cost_aware",))
    t_cal = time.perf_counter() - t
    c_cal = time.process_time() - c
    tp3 = cal.best.plan
    print(f"tfprec_calibrate_seconds: {t_cal:.2f}")
    print(f"tfprec_calibrate_evaluations: {cal.best.evaluations}")
    print(f"greedy_over_tfprec_calibrate_time: {t_greedy / t_cal:.1f}")
    print(f"greedy_over_tfprec_calibrate_cpu_time: {c_greedy / c_cal:.1f}")
    print(f"tfprec_calibrate_plan_cost: {tp3.cost().total_compute:.6g}")
    print(f"tfprec_calibrate_over_greedy_cost: {tp3.cost().total_compute / gc:.3f}")
    print(f"tfprec_calibrate_plan_bits: {bits(tp3)}")
    print(f"tfprec_calibrate_plan_accuracy_pct: {100 * cal.best.quant_accuracy:.2f}")
    fh = V.float_decisions(model, xh)
    print(f"float_holdout_accuracy_pct: {100 * np.mean(fh == yh):.2f}")
    print(f"greedy_plan_holdout_accuracy_pct: {acc_pct(model, gp, xh, yh):.2f}")
    print(f"tfprec_plan_holdout_accuracy_pct: {acc_pct(model, tp, xh, yh):.2f}")
    print(f"tfprec_calibrate_plan_holdout_accuracy_pct: {acc_pct(model, tp3, xh, yh):.2f}")
    print(f"total_seconds: {time.perf_counter() - t_all:.1f}")


if __name__ == "__main__":
    main()
