"""The example scripts' end-to-end functions, on tiny settings.

* ``examples/mnist_mlp.py``: a 784-32-32-10 MLP (``retrain``), one epoch on
  the embedded MNIST subset, the equal-accuracy search of all five
  allocations on the selection split (test images 1-500; its uniform level
  is checked against a direct measurement of the neighbouring levels),
  every reported number on the disjoint report split (test images
  501-1000, checked against a direct validation), the 16-bit and binarized
  rows and the markdown table;
* ``tfprec.peers.matched``: level grids of equal resolution (one level per
  bit; the analytic-bound grid is exactly x4 per level), the predictor-based
  plan at a budget, bad arguments;
* ``benchmarks/peers.py``: an unknown ``--nets`` and a ``--margin_pp`` over
  the tolerance are refused; the selection margin's rule; greedy's kept
  path stopped by the report split (``oracle_stop``) on made-up drops;
* ``examples/cifar10_vgg.py``: the binarized network's geometry and a run on
  a few random CIFAR-shaped examples (one training step);
* ``examples/resnet20_cifar10.py`` and ``examples/mobilenet_cifar10.py``:
  one training step on a few random CIFAR-shaped examples, then gains,
  plans, fake-quant validation and TFLite export; layers that share an input
  tensor (residual projection, two-branch block) must have equal formats in
  the plan and in the TFLite file.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import types

import numpy as np
import pytest

import tfprec  # noqa: F401  (first: selects Keras 2)
from tfprec.planning import cost as cost_lib
from tfprec.application import data as data_lib
from tfprec.application import models
from tfprec.peers import matched
from tfprec.statistics.gains import layer_geometry

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples")
sys.path.insert(0, EXAMPLES)

import cifar10_vgg  # noqa: E402
import common  # noqa: E402
import mnist_mlp  # noqa: E402
import mobilenet_cifar10  # noqa: E402
import resnet20_cifar10  # noqa: E402

quiet = lambda msg: None  # noqa: E731


def random_cifar(n_train: int, n_test: int, seed: int = 0) -> data_lib.Dataset:
    rs = np.random.RandomState(seed)
    return data_lib.Dataset(
        rs.rand(n_train, 32, 32, 3).astype("float32"), rs.randint(0, 10, n_train),
        rs.rand(n_test, 32, 32, 3).astype("float32"), rs.randint(0, 10, n_test),
        10, "random_cifar", "random")


# ------------------------------------------------------------ MNIST MLP
@pytest.fixture(scope="module")
def mnist_result():
    ds = data_lib.load_dataset("mnist_subset", flatten=True, num_test=1000)
    return mnist_mlp.run(ds, hidden=(32, 32), epochs=1, cache_dir="", retrain=True,
                         calibration_examples=256, select_examples=500,
                         eval_examples=500, log=quiet)


@pytest.mark.slow
def test_mnist_rows(mnist_result):
    res = mnist_result
    assert [r.method for r in res.rows] == list(common.PAPER_METHODS)
    assert res.float_accuracy > 0.5
    for r in res.rows:
        assert r.met, r.note
        assert r.num_select == 500 and r.num_examples == 500
        # equal accuracy on the selection split: within 0.1 pp (0 of 500)
        assert r.select_drop_pp <= 0.1 + 1e-9
        # the report split's numbers are consistent with each other
        assert r.quant_accuracy == pytest.approx(r.float_accuracy - r.accuracy_drop_pp / 100)
        assert r.float_accuracy == res.float_accuracy
        assert 2 <= r.b_min <= r.b_max <= 16
        assert [l.name for l in r.plan.layers] == ["fc1", "fc2", "logits"]
        c = r.plan.cost()
        assert r.cost("compute") == c.total_compute > 0
        assert r.cost("memory") == c.total_memory > 0
        assert r.bound == pytest.approx(r.plan.bound())
    uni = res.row("uniform")
    assert uni.b_min == uni.b_max == int(uni.level)
    assert res.row("paper").b_min == int(res.row("paper").level)
    pred = res.row("cost_aware_predicted")
    assert pred.plan.method.startswith("cost_aware_predicted")
    assert "~B=" in pred.level_str


@pytest.mark.slow
def test_mnist_report_split_is_disjoint(mnist_result):
    """Every row's report numbers are those of a direct validation on test
    images 501-1000, not on the 500 the level was chosen on."""
    from tfprec.quantization import validate
    ds = data_lib.load_dataset("mnist_subset", flatten=True, num_train=1, num_test=1000)
    for m in ("paper", "cost_aware_predicted"):
        r = mnist_result.row(m)
        v = validate.validate(mnist_result.model, r.plan, ds.x_test[500:], ds.y_test[500:])
        assert v.num_examples == 500
        assert r.num_mismatch == v.num_mismatch
        assert r.quant_accuracy == pytest.approx(v.quant_accuracy)


@pytest.mark.slow
def test_mnist_reference_networks(mnist_result):
    res = mnist_result
    # 16-bit network: every tensor 16 bits, same widths, accuracy measured
    assert res.fixed16.b_min == 16 and res.fixed16.num_examples == 500
    geo = layer_geometry(res.model)
    want16 = sum(cost_lib.compute_cost(g["dot_length"], g["num_dots"], 16, 16) for g in geo)
    assert res.fixed16_cost[0] == pytest.approx(want16)
    # binarized: hidden widths x3, 1 bit everywhere, cost formula by hand
    assert res.binarized_widen == 3.0
    dims = [784, 96, 96, 10]
    comp = mem = 0.0
    for n_in, n_out in zip(dims[:-1], dims[1:]):
        d = n_in + 1
        comp += n_out * (d * 1 * 1 + (d - 1) * (1 + 1 + math.ceil(math.log2(d)) - 1))
        mem += 1 * (n_in + 1) * n_out + 1 * n_in
    assert res.binarized_cost == (pytest.approx(comp), pytest.approx(mem))
    paper = res.row("paper")
    q = res.ratios
    assert q["binarized_over_paper_compute"] == pytest.approx(comp / paper.cost("compute"))
    assert q["fixed16_over_paper_memory"] == pytest.approx(
        res.fixed16_cost[1] / paper.cost("memory"))
    assert q["uniform_minus_paper_min_bits"] == res.row("uniform").b_min - paper.b_min


@pytest.mark.slow
def test_mnist_markdown(mnist_result, tmp_path):
    md = mnist_result.markdown
    assert md.count("\n| per-layer") == 3
    for label in ("uniform (one B", "ICML 2017", "16-bit fixed point",
                  "predicted accuracy drop (tfprec)", "SELECTION split (test images 1-500)",
                  "REPORT split (test images 501-1000)", "one level per bit",
                  "selection drop pp", "report acc %",
                  "binarized, 3x wider (cost model only, not trained)",
                  "up to 8 bits lower", "~3.5x lower", "up to 14x lower", "Wall time"):
        assert label in md, label
    out = tmp_path / "sub" / "results.md"
    common.write_atomic(str(out), md)
    assert out.read_text() == md
    assert [p.name for p in out.parent.iterdir()] == ["results.md"]


@pytest.mark.slow
def test_equal_accuracy_level_is_the_first_that_meets_the_drop(mnist_result):
    """The uniform level of the equal-accuracy search meets the 0.1 pp drop
    and the level below does not, both measured directly with validate()."""
    import paper_common
    from tfprec.planning.rules import uniform_plan
    from tfprec.quantization import validate
    res = mnist_result
    ds = data_lib.load_dataset("mnist_subset", flatten=True, num_train=1, num_test=1000)
    xs, ys = ds.x_test[:500], ds.y_test[:500]
    rows, engine = paper_common.equal_accuracy(res.model, res.gains, xs, ys,
                                               methods=("uniform",))
    assert [r.method for r in rows] == ["uniform"] and "one level per bit" in engine
    level = int(rows[0].level)
    assert level == res.row("uniform").level

    def drop_pp(bits):
        v = validate.validate(res.model, uniform_plan(res.gains, bits=bits), xs, ys)
        return 100.0 * (v.float_accuracy - v.quant_accuracy)

    assert drop_pp(level) <= 0.1 + 1e-9
    assert rows[0].select_drop_pp == pytest.approx(drop_pp(level), abs=1e-9)
    if level > 2:
        assert drop_pp(level - 1) > 0.1 + 1e-9


# ------------------------------------------------------------ matched
@pytest.mark.slow
def test_grids_have_one_level_per_bit(mnist_result):
    from tfprec.peers import matched
    from tfprec.planning import cost_aware as ca
    from tfprec.planning.predict import predicted_mismatch
    from tfprec.planning.rules import uniform_plan
    g = mnist_result.gains
    pg = mnist_result.predicted_gains       # per-class, on held-out images
    for fam in ("paper", "uniform", "icml2017", "cost_aware", "cost_aware_predicted"):
        grid = matched.family_grid(pg if fam == "cost_aware_predicted" else g, fam)
        assert len(grid.levels) <= 15, fam
    # the analytic-bound grid (gains without per-example data): x4 per level
    plain = dataclasses.replace(g, example_w=None, example_a=None)
    grid = matched.family_grid(plain, "cost_aware")
    assert grid.criterion == "bound" and len(grid.levels) == 15
    lv = np.array(grid.levels)
    below = lv[1:] < 1.0                  # targets are capped at probability 1
    assert below.sum() >= 2
    assert (lv[1:] / lv[:-1])[below] == pytest.approx(4.0, rel=1e-6)
    # level i of the predicted grid: as precise as uniform 16 - i bits by its
    # own criterion, and no costlier than that uniform plan
    grid = matched.family_grid(pg, "cost_aware_predicted")
    assert grid.criterion == "predicted"
    for i in (8, 11):
        b = 16 - i
        u = uniform_plan(pg, bits=b)
        p = grid.plan(i)
        assert predicted_mismatch(p, pg) <= grid.levels[i]
        assert grid.levels[i] == pytest.approx(predicted_mismatch(u, pg), rel=1e-6)
        assert p.cost().total_compute <= u.cost().total_compute * (1 + 1e-9)
        assert f"~B={b}" in grid.labels[i]
    # per_bit=2: twice the points, the integer ones unchanged
    grid2 = matched.family_grid(g, "cost_aware", per_bit=2)
    assert grid2.levels[::2] == matched.family_grid(g, "cost_aware").levels
    assert ca.per_example_bound(grid2.plan(5), g) <= grid2.levels[5]


@pytest.mark.slow
def test_predicted_at_budget(mnist_result):
    from tfprec.errors import PlanError, UnattainableTargetError
    from tfprec.peers import matched
    from tfprec.planning.predict import predicted_mismatch
    from tfprec.planning.rules import uniform_plan
    g = mnist_result.predicted_gains
    u4, u5 = uniform_plan(g, bits=4), uniform_plan(g, bits=5)
    budget = 0.5 * (u4.cost().total_compute + u5.cost().total_compute)
    p = matched.predicted_at_budget(g, budget)
    assert p.cost().total_compute <= budget
    assert p.info["budget"] == budget
    assert p.info["predicted_mismatch"] == pytest.approx(predicted_mismatch(p, g))
    # never worse, by the prediction, than the uniform plan that fits
    assert predicted_mismatch(p, g) <= predicted_mismatch(u4, g)
    cheapest = uniform_plan(g, bits=2).cost().total_compute
    with pytest.raises(UnattainableTargetError, match="below the cheapest plan"):
        matched.predicted_at_budget(g, 0.5 * cheapest)
    for bad in (0, -1.0, float("nan"), True, "1e7"):
        with pytest.raises(PlanError, match="budget must be a positive"):
            matched.predicted_at_budget(g, bad)


@pytest.mark.slow
def test_matched_bad_arguments(mnist_result):
    from tfprec.errors import PlanError
    from tfprec.peers import matched
    g = mnist_result.gains
    with pytest.raises(PlanError, match="family must be one of.*got 'greedy'"):
        matched.family_grid(g, "greedy")
    with pytest.raises(PlanError, match="criterion must be one of.*got 'x'"):
        matched.criterion_value(None, g, "x")
    with pytest.raises(PlanError, match="per_bit"):
        matched.family_grid(g, "cost_aware", per_bit=0)


def test_peers_benchmark_refuses_unknown_net(capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import peers
    with pytest.raises(SystemExit):
        peers.main(["--nets", "mnist_mlp,resnet"])
    assert "unknown network 'resnet'" in capsys.readouterr().err


def test_peers_benchmark_refuses_negative_counts(capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import peers
    for flag in ("--select", "--report", "--gains_examples"):
        with pytest.raises(SystemExit):
            peers.main(["--nets", "mnist_mlp", flag, "-5"])
        assert f"{flag} must be a count >= 0 (0: the default), got -5" in \
            capsys.readouterr().err


def test_peers_benchmark_selection_margin(capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import peers
    # one rule for both searches: an explicit margin, or the one-sigma
    # standard error of a drop equal to the tolerance on the selection split
    assert matched.selection_margin_pp(0.5, 2000, 0.2) == 0.2
    se = matched.selection_margin_pp(0.5, 2000, -1.0)
    assert se == pytest.approx(100 * math.sqrt(0.005 * 0.995 / 2000))
    assert matched.selection_margin_pp(0.5, 8000, -1.0) == pytest.approx(se / 2)
    with pytest.raises(SystemExit):
        peers.main(["--nets", "mnist_mlp", "--margin_pp", "0.6"])
    assert "--margin_pp must be finite and at most --tolerance_pp" in \
        capsys.readouterr().err


def test_peers_benchmark_oracle_stop(monkeypatch):
    """A search stopped by the report split: the cheapest of its plans
    within the tolerance there (scanned from the cheapest up), None when
    none is; on greedy's kept path and on plans given in any cost order."""
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import peers
    from tfprec._tf import keras
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                          keras.layers.Dense(3)])
    g = tfprec.noise_gains(m, np.random.RandomState(0).rand(64, 6).astype("float32"))
    u = tfprec.uniform_plan(g, bits=6)
    names = [l.name for l in u.layers]
    moves = [[names[0], "w", 5], [names[1], "a", 5], [names[0], "w", 4],
             [names[1], "w", 5]]
    plan = dataclasses.replace(u, info={"start_bits": 6, "path": moves})
    path = peers.greedy.path_plans(g, plan)
    costs = [p.cost().total_compute for p in path]
    assert all(b < a for a, b in zip(costs, costs[1:]))
    # a made-up report drop per plan (not monotone along the path)
    drop = dict(zip(costs, (0.1, 0.3, 0.7, 0.4, 0.9)))
    seen = []

    def measure(p, rep):
        seen.append(p.cost().total_compute)
        return types.SimpleNamespace(accuracy_drop_pp=drop[seen[-1]])

    monkeypatch.setattr(peers.matched, "measure", measure)
    i, n, p, meas, n_ev = peers.oracle_stop(path, None, lambda d: d <= 0.5)
    assert (i, n) == (3, 5)
    assert p.cost().total_compute == costs[3]
    assert meas.accuracy_drop_pp == 0.4
    assert seen == [costs[4], costs[3]]
    assert n_ev == 2
    assert peers.stop_text("round 3 of 4", meas, p, n_ev) == (
        f"round 3 of 4 (report-split drop 0.40 pp, cost {costs[3]:.6g}, bits "
        f"{peers.bits(p)}; 2 report evaluations)")
    assert peers.oracle_stop(path, None, lambda d: d <= 0.05) is None
    # the same plans shuffled (a level grid need not fall in cost): the
    # index is in the given order, the scan still goes cheapest first
    shuffled = [path[k] for k in (2, 4, 0, 3, 1)]
    seen.clear()
    i, n, p, meas, n_ev = peers.oracle_stop(shuffled, None, lambda d: d <= 0.35)
    assert p.cost().total_compute == costs[1]
    assert i == 4
    assert seen == [costs[4], costs[3], costs[2], costs[1]]
    assert n_ev == 4


