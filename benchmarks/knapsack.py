"""Multiple-choice knapsack: tfprec's exact solver (branch and bound on
Pareto-optimal partial picks, ``tfprec.planning.search.mckp``) against the
dynamic program it replaced (capacity rounded into units) and a binary
integer program solved by HiGHS (``scipy.optimize.milp``).

Instances are cost_aware_plan's: per layer 15 x 15 options (B_W, B_A in
2..16 bits), value = computational cost (full adders), weight = the layer's
bound terms 4^(1-B_W) G_W + 4^(1-B_A) G_A (probability), capacity = target.
Instances with the representational cost (bits) as value are also run.
Prints per size: mean time of each solver, the largest optimality gap of
the DP and of the MILP (their value over the exact one, minus 1) and how
many picks violated the capacity.

    python benchmarks/knapsack.py [--sizes 4,8,12,20] [--trials 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import optimize, sparse

from tfprec.planning import cost as cost_lib
from tfprec.planning.search import mckp


def dp_mckp(values, weights, capacity, units: int = 2000):
    """The former DP: weights rounded *up* to units of capacity / units (so
    picks always fit), values minimized exactly under that rounding."""
    f = np.zeros(units + 1)
    choices = []
    for v, w in zip(values, weights):
        q = np.ceil(w / capacity * units - 1e-9)
        opts = [(int(q[k]), float(v[k]), k) for k in range(len(v)) if q[k] <= units]
        new = np.full(units + 1, np.inf)
        arg = np.full(units + 1, -1)
        for j, (qq, c, _) in enumerate(opts):
            cand = np.full(units + 1, np.inf)
            cand[qq:] = f[:units + 1 - qq] + c
            better = cand < new
            new[better] = cand[better]
            arg[better] = j
        f = new
        choices.append((opts, arg))
    if not np.isfinite(f[units]):
        return None
    u, pick = units, []
    for opts, arg in reversed(choices):
        qq, _, k = opts[arg[u]]
        pick.append(k)
        u -= qq
    return pick[::-1]


def milp_mckp(values, weights, capacity):
    """Binary program: one variable per option, one choice per group, HiGHS
    with a zero relative gap; None if infeasible."""
    sizes = [len(v) for v in values]
    n = sum(sizes)
    rows = np.repeat(np.arange(len(sizes)), sizes)
    a_eq = sparse.csr_array((np.ones(n), (rows, np.arange(n))))
    c = np.concatenate(values)
    res = optimize.milp(
        c / np.abs(c).max(), integrality=np.ones(n), bounds=optimize.Bounds(0, 1),
        constraints=[optimize.LinearConstraint(a_eq, 1, 1),
                     optimize.LinearConstraint(np.concatenate(weights)[None, :] / capacity,
                                               -np.inf, 1.0)],
        options={"mip_rel_gap": 0.0, "presolve": False})
    if res.x is None:
        return None
    starts = np.cumsum([0] + sizes[:-1])
    return [int(np.argmax(res.x[s:s + k])) for s, k in zip(starts, sizes)]


def instance(rng, n, kind):
    b = np.arange(2, 17, dtype=float)
    bw, ba = np.meshgrid(b, b, indexing="ij")
    values, weights = [], []
    for _ in range(n):
        d, p = int(rng.integers(10, 2000)), int(rng.integers(10, 50000))
        if kind == "compute":
            values.append(cost_lib.compute_cost(d, p, ba, bw).ravel())
        else:
            values.append(cost_lib.memory_cost(d * p // 10, d * 10, ba, bw).ravel())
        gw, ga = 10 ** rng.uniform(-1, 4, 2)
        weights.append((gw * 4.0 ** (1 - bw) + ga * 4.0 ** (1 - ba)).ravel())
    return values, weights, 10 ** rng.uniform(-3, -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4,8,12,20")
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    solvers = {"exact": mckp, "DP": dp_mckp, "MILP": milp_mckp}
    print("cost    | groups | exact s | DP s   | MILP s | DP gap max | MILP gap max "
          "| violations")
    for kind in ("compute", "memory"):
        for n in [int(s) for s in args.sizes.split(",")]:
            secs = dict.fromkeys(solvers, 0.0)
            gaps = {"DP": 0.0, "MILP": 0.0}
            bad = 0
            for _ in range(args.trials):
                v, w, cap = instance(rng, n, kind)
                picks = {}
                for name, solve in solvers.items():
                    t0 = time.perf_counter()
                    picks[name] = solve(v, w, cap)
                    secs[name] += time.perf_counter() - t0
                tot = lambda p, a: sum(x[k] for x, k in zip(a, p))  # noqa: E731
                exact = tot(picks["exact"], v)
                for name, p in picks.items():
                    bad += p is None or tot(p, w) > cap
                    if name in gaps and p is not None:
                        gaps[name] = max(gaps[name], tot(p, v) / exact - 1)
            t = {k: s / args.trials for k, s in secs.items()}
            print(f"{kind:7s} | {n:6d} | {t['exact']:7.3f} | {t['DP']:6.3f} | "
                  f"{t['MILP']:6.3f} | {gaps['DP']:10.2e} | {gaps['MILP']:12.2e} | {bad}")


if __name__ == "__main__":
    main()
