"""Shared helpers of the example scripts (not part of the tfprec API).

* flags: :func:`define_flag` defines an absl flag once per process (the
  examples share flag names such as ``--data_dir``; a test that imports
  several examples must not hit absl's DuplicateFlagError);
* data and cache defaults: :func:`default_data_dir`, :func:`default_cache_dir`;
* training: :func:`trained_model` (cached with ``tfprec.models.cached_trained``
  or trained in place), timed;
* equal-accuracy search: :func:`equal_accuracy` finds, for each allocation
  family, the cheapest level whose fake-quant accuracy on held-out data is
  within ``max_accuracy_drop`` percentage points of float
  (``tfprec.calibrate.calibrate`` when it is importable, else a bisection
  over the same levels with :mod:`tfprec.validate`);
* paper reproduction (METHOD.md sections 4 and 5): :func:`run_paper` and its
  markdown table, with the cost-model-only binarized and 16-bit networks;
* architectures: :func:`run_architecture` (gains, paper and cost-aware plans,
  fake-quant validation, TFLite export, shared-input formats).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np

import tfprec  # noqa: F401  (first: selects Keras 2 before TensorFlow loads)
from tfprec.planning import cost as cost_lib
from tfprec.application import models
from tfprec.quantization import validate
from tfprec.application import data as data_lib
from tfprec.planning import plan as plan_lib
from tfprec._tf import keras
from tfprec.quantization.apply import logits_model, quantize_model
from tfprec.errors import UnattainableTargetError
from tfprec.fixedpoint import MAX_BITS, MIN_BITS
from tfprec.statistics.gains import layer_geometry

try:  # written in parallel; the examples fall back to their own search
    from tfprec.planning.calibrate import calibrate as _calibrate
except ImportError:  # pragma: no cover - depends on the checkout
    _calibrate = None

from absl import flags

EXAMPLES_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(EXAMPLES_DIR)
PAPER_METHODS = ("cost_aware", "paper", "uniform", "icml2017")
METHOD_LABELS = {
    "paper": "per-layer, paper rule (ICASSP 2018)",
    "cost_aware": "per-layer, cost-aware (compute)",
    "uniform": "uniform (one B for all tensors)",
    "icml2017": "ICML 2017 (one B_A, one B_W)",
}
LEVEL_NAMES = {"paper": "B_min", "uniform": "B", "icml2017": "B_A",
               "cost_aware": "t"}


# ================================================================ flags
def define_flag(kind: str, name: str, default, help_text: str, **kw) -> None:
    """``flags.DEFINE_<kind>(name, default, help_text)`` unless ``name`` is
    already defined in this process (e.g. by tfprec.cli in a test run): then
    it is left exactly as it is, so importing an example never changes
    another program's flags."""
    if name in flags.FLAGS:
        return
    getattr(flags, f"DEFINE_{kind}")(name, default, help_text, **kw)


def define_common_flags(*, epochs: int, calibration_examples: int,
                        eval_examples: int, output: str = "") -> None:
    """Flags every example has (defaults given per example)."""
    define_flag("string", "data_dir", default_data_dir(),
                "Folder with mnist.npz / cifar10_jpeg75.npz. Default: "
                "$TFPREC_DATA_DIR, else ../shared/data next to the repository "
                "if it exists, else '' (Keras online loaders).")
    define_flag("string", "cache_dir", default_cache_dir(),
                "Folder for cached trained weights (tfprec.models.cached_trained); "
                "'' trains without caching.")
    define_flag("integer", "epochs", epochs, "Float training epochs.")
    define_flag("integer", "calibration_examples", calibration_examples,
                "Training examples the noise gains are computed on.")
    define_flag("integer", "eval_examples", eval_examples,
                "Held-out test examples for the fake-quant evaluation.")
    define_flag("string", "output", output,
                "Write the markdown results here (atomically); '' prints only.")
    define_flag("integer", "seed", 0, "Seed of model initialization and training.")


def define_architecture_flags(*, train_examples: int) -> None:
    """Flags of the architecture examples (ResNet-20, MobileNet-style)."""
    define_common_flags(epochs=2, calibration_examples=500, eval_examples=2000)
    define_flag("integer", "train_examples", train_examples,
                "Train on the first N training images (CPU schedule).")
    define_flag("float", "target", 0.01,
                "Analytic mismatch-bound target of the plans (probability).")
    define_flag("float", "calibrated_mismatch", 0.01,
                "Also the paper and cost-aware families at the cheapest level whose "
                "measured mismatch is at most this fraction (tfprec.calibrate); "
                "negative: skip.")
    define_flag("integer", "select_examples", 2000,
                "Test examples (after the evaluation split) the calibrated "
                "levels are chosen on.")
    define_flag("bool", "int8_baseline", True,
                "Also validate and export every tensor at 8 bits.")
    define_flag("string", "export_dir", "",
                "Keep the .tflite files here ('' : a temporary folder).")