# ------------------------------------------------------------ CIFAR VGG
def test_vgg_wide_geometry():
    assert cifar10_vgg.wide_geometry(1.0) == layer_geometry(models.cifar10_vgg())
    g3 = {g["name"]: g for g in cifar10_vgg.wide_geometry(3.0)}
    assert g3["conv1_1"]["num_dots"] == 96 * 30 * 30
    assert g3["conv1_2"]["dot_length"] == 96 * 9 + 1
    assert g3["fc1"]["dot_length"] == 384 * 1 + 1
    assert g3["logits"]["num_dots"] == 10 and g3["logits"]["dot_length"] == 769


@pytest.mark.slow      # run_paper's plumbing is covered by the MNIST example tests
def test_vgg_pipeline_random():
    ds = random_cifar(32, 64)
    res = cifar10_vgg.run(ds, epochs=1, cache_dir="", retrain=True,
                          calibration_examples=16, select_examples=32,
                          eval_examples=32, methods=("uniform",), log=quiet)
    assert [r.method for r in res.rows] == ["uniform"]
    r = res.row("uniform")
    assert r.met and r.num_examples == 32 and len(r.plan.layers) == 9
    assert res.fixed16.num_examples == 32
    assert "CIFAR-10 VGG" in res.markdown and "binarized, 3x wider" in res.markdown


