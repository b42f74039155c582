"""Peers over several splits: benchmarks/peers.py repeated on random
selection / report splits of the test images, its verdicts' figures
averaged over them.

Why: on one split, the selection split's noise is as large as what is
judged.  On 2000 CIFAR-10 images the drop of one plan has a standard error
of 0.3-0.4 pp against a 0.5 pp tolerance, so which of two nearby levels a
search stops at, and so a cost ratio, moves by +-5 % from one split to
another; at the tightest budgets the two plans' report accuracies differ by
less than their McNemar noise.  Averaging over splits takes that noise out
of the comparison (the splits share their images, so the spread over seeds
understates the uncertainty about new images; each seed's own McNemar
p-values are printed by its peers.py run).

Each seed S of ``--seeds`` runs peers.py with ``--split_seed S`` (0: the
stored order, the figures of a plain peers.py run; S > 0: a permutation of
the test images drawn with numpy's default_rng(S)), every other flag as
peers.py's (``--nets``, ``--select``, ``--tolerance_pp``, ...).  Every line
of each run is printed after ``# split seed S``; then, per network:

* <net>_splits_cost: each seed's tfprec/greedy cost ratio at equal held-out
  accuracy (peers.py's verdict_cost figure: the plans themselves when both
  meet the tolerance on the report split, else the search that over-fitted
  its selection split stopped by the report split, marked "g" for greedy's
  path, "t" for tfprec's grid), their mean and the standard error of the
  mean over seeds; seeds without one (n/a) are named and left out.
* <net>_splits_cost_like_for_like: peers.py's like-for-like ratio (both
  stopped by the report split) on the seeds that printed one.
* <net>_splits_drops: each seed's report-split drops, greedy / tfprec, pp.
* <net>_splits_time: each seed's greedy/tfprec time ratio and the smallest.
* <net>_splits_budget_<k>: at budget fraction f_k, tfprec minus HAWQ-v2
  report-split accuracy (pp) on each seed, the mean and its standard error.
* <net>_splits_verdict_cost: mean cost ratio <= 1.05;
  <net>_splits_verdict_time: the smallest time ratio >= 10;
  <net>_splits_verdict_hawq: mean accuracy difference >= 0 at every budget.
* splits_total_seconds.

Usage: python benchmarks/peers_splits.py [--seeds 0,1,2,3,4] [peers.py flags]
       (about 2.5 min per MNIST seed and 15 min per CIFAR-10 seed here)
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402  (imports tfprec first)


def mean_se(values):
    """(mean, standard error of the mean) of a list; se is nan below 2."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    se = float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(np.mean(v)), se


def summarize(net: str, runs) -> None:
    """Prints the <net>_splits_* lines of one network's runs (peers.run_net
    results, one per seed)."""
    out = lambda name, value: peers.out(net, f"splits_{name}", value)  # noqa: E731
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    seeds = [r["split_seed"] for r in runs]
    out("seeds", ",".join(str(s) for s in seeds))
    timed = [r for r in runs if r["ratio_time"] is not None]
    if timed:
        cost = [r for r in timed if r["ratio_cost"] is not None]
        marks = {r["split_seed"]: ("t" if "tfprec's grid" in r["oracle"] else "")
                 + ("g" if "greedy's path" in r["oracle"] else "") for r in cost}
        m, se = mean_se([r["ratio_cost"] for r in cost])
        na = [str(r["split_seed"]) for r in timed if r["ratio_cost"] is None]
        out("cost", " ".join(f"s{r['split_seed']}={r['ratio_cost']:.3f}"
                             f"{marks[r['split_seed']]}" for r in cost)
            + f"; mean {m:.3f} +- {se:.3f}"
            + (f"; n/a on seeds {','.join(na)}" if na else ""))
        like = [r for r in timed if r["ratio_like"] is not None]
        if like:
            ml, sel = mean_se([r["ratio_like"] for r in like])
            out("cost_like_for_like", " ".join(
                f"s{r['split_seed']}={r['ratio_like']:.3f}" for r in like)
                + f"; mean {ml:.3f} +- {sel:.3f} (over {len(like)} seeds)")
        out("drops", " ".join(
            f"s{r['split_seed']}={r['greedy_report_drop_pp']:.2f}/"
            + (f"{r['tfprec_report_drop_pp']:.2f}" if "tfprec_report_drop_pp" in r
               else "-") for r in timed) + " pp (greedy/tfprec, report split)")
        times = [r["ratio_time"] for r in timed]
        out("time", " ".join(f"s{r['split_seed']}={r['ratio_time']:.1f}" for r in timed)
            + f"; smallest {min(times):.1f}")
        out("verdict_cost", "n/a (no seed at equal held-out accuracy)" if not cost else
            f"{yes(m <= 1.05)} (mean tfprec/greedy cost {m:.3f} +- {se:.3f} over "
            f"{len(cost)} seeds, target <= 1.05)")
        out("verdict_time", f"{yes(min(times) >= 10)} (smallest greedy/tfprec time "
            f"{min(times):.1f} over {len(times)} seeds, target >= 10)")
    n_budgets = min(len(r["budgets"]) for r in runs)
    ok = 0
    for k in range(n_budgets):
        diffs = [100 * (r["budgets"][k][1] - r["budgets"][k][2]) for r in runs]
        md, sd = mean_se(diffs)
        ok += int(md >= 0)
        out(f"budget_{k}", f"fraction {runs[0]['budgets'][k][0]:g}: tfprec - HAWQ "
            "report accuracy " + " ".join(f"s{s}={d:+.2f}" for s, d in zip(seeds, diffs))
            + f" pp; mean {md:+.2f} +- {sd:.2f} pp")
    out("verdict_hawq", f"{yes(ok == n_budgets)} (tfprec at least as accurate on "
        f"average over {len(runs)} seeds at {ok} of {n_budgets} budgets)")


def main(argv=None) -> None:
    ap = peers.parser()
    ap.description = __doc__.splitlines()[0]
    ap.add_argument("--seeds", default="0,1,2,3,4",
                    help="comma-separated split seeds (see peers.py --split_seed)")
    a = peers.parse_args(argv, ap)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds must be comma-separated integers >= 0, got {a.seeds!r}")
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        ap.error(f"--seeds must be distinct integers >= 0, got {a.seeds!r}")
    if a.split_seed != 0:
        ap.error("--split_seed: give the seeds with --seeds")
    t_all = time.perf_counter()
    for net in a.nets:
        runs = []
        for s in seeds:
            print(f"# split seed {s}", flush=True)
            a.split_seed = s
            runs.append(peers.run_net(net, a))
        summarize(net, runs)
    print(f"splits_total_seconds: {time.perf_counter() - t_all:.1f}")


if __name__ == "__main__":
    main()