def architecture_main(builder: str, run) -> None:
    """main() of an architecture example: load CIFAR-10, ``run``, print."""
    f = flags.FLAGS
    timer = Timer()
    ds = data_lib.load_dataset("cifar10", f.data_dir or None,
                               num_train=f.train_examples or None)
    print(f"data: {ds}", flush=True)
    res = run(ds, epochs=f.epochs, cache_dir=f.cache_dir,
              calibration_examples=f.calibration_examples,
              eval_examples=f.eval_examples, target=f.target,
              calibrated_mismatch=(f.calibrated_mismatch
                                   if f.calibrated_mismatch >= 0 else None),
              select_examples=f.select_examples,
              int8_baseline=f.int8_baseline, export_dir=f.export_dir, seed=f.seed)
    print()
    print(res.markdown, flush=True)
    if f.output:
        write_atomic(f.output, res.markdown)
        print(f"wrote {f.output}")
    print(f"{builder}: wall time {timer.total:.1f} s", flush=True)


def default_data_dir() -> str:
    """``$TFPREC_DATA_DIR``, else ``<repo>/../shared/data`` if it exists, else
    '' (tfprec.data then uses the Keras online loaders)."""
    env = os.environ.get("TFPREC_DATA_DIR", "").strip()
    if env:
        return env
    shared = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data"))
    return shared if os.path.isdir(shared) else ""


def default_cache_dir() -> str:
    """``$TFPREC_CACHE_DIR``, else ``examples/.cache`` (git-ignored)."""
    return (os.environ.get(models.ENV_CACHE_DIR, "").strip()
            or os.path.join(EXAMPLES_DIR, ".cache"))