# ------------------------------------------------------------ architectures
def _check_arch(res, groups, names, paper_may_fail=False):
    assert [p.name.split(" (")[0] for p in res.plans] == names
    assert 0.0 <= res.float_accuracy <= 1.0
    made = [p for p in res.plans if p.plan is not None]
    if paper_may_fail and res.plans[0].plan is None:
        # an untrained network can spread its gains over more than 14 bits:
        # then no B_min fits the paper rule within 16 bits, and it says so
        assert "offsets span" in res.plans[0].note, res.plans[0].note
        assert res.plans[0].note in res.markdown
        made = [res.plans[0]] + made
    for p in res.plans:
        assert p.plan is not None or p is res.plans[0] or "not met" in p.note or \
            "calibrated" in p.name, (p.name, p.note)
    for p in res.plans:
        if p.plan is None:
            continue
        v = p.validation
        assert v.num_examples == 24
        assert 0.0 <= v.mismatch_rate <= 1.0 and v.bound == pytest.approx(p.plan.bound())
        assert set(p.shared_equal) == set(groups)
        assert all(p.shared_equal.values())
        rep = p.export
        for g in groups:
            members = [l for l in p.plan.layers if l.act_group == g]
            assert sorted(l.name for l in members) == sorted(g.split("+"))
            assert len({(l.act_bits, l.act_range, l.act_signed) for l in members}) == 1
            assert len({(rep.layer(l.name).act_step, rep.layer(l.name).act_dtype)
                        for l in members}) == 1
        assert rep.grid_check_passed
        assert [l.name for l in rep.layers] == [l.name for l in p.plan.layers]
        assert 0.0 <= p.tflite_vs_fakequant <= 1.0 and 0.0 <= p.tflite_accuracy <= 1.0
        assert rep.sim_agreement >= 0.9
    md = res.markdown
    for g in groups:
        assert f"`{g}`" in md
    assert "TFLite grid checks" in md and "**NO**" not in md


