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

Each seed S of ``--seeds`` runs ``python benchmarks/peers.py --split_seed
S`` in a process of its own (0: the stored order, the figures of a plain
peers.py run; S > 0: a permutation of the test images drawn with numpy's
default_rng(S)), with every other flag passed on to peers.py (``--nets``,
``--select``, ``--tolerance_pp``, ...): each run is a plain peers.py run,
with its own memory (one process for all seeds grew past 23 GB by the
seventh run) and its own first use of the library.  Every line of each run
is printed after ``# split seed S``, and the summary is read from those
lines (``--logs`` reads saved peers.py outputs instead of running); then,
per network:

* <net>_splits_cost: each seed's tfprec/greedy cost ratio at equal held-out
  accuracy (peers.py's verdict_cost figure: the plans themselves when both
  meet the tolerance on the report split, else the search that over-fitted
  its selection split stopped by the report split, marked "g" for greedy's
  path, "t" for tfprec's grid), their mean and the standard error of the
  mean over seeds; seeds without one (n/a) are named and left out.
* <net>_splits_cost_like_for_like: the ratio with both searches stopped by
  the report split, on the seeds that have one: peers.py's like-for-like
  line (greedy's plan missed, tfprec's grid stopped from its chosen level
  to the cheapest), or its verdict_cost when both plans missed (mark "tg").
* <net>_splits_drops: each seed's report-split drops, greedy / tfprec, pp.
* <net>_splits_time: each seed's greedy/tfprec time ratio and the smallest.
* <net>_splits_budget_<k>: at budget fraction f_k, tfprec minus HAWQ-v2
  report-split accuracy (pp) on each seed, the mean and its standard error.
* <net>_splits_verdict_cost: mean cost ratio <= 1.05;
  <net>_splits_verdict_time: the smallest time ratio >= 10;
  <net>_splits_verdict_hawq: mean accuracy difference >= 0 at every budget.
* splits_total_seconds.

Usage: python benchmarks/peers_splits.py [--seeds 0,1,2,3,4] [peers.py flags]
       (about 2.5 min per MNIST seed and 17 min per CIFAR-10 seed here)
       python benchmarks/peers_splits.py --logs out1.txt,out2.txt
"""
from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import peers  # noqa: E402  (imports tfprec first)

_HEADER = re.compile(r"^# (\w+): .*\(--split_seed (\d+)\)$")
_NUMBER = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?)"


def _after(text: str, words: str) -> float:
    """The number that follows ``words`` in ``text``."""
    return float(re.search(re.escape(words) + " " + _NUMBER, text).group(1))


def results_from_lines(lines) -> list:
    """The verdict figures of peers.py runs, read from their printed lines
    (one dict per network and split seed, in order; a run cut short, without
    its verdict_hawq line, is left out): split_seed, ratio_cost,
    ratio_like, ratio_time (None when not printed or "n/a"), oracle (the
    verdict_cost line: which search the report split stopped), greedy /
    tfprec_report_drop_pp (pp), budgets [(fraction, tfprec accuracy, HAWQ
    accuracy (fractions), McNemar p)].

    Raises:
      ValueError: a line of a run does not have peers.py's format, or two
        complete runs of one network have one seed.
    """
    runs = []
    for line in lines:
        line = line.rstrip("\n")
        head = _HEADER.match(line)
        if head:
            runs.append({"net": head.group(1), "split_seed": int(head.group(2)),
                         "ratio_cost": None, "ratio_like": None, "ratio_time": None,
                         "oracle": "", "budget_parts": {}, "complete": False})
            continue
        if not runs or ": " not in line or line.startswith("#"):
            continue
        r = runs[-1]
        name, value = line.split(": ", 1)
        if not name.startswith(r["net"] + "_"):
            continue
        key = name[len(r["net"]) + 1:]
        try:
            if key == "verdict_cost" and not value.startswith("n/a"):
                r["ratio_cost"] = _after(value, "tfprec/greedy cost")
                r["oracle"] = value
            elif key == "verdict_cost_like_for_like":
                r["ratio_like"] = _after(value, "tfprec/greedy cost")
            elif key == "verdict_time" and not value.startswith("n/a"):
                r["ratio_time"] = _after(value, "greedy/tfprec time")
            elif key in ("greedy_report_drop_pp", "tfprec_report_drop_pp"):
                r[key] = float(value)
            elif key == "verdict_hawq":
                r["complete"] = True
            elif re.match(r"budget_\d+_", key):
                k, what = key[len("budget_"):].split("_", 1)
                part = r["budget_parts"].setdefault(int(k), {})
                if what.startswith("fraction_of_uniform"):
                    part["fraction"] = float(value)
                elif what in ("tfprec_report_accuracy_pct", "hawq_report_accuracy_pct"):
                    part[what.split("_")[0]] = float(value.split()[0]) / 100.0
                elif what == "report_paired":
                    part["p"] = _after(value, "p =")
        except (AttributeError, ValueError) as e:
            raise ValueError(f"not a peers.py line: {line!r}") from e
    done, seen = [], set()
    for r in runs:
        if not r.pop("complete"):
            continue
        if (r["net"], r["split_seed"]) in seen:
            raise ValueError(f"two complete runs of {r['net']} with --split_seed "
                             f"{r['split_seed']}")
        seen.add((r["net"], r["split_seed"]))
        parts = r.pop("budget_parts")
        r["budgets"] = [(parts[k]["fraction"], parts[k]["tfprec"], parts[k]["hawq"],
                         parts[k]["p"]) for k in sorted(parts)]
        done.append(r)
    return done


def mean_se(values):
    """(mean, standard error of the mean) of a list; se is nan below 2."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    se = float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(np.mean(v)), se


def summarize(net: str, runs) -> None:
    """Prints the <net>_splits_* lines of one network's runs
    (:func:`results_from_lines` dicts, one per seed)."""
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
        like = {r["split_seed"]: r["ratio_like"] if r["ratio_like"] is not None
                else r["ratio_cost"] for r in timed if r["ratio_like"] is not None
                or (r["ratio_cost"] is not None and marks[r["split_seed"]] == "tg")}
        if like:
            ml, sel = mean_se(list(like.values()))
            out("cost_like_for_like", " ".join(f"s{k}={v:.3f}" for k, v in like.items())
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
        ok += int(md >= -1e-9)          # a tie read from rounded lines: float noise
        out(f"budget_{k}", f"fraction {runs[0]['budgets'][k][0]:g}: tfprec - HAWQ "
            "report accuracy " + " ".join(f"s{s}={d:+.2f}" for s, d in zip(seeds, diffs))
            + f" pp; mean {md:+.2f} +- {sd:.2f} pp")
    out("verdict_hawq", f"{yes(ok == n_budgets)} (tfprec at least as accurate on "
        f"average over {len(runs)} seeds at {ok} of {n_budgets} budgets)")


def run_seed(seed: int, forward) -> list:
    """One plain peers.py run (its own process) on split seed ``seed``,
    printed as it goes; its lines."""
    cmd = [sys.executable, os.path.join(HERE, "peers.py"), "--split_seed", str(seed),
           *forward]
    lines = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    if proc.returncode != 0:
        sys.exit(f"peers_splits.py: peers.py --split_seed {seed} failed (exit "
                 f"{proc.returncode}); its output is above")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every other flag is passed on to peers.py (python "
               "benchmarks/peers.py --help).")
    ap.add_argument("--seeds", default="0,1,2,3,4",
                    help="comma-separated split seeds (peers.py --split_seed)")
    ap.add_argument("--logs", default="",
                    help="comma-separated files of saved peers.py output: "
                         "summarize them instead of running")
    a, forward = ap.parse_known_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds must be comma-separated integers >= 0, got {a.seeds!r}")
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        ap.error(f"--seeds must be distinct integers >= 0, got {a.seeds!r}")
    if any(f == "--split_seed" or f.startswith("--split_seed=") for f in forward):
        ap.error("--split_seed: give the seeds with --seeds")
    t_all = time.perf_counter()
    if a.logs:
        lines = []
        for path in a.logs.split(","):
            try:
                with open(path) as f:
                    lines += f.readlines()
            except OSError as e:
                ap.error(f"--logs: cannot read {path!r}: {e}")
    else:
        peers.parse_args(forward)        # peers.py's own errors, before any run
        lines = []
        for s in seeds:
            print(f"# split seed {s}", flush=True)
            lines += run_seed(s, forward)
    try:
        runs = results_from_lines(lines)
    except ValueError as e:
        sys.exit(f"peers_splits.py: {e}")
    if not runs:
        sys.exit("peers_splits.py: no peers.py run found (no '# <net>: ... "
                 "(--split_seed S)' line)")
    for net in dict.fromkeys(r["net"] for r in runs):
        summarize(net, [r for r in runs if r["net"] == net])
    print(f"splits_total_seconds: {time.perf_counter() - t_all:.1f}")


if __name__ == "__main__":
    main()