# ================================================================ misc
class Timer:
    """Named wall-clock phases: ``with timer("train"): ...``."""

    def __init__(self):
        self.phases: dict = {}
        self.start = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - t

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items())
        return f"wall time {self.total:.1f} s ({parts})"


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` (temp file in the same folder + rename)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    plan_lib.atomic_write_text(path, text)


def trained_model(builder: str, ds, *, epochs: int, cache_dir: str = "",
                  builder_kwargs: Optional[dict] = None, batch_size: int = 128,
                  seed: int = 0) -> tuple:
    """(model, how) for ``builder`` trained on ``ds``.

    With a ``cache_dir`` the weights come from / go to
    ``tfprec.models.cached_trained``; ``how`` says 'trained' or 'loaded from
    cache'.  Without, the model is built with ``seed`` and trained in place.
    """
    kw = dict(builder_kwargs or {})
    if cache_dir:
        path = models.cache_path(builder, ds, epochs, batch_size, seed=seed,
                                 cache_dir=cache_dir, builder_kwargs=kw)
        cached = os.path.isfile(path)
        m = models.cached_trained(builder, ds, epochs=epochs, batch_size=batch_size,
                                  seed=seed, cache_dir=cache_dir, builder_kwargs=kw)
        return m, (f"loaded from cache {path}" if cached else f"trained, cached at {path}")
    keras.utils.set_random_seed(int(seed))
    m = models.build(builder, **kw)
    models.train(m, ds, epochs=epochs, batch_size=batch_size, seed=seed)
    return m, "trained (no cache)"


# ================================================================ search
@dataclasses.dataclass(frozen=True)
class Row:
    """One allocation family at its cheapest equal-accuracy level."""

    method: str
    level: Optional[float]
    plan: Optional[plan_lib.PrecisionPlan]
    float_accuracy: Optional[float]
    quant_accuracy: Optional[float]
    accuracy_drop_pp: Optional[float]
    num_mismatch: Optional[int]
    num_examples: int
    evaluations: int
    note: str = ""

    @property
    def met(self) -> bool:
        return self.plan is not None

    @property
    def b_min(self) -> Optional[int]:
        return None if self.plan is None else int(self.plan.b_min)

    @property
    def b_max(self) -> Optional[int]:
        if self.plan is None:
            return None
        return int(max(max(l.weight_bits, l.act_bits) for l in self.plan.layers))

    @property
    def bound(self) -> Optional[float]:
        return None if self.plan is None else float(self.plan.bound())

    def cost(self, kind: str) -> Optional[float]:
        return None if self.plan is None else float(self.plan.cost().total(kind))

    @property
    def level_str(self) -> str:
        if self.level is None:
            return "-"
        if self.method == "cost_aware":
            return f"t={self.level:.3g}"
        return f"{LEVEL_NAMES.get(self.method, 'level')}={int(self.level)}"


def equal_accuracy(model, gains, x, y, *, max_accuracy_drop: float = 0.1,
                   methods: Sequence[str] = PAPER_METHODS, batch_size: int = 256,
                   use_calibrate: bool = True) -> tuple:
    """Cheapest level of each family within ``max_accuracy_drop`` pp of float.

    Returns (rows in ``methods`` order, engine) where engine names what ran
    the search.  Uses ``tfprec.calibrate.calibrate`` when importable (and
    ``use_calibrate``), else :func:`_fallback_search`.
    """
    if use_calibrate and _calibrate is not None:
        try:
            res = _calibrate(model, gains, x, y, max_accuracy_drop=max_accuracy_drop,
                             methods=tuple(methods), batch_size=batch_size)
        except UnattainableTargetError as e:
            return [Row(m, None, None, None, None, None, None, len(x), 0,
                        f"not met: {e}") for m in methods], "tfprec.calibrate"
        rows = []
        for m in methods:
            try:
                c = res[m]
            except KeyError:
                rows.append(Row(m, None, None, res.float_accuracy, None, None, None,
                                res.num_examples, 0,
                                f"not met: {res.unmet.get(m, 'no level met the target')}"))
                continue
            rows.append(Row(m, float(c.level), c.plan, c.float_accuracy,
                            c.quant_accuracy, c.accuracy_drop_pp, int(c.num_mismatch),
                            int(c.num_examples), int(c.evaluations)))
        return rows, "tfprec.calibrate"
    return _fallback_search(model, gains, x, y, max_accuracy_drop, methods,
                            batch_size), "examples.common fallback bisection"


def _levels(gains, method: str) -> tuple:
    """(levels most precise first, level -> plan) of one family."""
    if method == "paper":
        ow, oa = plan_lib.paper_offsets(gains)
        top = MAX_BITS - int(max(ow.max(), oa.max()))
        return (list(range(top, MIN_BITS - 1, -1)),
                lambda b: plan_lib.paper_plan(gains, b_min=int(b)))
    if method == "uniform":
        return (list(range(MAX_BITS, MIN_BITS - 1, -1)),
                lambda b: plan_lib.uniform_plan(gains, bits=int(b)))
    if method == "icml2017":
        d = plan_lib.icml2017_offset(gains)
        return (list(range(MAX_BITS - max(d, 0), MIN_BITS - min(d, 0) - 1, -1)),
                lambda b: plan_lib.icml2017_plan(gains, act_bits=int(b)))
    if method == "cost_aware":
        lo = plan_lib.uniform_plan(gains, bits=MAX_BITS).bound() * (1 + 1e-9)
        hi = plan_lib.uniform_plan(gains, bits=MIN_BITS).bound()
        k = int(math.ceil(4 * math.log2(hi / lo))) if lo > 0 else 0
        return ([lo * 2.0 ** (i / 4) for i in range(max(k, 0) + 1)],
                lambda t: plan_lib.cost_aware_plan(gains, t, cost="compute"))
    raise ValueError(f"unknown method {method!r}")


def _fallback_search(model, gains, x, y, max_drop, methods, batch_size) -> list:
    """Bisection over each family's levels on measured accuracy (the same
    search as tfprec.calibrate, for checkouts without it)."""
    fdec = validate.float_decisions(model, x, batch_size)
    n = len(x)
    float_correct = int(np.sum(fdec == y))
    allowed = int(math.floor(max_drop / 100.0 * n + 1e-9))
    cache: dict = {}

    def measure(plan):
        key = tuple((l.weight_bits, l.act_bits) for l in plan.layers)
        if key not in cache:
            q = validate.quant_decisions(model, plan, x, batch_size)
            cache[key] = (int(np.sum(q != fdec)), int(np.sum(q == y)))
        return cache[key]

    rows = []
    for m in methods:
        levels, make = _levels(gains, m)
        plans: dict = {}
        evals = 0
        lo, hi = -1, len(levels)           # lo feasible sentinel, hi infeasible
        while hi - lo > 1:
            mid = (lo + hi) // 2
            plans[mid] = make(levels[mid])
            mis, correct = measure(plans[mid])
            evals += 1
            if float_correct - correct <= allowed:
                lo = mid
            else:
                hi = mid
        if lo < 0:
            rows.append(Row(m, None, None, float_correct / n, None, None, None, n,
                            evals, "not met at the most precise level"))
            continue
        mis, correct = measure(plans[lo])
        rows.append(Row(m, float(levels[lo]), plans[lo], float_correct / n,
                        correct / n, 100.0 * (float_correct - correct) / n, mis, n,
                        evals))
    return rows


# ================================================================ cost models
def geometry_cost(geometry: Sequence[dict], act_bits: int, weight_bits: int) -> tuple:
    """(compute FA, memory bits) of layers with the given geometry, every
    tensor at the same bits (METHOD.md section 4)."""
    comp = sum(cost_lib.compute_cost(g["dot_length"], g["num_dots"], act_bits,
                                     weight_bits) for g in geometry)
    mem = sum(cost_lib.memory_cost(g["num_weights"], g["num_inputs"], act_bits,
                                   weight_bits) for g in geometry)
    return float(comp), float(mem)


# ================================================================ paper run
@dataclasses.dataclass
class PaperResult:
    """Everything :func:`run_paper` measured; ``markdown`` is the report."""

    title: str
    float_accuracy: float
    rows: list
    fixed16: validate.ValidationResult
    binarized_cost: tuple
    binarized_widen: float
    binarized_geometry: list
    fixed16_cost: tuple
    ratios: dict
    engine: str
    timings: dict
    markdown: str
    gains: object = None
    model: object = None

    def row(self, method: str) -> Row:
        for r in self.rows:
            if r.method == method:
                return r
        raise KeyError(method)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _num(v, spec=".4g") -> str:
    return "n/a" if v is None else format(v, spec)


def _ratio(a, b) -> Optional[float]:
    return None if a is None or b is None or b == 0 else float(a) / float(b)


def run_paper(builder: str, ds, *, title: str, wide_geometry: Callable[[float], list],
              widen: float = 3.0, widen_note: str = "",
              builder_kwargs: Optional[dict] = None, epochs: int = 3,
              batch_size: int = 128, cache_dir: str = "", calibration_examples: int = 2000,
              eval_examples: int = 10000, max_accuracy_drop: float = 0.1,
              methods: Sequence[str] = PAPER_METHODS, seed: int = 0,
              use_calibrate: bool = True, schedule: str = "",
              log: Callable[[str], None] = print) -> PaperResult:
    """Trains ``builder`` on ``ds``, computes gains on ``calibration_examples``
    training examples and, for every allocation family, the cheapest level at
    equal accuracy on the first ``eval_examples`` test examples; adds the
    cost-model-only binarized network (widths x ``widen``, every tensor 1 bit,
    geometry from ``wide_geometry(widen)``) and the 16-bit network (same
    widths as the trained one, fake-quant accuracy measured)."""
    timer = Timer()
    with timer("train"):
        model, how = trained_model(builder, ds, epochs=epochs, cache_dir=cache_dir,
                                   builder_kwargs=builder_kwargs,
                                   batch_size=batch_size, seed=seed)
    log(f"[{title}] model {how} ({timer.phases['train']:.1f} s)")
    n_cal = min(int(calibration_examples), ds.num_train)
    n_eval = min(int(eval_examples), ds.num_test)
    x_cal = models.fit_inputs(model, ds.x_train[:n_cal])
    x_eval = models.fit_inputs(model, ds.x_test[:n_eval])
    y_eval = ds.y_test[:n_eval]
    with timer("gains"):
        gains = tfprec.noise_gains(model, x_cal, batch_size=min(256, n_cal),
                                    per_example=True)
    log(f"[{title}] noise gains on {n_cal} training examples "
        f"({timer.phases['gains']:.1f} s)")
    with timer("equal-accuracy search"):
        rows, engine = equal_accuracy(model, gains, x_eval, y_eval,
                                      max_accuracy_drop=max_accuracy_drop,
                                      methods=methods, use_calibrate=use_calibrate)
    log(f"[{title}] equal-accuracy search with {engine} "
        f"({timer.phases['equal-accuracy search']:.1f} s)")
    with timer("16-bit check"):
        p16 = plan_lib.uniform_plan(gains, bits=16)
        v16 = validate.validate(model, p16, x_eval, y_eval)
    float_acc = v16.float_accuracy
    geo = layer_geometry(model)
    c16 = geometry_cost(geo, 16, 16)
    wide = wide_geometry(widen)
    cbin = geometry_cost(wide, 1, 1)

    by = {r.method: r for r in rows}
    ratios = {}
    uni = by.get("uniform")
    for m in ("paper", "cost_aware"):
        r = by.get(m)
        if r is None or not r.met:
            continue
        if uni is not None and uni.met:
            ratios[f"uniform_minus_{m}_min_bits"] = uni.b_min - r.b_min
            ratios[f"uniform_over_{m}_compute"] = _ratio(uni.cost("compute"), r.cost("compute"))
            ratios[f"uniform_over_{m}_memory"] = _ratio(uni.cost("memory"), r.cost("memory"))
        ratios[f"binarized_over_{m}_compute"] = _ratio(cbin[0], r.cost("compute"))
        ratios[f"binarized_over_{m}_memory"] = _ratio(cbin[1], r.cost("memory"))
        ratios[f"fixed16_over_{m}_compute"] = _ratio(c16[0], r.cost("compute"))
        ratios[f"fixed16_over_{m}_memory"] = _ratio(c16[1], r.cost("memory"))
    timings = dict(timer.phases)
    timings["total"] = timer.total
    res = PaperResult(title, float_acc, rows, v16, cbin, float(widen), wide, c16,
                      ratios, engine, timings, "", gains, model)
    res.markdown = paper_markdown(res, n_cal=n_cal, n_eval=n_eval,
                                  max_drop=max_accuracy_drop, trained=how,
                                  schedule=schedule, widen_note=widen_note)
    return res


def paper_markdown(res: PaperResult, *, n_cal: int, n_eval: int, max_drop: float,
                   trained: str, schedule: str = "", widen_note: str = "") -> str:
    ref = next((r for r in res.rows if r.method == "paper" and r.met), None)
    base_c = None if ref is None else ref.cost("compute")
    base_m = None if ref is None else ref.cost("memory")
    L = [f"## {res.title}: minimum precision at equal accuracy", ""]
    if schedule:
        L += [f"Training: {schedule}; {trained}.", ""]
    L += [f"Float test accuracy {_pct(res.float_accuracy)} % on {n_eval} held-out "
          f"test examples. Noise gains on {n_cal} training examples. Each "
          f"allocation is at its cheapest level whose fake-quant test accuracy is "
          f"within {max_drop:g} percentage point of float (search: {res.engine}; "
          "the level is chosen on these test examples). Costs per METHOD.md "
          "section 4: computational cost in 1-bit full adders (FA) per example, "
          "representational cost in bits; \"vs paper\" divides by the paper "
          "rule's per-layer plan.", ""]
    L += ["| network / allocation | level | min precision (bits) | max precision "
          "(bits) | test acc % | drop pp | mismatch | bound | compute (FA) | "
          "memory (bits) | compute vs paper | memory vs paper |",
          "|" + "---|" * 12]
    for r in res.rows:
        label = METHOD_LABELS.get(r.method, r.method)
        if not r.met:
            L.append(f"| {label} | {r.note} | | | | | | | | | | |")
            continue
        L.append(
            f"| {label} | {r.level_str} | {r.b_min} | {r.b_max} | "
            f"{_pct(r.quant_accuracy)} | {_num(r.accuracy_drop_pp, '.2f')} | "
            f"{r.num_mismatch}/{r.num_examples} | {_num(r.bound, '.3g')} | "
            f"{_num(r.cost('compute'))} | {_num(r.cost('memory'))} | "
            f"{_num(_ratio(r.cost('compute'), base_c), '.2f')} | "
            f"{_num(_ratio(r.cost('memory'), base_m), '.2f')} |")
    v = res.fixed16
    L.append(
        f"| 16-bit fixed point, same widths (measured) | B=16 | 16 | 16 | "
        f"{_pct(v.quant_accuracy)} | {100 * (v.float_accuracy - v.quant_accuracy):.2f} | "
        f"{v.num_mismatch}/{v.num_examples} | {v.bound:.3g} | "
        f"{_num(res.fixed16_cost[0])} | {_num(res.fixed16_cost[1])} | "
        f"{_num(_ratio(res.fixed16_cost[0], base_c), '.2f')} | "
        f"{_num(_ratio(res.fixed16_cost[1], base_m), '.2f')} |")
    L.append(
        f"| binarized, {res.binarized_widen:g}x wider (cost model only, not "
        f"trained) | B_A=B_W=1 | 1 | 1 | n/a | n/a | n/a | n/a | "
        f"{_num(res.binarized_cost[0])} | {_num(res.binarized_cost[1])} | "
        f"{_num(_ratio(res.binarized_cost[0], base_c), '.2f')} | "
        f"{_num(_ratio(res.binarized_cost[1], base_m), '.2f')} |")
    L.append("")
    wide_desc = ", ".join(f"{g['name']} {g['num_dots']}x{g['dot_length']}"
                          for g in res.binarized_geometry)
    L += [f"Binarized network: the same topology with every hidden layer "
          f"{res.binarized_widen:g}x wider ({widen_note or 'hidden widths and channels multiplied'}; "
          f"the output layer keeps 10 units), every weight and activation "
          f"1 bit, priced with the same cost formulas; its accuracy is not "
          f"measured (it is not trained). Geometry (dot products x length): "
          f"{wide_desc}.", ""]

    # per-layer bits
    met = [r for r in res.rows if r.met]
    if met:
        L += ["Per-layer precision (B_W / B_A) of each allocation:", "",
              "| layer | " + " | ".join(r.method for r in met) + " |",
              "|" + "---|" * (len(met) + 1)]
        for i, lp in enumerate(met[0].plan.layers):
            L.append(f"| {lp.name} | " + " | ".join(
                f"{r.plan.layers[i].weight_bits} / {r.plan.layers[i].act_bits}"
                for r in met) + " |")
        L.append("")

    # claims
    q = res.ratios
    L += ["Paper claims, as measured here:", ""]
    for m in ("paper", "cost_aware"):
        if f"binarized_over_{m}_compute" not in q:
            L.append(f"- {m}: no plan met the target; no ratios.")
            continue
        who = "paper rule" if m == "paper" else "cost-aware plan"
        if f"uniform_minus_{m}_min_bits" in q:
            L.append(f"- \"up to 8 bits lower minimum precision\": uniform B minus the "
                     f"{who}'s minimum precision = {q[f'uniform_minus_{m}_min_bits']} "
                     f"bits (uniform costs {q[f'uniform_over_{m}_compute']:.2f}x "
                     f"compute, {q[f'uniform_over_{m}_memory']:.2f}x memory).")
        L.append(f"- \"~3.5x lower cost than binarized\": binarized / {who} = "
                 f"{q[f'binarized_over_{m}_compute']:.2f}x compute, "
                 f"{q[f'binarized_over_{m}_memory']:.2f}x memory (cost model only).")
        L.append(f"- \"up to 14x lower cost than 16-bit\": 16-bit / {who} = "
                 f"{q[f'fixed16_over_{m}_compute']:.2f}x compute, "
                 f"{q[f'fixed16_over_{m}_memory']:.2f}x memory.")
    t = res.timings
    L += ["", "Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) + "."]
    return "\n".join(L) + "\n"


# ================================================================ architectures
def shared_groups(plan) -> dict:
    """act_group -> the plan's LayerPrecision of every member."""
    out: dict = {}
    for lp in plan.layers:
        if lp.act_group:
            out.setdefault(lp.act_group, []).append(lp)
    return out


def shared_formats_equal(plan, export_report=None) -> dict:
    """act_group -> whether all its members have one input format
    (B_A, R_A, signedness; and, with an export report, the same stored input
    step and type in the TFLite file)."""
    res = {}
    for group, members in shared_groups(plan).items():
        fmts = {(l.act_bits, l.act_range, l.act_signed) for l in members}
        ok = len(fmts) == 1
        if export_report is not None:
            ex = [export_report.layer(l.name) for l in members]
            ok = ok and len({(e.act_bits, e.act_step, e.act_signed, e.act_dtype)
                             for e in ex}) == 1
        res[group] = ok
    return res


@dataclasses.dataclass
class ArchPlanResult:
    """One plan of :func:`run_architecture`."""

    name: str
    plan: plan_lib.PrecisionPlan
    validation: validate.ValidationResult
    export: object            # tfprec.export.ExportReport or None
    tflite_vs_fakequant: Optional[float]
    tflite_accuracy: Optional[float]
    shared_equal: dict
    note: str = ""


@dataclasses.dataclass
class ArchResult:
    title: str
    float_accuracy: float
    gains: object
    plans: list
    timings: dict
    markdown: str
    model: object = None


def _validation(plan, fdec, qdec, y) -> validate.ValidationResult:
    """The :class:`tfprec.validate.ValidationResult` of float / fake-quant
    decisions (what ``tfprec.validate.validate`` reports)."""
    n = len(fdec)
    mis = int(np.sum(fdec != qdec))
    c = plan.cost()
    return validate.ValidationResult(
        method=plan.method, b_min=int(plan.b_min), bound=float(plan.bound()),
        num_examples=n, num_mismatch=mis, mismatch_rate=mis / n,
        float_accuracy=float(np.mean(fdec == y)), quant_accuracy=float(np.mean(qdec == y)),
        compute_cost=float(c.total_compute), memory_cost=float(c.total_memory))


def _safe_plan(make, target: float, floor: float, log) -> tuple:
    """(plan, target used).  A target below ``floor`` (the bound with every
    tensor at 16 bits) is unattainable for every rule, so it starts there;
    then the target is relaxed x10 while the rule finds no plan within 16
    bits (at most 8 times)."""
    t = float(target)
    if t < floor:
        log(f"  target {t:g} is below the 16-bit bound {floor:.3g}; using {floor:.3g}")
        t = floor
    err = None
    for _ in range(8):
        try:
            return make(t), t
        except UnattainableTargetError as e:
            err = e
            log(f"  target {t:g} unattainable within 16 bits; trying {10 * t:g}")
            t *= 10
    raise UnattainableTargetError(f"no plan within 16 bits up to bound target "
                                  f"{t / 10:g} ({err})")


def run_architecture(builder: str, ds, *, title: str, epochs: int = 2,
                     batch_size: int = 128, cache_dir: str = "",
                     calibration_examples: int = 500, eval_examples: int = 2000,
                     target: float = 0.01, calibrated_mismatch: Optional[float] = None,
                     select_examples: int = 2000, int8_baseline: bool = True,
                     export_dir: Optional[str] = None,
                     export: bool = True, seed: int = 0, schedule: str = "",
                     log: Callable[[str], None] = print) -> ArchResult:
    """Trains ``builder`` on ``ds`` and analyzes it end to end.

    Gains on ``calibration_examples`` training examples; the paper and
    cost-aware (compute) plans at the analytic bound ``target``; with
    ``calibrated_mismatch`` also the paper and cost-aware families at the
    cheapest level whose MEASURED mismatch is at most that fraction
    (``tfprec.calibrate``), the level chosen on the ``select_examples`` test
    examples after the evaluation split; with ``int8_baseline`` also every
    tensor at 8 bits (the usual int8 deployment, all int8 TFLite kernels).
    Every plan is validated (fake-quant)
    on the first ``eval_examples`` test examples and exported to TFLite with
    grid checks, TFLite accuracy and decision agreement with the fake-quant
    model; the input formats of layers that share an input tensor are
    compared in the plan and in the TFLite file."""
    from tfprec.export import agreement, export_tflite, tflite_predict

    timer = Timer()
    with timer("train"):
        model, how = trained_model(builder, ds, epochs=epochs, cache_dir=cache_dir,
                                   batch_size=batch_size, seed=seed)
    log(f"[{title}] model {how} ({timer.phases['train']:.1f} s)")
    n_cal = min(int(calibration_examples), ds.num_train)
    n_eval = min(int(eval_examples), ds.num_test)
    x_cal, x_eval, y_eval = ds.x_train[:n_cal], ds.x_test[:n_eval], ds.y_test[:n_eval]
    with timer("gains"):
        gains = tfprec.noise_gains(model, x_cal, batch_size=min(128, n_cal))
    log(f"[{title}] noise gains on {n_cal} training examples "
        f"({timer.phases['gains']:.1f} s)")
    floor = plan_lib.uniform_plan(gains, bits=MAX_BITS).bound() * (1 + 1e-9)
    with timer("float pass"):
        fdec = validate.float_decisions(model, x_eval)

    # ---- the plans: (label, plan or None, note)
    plans = []
    for name, make in (("paper", lambda t: plan_lib.paper_plan(gains, t)),
                       ("cost_aware:compute",
                        lambda t: plan_lib.cost_aware_plan(gains, t, cost="compute"))):
        with timer("plan"):
            try:
                plan, t_used = _safe_plan(make, target, floor, log)
            except UnattainableTargetError as e:
                if name == "paper":
                    ow, oa = plan_lib.paper_offsets(gains)
                    span = int(max(ow.max(), oa.max()))
                    if span > MAX_BITS - MIN_BITS:
                        e = (f"the paper rule's offsets span {span} bits, so no "
                             f"B_min >= {MIN_BITS} keeps every tensor within "
                             f"{MAX_BITS} bits")
                log(f"[{title}] {name}: no plan ({e})")
                plans.append((name, None, f"no plan: {e}"))
                continue
        label = name if t_used == target else f"{name} (bound target {t_used:.3g})"
        plans.append((label, plan, ""))
    if int8_baseline:
        plans.append(("uniform 8 bits (int8 baseline)",
                      plan_lib.uniform_plan(gains, bits=8), ""))
    n_sel = 0
    if calibrated_mismatch is not None:
        n_sel = min(int(select_examples), ds.num_test - n_eval)
        what = f"calibrated, measured mismatch <= {calibrated_mismatch:g}"
        if n_sel < 1:
            plans.append((what, None, "no test examples left for the level search"))
        elif _calibrate is None:
            plans.append((what, None, "tfprec.calibrate is not available"))
        else:
            x_sel = ds.x_test[n_eval:n_eval + n_sel]
            with timer("calibration (level search)"):
                try:
                    cres = _calibrate(model, gains, x_sel, ds.y_test[n_eval:n_eval + n_sel],
                                      target_mismatch=float(calibrated_mismatch),
                                      methods=("paper", "cost_aware"))
                except UnattainableTargetError as e:
                    cres = None
                    plans.append((what, None, f"no plan: {e}"))
            if cres is not None:
                for m in ("paper", "cost_aware"):
                    try:
                        c = cres[m]
                    except KeyError:
                        plans.append((f"{m}, {what}", None,
                                      f"no plan: {cres.unmet.get(m, 'target not met')}"))
                        continue
                    lev = (f"t={c.level:.3g}" if m == "cost_aware"
                           else f"B_min={int(c.level)}")
                    plans.append((f"{m}, {what} ({lev}; {c.num_mismatch}/{c.num_examples} "
                                  f"on the selection split)", c.plan, ""))

    out = []
    tmp = None
    if export and export_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="tfprec-example-")
        export_dir = tmp.name
    try:
        for i, (label, plan, note) in enumerate(plans):
            if plan is None:
                out.append(ArchPlanResult(label, None, None, None, None, None, {}, note=note))
                continue
            with timer("fake-quant validation"):
                # one fake-quant model per plan (tfprec.quantization.apply.quantize_model,
                # as tfprec.validate.validate uses) serves the validation and
                # the comparison with TFLite
                qm = logits_model(quantize_model(model, plan))
                # eager batches: no predict-function tracing per plan
                fq = np.concatenate([qm(x_eval[i:i + 500], training=False).numpy()
                                     for i in range(0, len(x_eval), 500)])
                v = _validation(plan, fdec, np.argmax(fq, -1), y_eval)
            rep = agree = tacc = None
            if export:
                with timer("TFLite export + check"):
                    os.makedirs(export_dir, exist_ok=True)
                    stem = label.split(":")[0].split(" ")[0].rstrip(",")
                    kind = ("calibrated" if "calibrated" in label else
                            "8bit" if stem == "uniform" else "bound")
                    path = os.path.join(export_dir, f"{builder}_{stem}_{kind}.tflite")
                    rep = export_tflite(model, plan, path,
                                        representative_data=x_eval[:32], strict=False)
                    if os.path.isfile(path):
                        tfl = tflite_predict(path, x_eval)
                        agree = agreement(tfl, fq)
                        tacc = float(np.mean(np.argmax(tfl, -1) == y_eval))
            out.append(ArchPlanResult(label, plan, v, rep, agree, tacc,
                                      shared_formats_equal(plan, rep)))
    finally:
        if tmp is not None:
            tmp.cleanup()
    timings = dict(timer.phases)
    timings["total"] = timer.total
    float_acc = float(np.mean(fdec == y_eval))
    res = ArchResult(title, float_acc, gains, out, timings, "", model)
    res.markdown = arch_markdown(res, n_cal=n_cal, n_eval=n_eval, target=target,
                                 trained=how, schedule=schedule, n_sel=n_sel)
    return res


def arch_markdown(res: ArchResult, *, n_cal: int, n_eval: int, target: float,
                  trained: str, schedule: str = "", n_sel: int = 0) -> str:
    yes = lambda b: "yes" if b else "**NO**"  # noqa: E731
    L = [f"## {res.title}: end-to-end analysis", ""]
    if schedule:
        L += [f"Training: {schedule}; {trained}.", ""]
    L += [f"Float test accuracy {_pct(res.float_accuracy)} % on {n_eval} test "
          f"examples; noise gains on {n_cal} training examples "
          f"({len(res.gains.layers)} weight layers); plans at analytic bound "
          f"target {target:g} (the bound with every tensor at 16 bits is "
          f"{plan_lib.uniform_plan(res.gains, bits=MAX_BITS).bound():.3g})"
          + (f" and calibrated plans whose level was chosen on the next {n_sel} "
             f"test examples (not the {n_eval} they are validated on)" if n_sel else "")
          + ". TFLite int8 kernels are used where B_W and B_A are at most 8 bits.", "",
          "| plan | B_min | max bits | bound | mismatch | float acc % | fake-quant "
          "acc % | compute (FA) | memory (bits) | TFLite grid checks | TFLite int8 "
          "layers | TFLite acc % | TFLite = fake-quant | TFLite = simulation | shared "
          "inputs equal |",
          "|" + "---|" * 15]
    for p in res.plans:
        v, rep = p.validation, p.export
        if p.plan is None:
            L.append(f"| {p.name} | {p.note} |" + " |" * 13)
            continue
        bmax = max(max(l.weight_bits, l.act_bits) for l in p.plan.layers)
        L.append(
            f"| {p.name} | {v.b_min} | {bmax} | {v.bound:.3g} | "
            f"{v.mismatch_rate:.4f} ({v.num_mismatch}/{v.num_examples}) | "
            f"{_pct(v.float_accuracy)} | {_pct(v.quant_accuracy)} | "
            f"{v.compute_cost:.4g} | {v.memory_cost:.4g} | "
            f"{'n/a' if rep is None else yes(rep.grid_check_passed)} | "
            f"{'n/a' if rep is None else sum(l.compute == 'int8' for l in rep.layers)}"
            f"{'' if rep is None else '/' + str(len(rep.layers))} | "
            f"{_pct(p.tflite_accuracy)} | {_pct(p.tflite_vs_fakequant)} | "
            f"{'n/a' if rep is None else _pct(rep.sim_agreement)} | "
            f"{yes(all(p.shared_equal.values())) if p.shared_equal else 'none'} |")
    L.append("")
    made = [p for p in res.plans if p.plan is not None]
    groups = shared_groups(made[0].plan) if made else {}
    if groups:
        L += ["Layers that read one shared input tensor (act_group) and their input "
              "formats (B_A, R_A, signed) in each plan:", ""]
        for g, members in groups.items():
            parts = []
            for p in made:
                ms = shared_groups(p.plan)[g]
                fm = "; ".join(f"{l.name}: {l.act_bits} b, R={l.act_range:g}, "
                               f"{'s' if l.act_signed else 'u'}" for l in ms)
                parts.append(f"{p.name}: {fm} -> equal: {yes(p.shared_equal[g])}")
            L.append(f"- `{g}`: " + " | ".join(parts))
        L.append("")
    else:
        L += ["No two weight layers share an input tensor.", ""]
    for p in made:
        L += [f"Per-layer bits, {p.name} (layer B_W/B_A): " + ", ".join(
            f"{l.name} {l.weight_bits}/{l.act_bits}" for l in p.plan.layers), ""]
    t = res.timings
    L += ["Wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) + "."]
    return "\n".join(L) + "\n"


def log_to_stdout(msg: str) -> None:
    print(msg, flush=True)