@pytest.mark.slow      # shared-input groups end to end: test_mobilenet_end_to_end
def test_resnet20_end_to_end(tmp_path):
    ds = random_cifar(16, 24)
    res = resnet20_cifar10.run(ds, epochs=1, batch_size=16, cache_dir="",
                               calibration_examples=8, eval_examples=24,
                               int8_baseline=False, export_dir=str(tmp_path), log=quiet)
    assert len(res.gains.layers) == 22
    _check_arch(res, ["s2b1_conv1+s2b1_proj", "s3b1_conv1+s3b1_proj"],
                ["paper", "cost_aware:compute"])
    assert sorted(os.listdir(tmp_path)) == ["resnet20_cost_aware_bound.tflite",
                                            "resnet20_paper_bound.tflite"]


class _FakeCalibration:
    """Stands in for tfprec.calibrate's result (its search is tested in
    tests/test_calibrate.py): a cheap low-precision cost-aware plan, so the
    TFLite export takes its int8 paths; the paper family 'unmet'."""

    def __init__(self, plan, n):
        self.plan, self.n = plan, n
        self.unmet = {"paper": "stub: not met"}

    def __getitem__(self, method):
        if method != "cost_aware":
            raise KeyError(method)
        import types
        return types.SimpleNamespace(plan=self.plan, level=1.0, num_mismatch=0,
                                     num_examples=self.n)


@pytest.mark.slow
def test_mobilenet_end_to_end(monkeypatch):
    from tfprec.planning import plan as plan_lib
    from tfprec.planning import cost_aware as cost_aware_lib
    calls = []

    def fake_calibrate(model, gains, x, y, **kw):
        calls.append((len(x), kw))
        return _FakeCalibration(cost_aware_lib.cost_aware_plan(gains, 1.0), len(x))

    monkeypatch.setattr(common, "_calibrate", fake_calibrate)
    ds = random_cifar(16, 24 + 8, seed=1)
    res = mobilenet_cifar10.run(ds, epochs=1, batch_size=16, cache_dir="",
                                calibration_examples=8, eval_examples=24,
                                calibrated_mismatch=0.01, select_examples=8, log=quiet)
    # the level search got the 8 test examples after the 24 validated on
    assert calls == [(8, {"target_mismatch": 0.01, "methods": ("paper", "cost_aware")})]
    assert "b3a_dw" in res.gains.names and "b3b" in res.gains.names
    _check_arch(res, ["b3a_dw+b3b"],
                ["paper", "cost_aware:compute", "uniform 8 bits", "paper, calibrated, "
                 "measured mismatch <= 0.01", "cost_aware, calibrated, measured mismatch "
                 "<= 0.01"], paper_may_fail=True)
    u8 = res.plans[2]
    assert u8.plan.b_min == 8 and {l.compute for l in u8.export.layers} >= {"int8"}
    cal = res.plans[4]
    assert any(l.compute == "int8" for l in cal.export.layers)
    assert res.plans[3].plan is None and "stub: not met" in res.plans[3].note


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_peers_split_order():
    """--split_seed 0 keeps the stored order; S > 0 is one fixed permutation
    that keeps every image with its label."""
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import peers
    x = np.arange(50, dtype=np.float32).reshape(50, 1) * 10
    y = np.arange(50)
    x0, y0 = peers.split_order(x, y, 0)
    assert x0 is x
    assert y0 is y
    x1, y1 = peers.split_order(x, y, 1)
    assert not np.array_equal(y1, y)
    assert sorted(y1.tolist()) == y.tolist()
    np.testing.assert_array_equal(x1[:, 0], 10 * y1)
    np.testing.assert_array_equal(peers.split_order(x, y, 1)[1], y1)
    assert not np.array_equal(peers.split_order(x, y, 2)[1], y1)


def test_peers_splits_summary(capsys):
    """The averaged verdict figures against a direct computation: mean and
    standard error over seeds, the oracle marks, seeds without a ratio
    left out and named, the budget differences in pp."""
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import peers_splits

    def run(seed, cost, like, time_, oracle, accs):
        return {"net": "n", "split_seed": seed, "ratio_cost": cost, "ratio_like": like,
                "ratio_time": time_, "oracle": oracle, "cost_note": "",
                "greedy_report_drop_pp": 0.25 * seed, "tfprec_report_drop_pp": 0.5,
                "budgets": [(0.5, a, h, 1.0) for a, h in accs]}

    runs = [run(0, 1.07, 0.98, 18.8, "; greedy's path stopped by the report split",
                [(0.80, 0.81), (0.90, 0.89)]),
            run(4, 0.95, None, 12.0, "", [(0.82, 0.80), (0.90, 0.90)]),
            run(7, None, None, 9.5, "", [(0.79, 0.80), (0.91, 0.89)]),
            run(9, 1.00, None, 15.0, "; tfprec's grid and greedy's path stopped by "
                "the report split", [(0.82, 0.81), (0.88, 0.89)])]
    peers_splits.summarize("n", runs)
    lines = dict(l.split(": ", 1) for l in capsys.readouterr().out.splitlines())
    v = np.array([1.07, 0.95, 1.00])
    m, se = v.mean(), v.std(ddof=1) / np.sqrt(3)
    assert lines["n_splits_seeds"] == "0,4,7,9"
    assert lines["n_splits_cost"] == (f"s0=1.070g s4=0.950 s9=1.000tg; mean {m:.3f} +- "
                                      f"{se:.3f}; n/a on seeds 7")
    lv = np.array([0.98, 1.00])
    assert lines["n_splits_cost_like_for_like"] == (
        f"s0=0.980 s9=1.000; mean {lv.mean():.3f} +- {lv.std(ddof=1) / np.sqrt(2):.3f} "
        "(over 2 seeds)")
    assert lines["n_splits_time"].endswith("smallest 9.5")
    assert lines["n_splits_verdict_time"].startswith("no ")
    assert lines["n_splits_verdict_cost"].startswith(f"yes (mean tfprec/greedy cost {m:.3f}")
    assert lines["n_splits_drops"].startswith("s0=0.00/0.50 s4=1.00/0.50")
    d0 = np.array([-1.0, 2.0, -1.0, 1.0])
    assert lines["n_splits_budget_0"].endswith(
        f"s0=-1.00 s4=+2.00 s7=-1.00 s9=+1.00 pp; mean {d0.mean():+.2f} +- "
        f"{d0.std(ddof=1) / 2:.2f} pp")
    assert lines["n_splits_verdict_hawq"].startswith("yes ")
    # one budget below HAWQ on average: no
    runs[1]["budgets"][1] = (0.5, 0.85, 0.90, 1.0)
    peers_splits.summarize("n", runs)
    lines = dict(l.split(": ", 1) for l in capsys.readouterr().out.splitlines())
    assert lines["n_splits_verdict_hawq"].startswith("no (tfprec at least as accurate "
                                                     "on average over 4 seeds at 1 of 2")


#: two peers.py runs as printed (lines of a real run, the budgets cut to
#: one), the second cut short; other lines in between are skipped
PEERS_LINES = """\
# mnist_mlp: 2000 calibration (2000 for the Hessian), 2000 selection, 8000 report examples (--split_seed 3)
# mnist_mlp: tfprec, predictor-based plan within 0.342 pp on the selection split
mnist_mlp_greedy_report_drop_pp: 0.69
mnist_mlp_tfprec_report_drop_pp: 0.33
mnist_mlp_budget_base_bits: 8
mnist_mlp_budget_0_tfprec_report_accuracy_pct: 99.11 (20 of 8000 decisions changed)
mnist_mlp_budget_0_hawq_report_accuracy_pct: 99.15 (8 of 8000 decisions changed)
mnist_mlp_budget_0_report_paired: right only under tfprec 9, only under HAWQ 12: McNemar two-sided p = 0.664
mnist_mlp_budget_0_fraction_of_uniform8: 0.5
mnist_mlp_verdict_cost: yes (tfprec/greedy cost 0.785, target <= 1.05; greedy's path stopped by the report split)
mnist_mlp_verdict_cost_like_for_like: yes (both stopped by the report split: tfprec/greedy cost 0.743, target <= 1.05)
mnist_mlp_verdict_time: no (greedy/tfprec time 8.9, target >= 10)
mnist_mlp_verdict_hawq: no (tfprec at least as accurate at 3 of 4 budgets, report split)
total_seconds: 150.2
# mnist_mlp: 2000 calibration (2000 for the Hessian), 2000 selection, 8000 report examples (--split_seed 4)
mnist_mlp_greedy_report_drop_pp: 0.44
"""


def test_peers_splits_reads_peers_lines():
    """The verdict figures read back from peers.py's printed lines; a run
    cut short is left out, a seed run twice and a malformed line refused."""
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import peers_splits
    runs = peers_splits.results_from_lines(PEERS_LINES.splitlines(True))
    assert len(runs) == 1
    r = runs[0]
    assert (r["net"], r["split_seed"]) == ("mnist_mlp", 3)
    assert (r["ratio_cost"], r["ratio_like"], r["ratio_time"]) == (0.785, 0.743, 8.9)
    assert "greedy's path stopped" in r["oracle"]
    assert (r["greedy_report_drop_pp"], r["tfprec_report_drop_pp"]) == (0.69, 0.33)
    assert r["budgets"] == [(0.5, pytest.approx(0.9911), pytest.approx(0.9915), 0.664)]
    # the n/a forms: no ratio
    na = PEERS_LINES.replace("mnist_mlp_verdict_cost: yes (tfprec/greedy cost 0.785",
                             "mnist_mlp_verdict_cost: n/a (tfprec found no plan")
    na = na.replace("mnist_mlp_verdict_time: no (", "mnist_mlp_verdict_time: n/a (")
    r = peers_splits.results_from_lines(na.splitlines())[0]
    assert r["ratio_cost"] is None
    assert r["ratio_time"] is None
    first = PEERS_LINES.split("total_seconds")[0]
    with pytest.raises(ValueError, match="two complete runs of mnist_mlp with "
                                         "--split_seed 3"):
        peers_splits.results_from_lines((first + first).splitlines())
    bad = first.replace("p = 0.664", "p = ?")
    with pytest.raises(ValueError, match="not a peers.py line: 'mnist_mlp_budget_0_report"):
        peers_splits.results_from_lines(bad.splitlines())


def test_peers_splits_refuses_bad_seeds(capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import peers
    import peers_splits
    for seeds, msg in (("1,x", "--seeds must be comma-separated integers"),
                       ("1,-2", "--seeds must be distinct integers >= 0, got '1,-2'"),
                       ("3,3", "--seeds must be distinct integers >= 0, got '3,3'")):
        with pytest.raises(SystemExit):
            peers_splits.main(["--nets", "mnist_mlp", "--seeds", seeds])
        assert msg in capsys.readouterr().err
    for flags in (["--split_seed", "2"], ["--split_seed=2"]):
        with pytest.raises(SystemExit):
            peers_splits.main(["--nets", "mnist_mlp", *flags])
        assert "--split_seed: give the seeds with --seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        peers_splits.main(["--logs", "no_such_peers_output.txt"])
    assert "--logs: cannot read 'no_such_peers_output.txt'" in capsys.readouterr().err
    # peers.py's own flag errors come before any run
    with pytest.raises(SystemExit):
        peers_splits.main(["--nets", "mnist_mlp", "--select", "-5"])
    assert "--select must be a count >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        peers.main(["--nets", "mnist_mlp", "--split_seed", "-1"])
    assert "--split_seed must be >= 0, got -1" in capsys.readouterr().err


def test_plan_speed_benchmark_flags(capsys):
    """benchmarks/plan_speed.py: its targets in octaves from 0.34 pp, and a
    clear error for an unknown network, a bad target list or repeats."""
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import plan_speed
    a = plan_speed.parse_args(["--nets", "mnist_mlp", "--targets", "0,1,-0.5"])
    assert a.nets == ["mnist_mlp"]
    assert a.targets == pytest.approx([0.0034, 0.0068, 0.0034 / math.sqrt(2)])
    for argv, msg in ((["--nets", "mnist_mlp,resnet"], "unknown network(s) ['resnet']"),
                      (["--targets", "0,x"], "--targets: comma-separated octaves"),
                      (["--repeats", "0"], "--repeats must be >= 1, got 0")):
        with pytest.raises(SystemExit):
            plan_speed.parse_args(argv)
        assert msg in capsys.readouterr().err


def test_zoo_benchmark_flags(capsys):
    """benchmarks/zoo.py: its model list, clear errors for an unknown model
    or too few examples (test_zoo_benchmark_runs_a_model: one model run)."""
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import zoo
    a = zoo.parse_args(["--models", "tutorial_uint8, mixed_float16"])
    assert a.models == ["tutorial_uint8", "mixed_float16"]
    default = zoo.parse_args([]).models
    assert default[-1] == "regnetx002" and len(default) == 9
    assert "convnexttiny" not in default and "vgg16" in zoo.MODELS
    for argv, msg in ((["--models", "mixed_float16,vgg99"], "unknown ['vgg99']"),
                      (["--examples", "100"], "--examples=100: needs more than 128")):
        with pytest.raises(SystemExit):
            zoo.parse_args(argv)
        assert msg in capsys.readouterr().err


@pytest.mark.slow   # default-suite time (< 5 min)
def test_zoo_benchmark_runs_a_model(capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(EXAMPLES), "benchmarks"))
    import zoo
    assert zoo.main(["--models", "mixed_float16", "--examples", "160"]) == 0
    out = capsys.readouterr().out
    assert "mixed_float16_zoo: ok, 3 weight ops" in out and "zoo_ok: 1 of 1" in out
