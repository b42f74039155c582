"""report.md and the figures, from synthetic gains, plans and validation rows
(no model is run, so these tests are fast)."""
import os

import pytest

import tfprec
from tfprec.application import report as R
from tfprec.statistics.gains import LayerGains, NoiseGains
from tfprec.quantization.validate import ValidationResult


def fake_gains():
    geo = [("fc1", 785, 64, 50240, 784, 0.5, False, "calibrated"),
           ("fc2", 65, 64, 4160, 64, 1.0, False, "known bound"),
           ("logits", 65, 10, 650, 64, 1.0, True, "calibrated")]
    gs = [(40.0, 5.0), (11.0, 9.0), (9.0, 0.9)]
    layers = tuple(LayerGains(
        name=n, layer_class="Dense", e_w=gw * 16, e_a=ga / ra ** 2, r_w=0.25, r_a=ra,
        act_signed=signed, act_range_source=src, act_low=-1.0 if signed else 0.0,
        act_high=2 * ra, weight_max_abs=0.2, dot_length=d, num_dots=p,
        num_weights=nw, num_inputs=ni)
        for (n, d, p, nw, ni, ra, signed, src), (gw, ga) in zip(geo, gs))
    return NoiseGains(layers, 500, 10, 0)


def vrow(plan, k, n=1000, fa=0.95, qa=0.94, level=None):
    c = plan.cost()
    return ValidationResult(
        method=plan.method, b_min=plan.b_min, bound=plan.bound(), num_examples=n,
        num_mismatch=k, mismatch_rate=k / n, float_accuracy=fa, quant_accuracy=qa,
        compute_cost=c.total_compute, memory_cost=c.total_memory, level=level)


@pytest.fixture(scope="module")
def case():
    g = fake_gains()
    plans = {m: tfprec.make_plan(g, m, 0.01) for m in ("cost_aware", "paper",
                                                       "uniform", "icml2017")}
    chosen = plans["cost_aware"]
    val = vrow(chosen, 2)
    comps = [R.PlanSummary.from_plan(p, vrow(p, i), chosen=(m == "cost_aware"))
             for i, (m, p) in enumerate(plans.items())]
    sweep = []
    for method, make in (("paper", lambda b: tfprec.paper_plan(g, b_min=b)),
                         ("uniform", lambda b: tfprec.uniform_plan(g, bits=b)),
                         ("icml2017", lambda b: tfprec.icml2017_plan(g, act_bits=b))):
        for b, k in zip((2, 4, 6, 8), (300, 40, 0, 1)):
            p = make(b)
            sweep.append(vrow(p, k, qa=0.95 - k / 1000, level=b))
    return g, chosen, val, comps, sweep


def _ucl_by_bisection(k, n, confidence=0.95):
    """The u with P(Binomial(n, u) <= k) = 1 - confidence, by bisection on
    scipy's binomial CDF (decreasing in u)."""
    from scipy.stats import binom
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if binom.cdf(k, n, mid) > 1 - confidence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("k,n", [(1, 2000), (7, 300), (3, 10), (299, 300), (50, 100)])
def test_mismatch_ucl_solves_the_binomial_tail(k, n):
    assert R.mismatch_ucl(k, n) == pytest.approx(_ucl_by_bisection(k, n), rel=1e-7)
    assert R.mismatch_ucl(k, n, 0.99) == pytest.approx(_ucl_by_bisection(k, n, 0.99),
                                                       rel=1e-7)
    assert k / n < R.mismatch_ucl(k, n) < 1.0


def test_mismatch_ucl_closed_forms_and_edges():
    for n in (1, 2, 1000):           # k = 0: (1 - u)^n = 1 - confidence
        assert R.mismatch_ucl(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-9)
    assert R.mismatch_ucl(300, 300) == 1.0 and R.mismatch_ucl(1, 1) == 1.0
    assert R.mismatch_ucl(0, 0) is None          # nothing measured
    assert R.mismatch_ucl(5, 3) is None          # inconsistent counts


def test_plan_level_and_family():
    g = fake_gains()
    assert R.plan_level(tfprec.paper_plan(g, b_min=5)) == 5
    assert R.plan_level(tfprec.uniform_plan(g, bits=7)) == 7
    ic = tfprec.icml2017_plan(g, act_bits=6)
    assert R.plan_level(ic) == 6
    assert R.plan_level(tfprec.cost_aware_plan(g, 0.01)) is None
    assert R.base_method("cost_aware:memory") == "cost_aware"
    assert R.base_method("cost_aware:compute+measured_greedy") == "measured_greedy"


def test_layer_table_text_has_every_layer_and_total(case):
    g, plan, *_ = case
    text = R.layer_table_text(plan, g)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["layer", "B_W", "B_A", "G_W", "G_A"]
    for l in plan.layers:
        row = next(x for x in lines if x.startswith(l.name + " "))
        assert str(l.weight_bits) in row.split()
        assert f"{plan.cost().compute[l.name]:,.0f}" in row
    assert f"{plan.cost().total_compute:,.0f}" in lines[-2]
    assert "[0, 1)" in text            # fc1 unsigned input, R_A = 0.5
    assert "[-1, 1)" in text           # logits signed input


def test_report_markdown_sections(case, tmp_path):
    g, plan, val, comps, sweep = case
    out = R.write_report(tmp_path, plan, gains=g, validation=val, comparisons=comps,
                         sweep_rows=sweep, model_info={"model": "`toy`"},
                         data_info={"data": "synthetic"},
                         settings={"target": "analytic bound <= 0.01",
                                   "allocation": "best", "cost": "compute",
                                   "reference_costs": {"16-bit": (1e9, 1e7)}},
                         timings={"gains": 1.25}, files=["plan.json"], plots=False)
    assert out == {"report": str(tmp_path / "report.md"), "figures": []}
    text = (tmp_path / "report.md").read_text()
    for head in ("## Summary", "## Model and data", "## Per-layer plan",
                 "## Validation: bound against measurement", "## Plans compared",
                 "## Sweep of the precision level", "## Run"):
        assert head in text
    assert "| layer | class | E_W | E_A | G_W | G_A | B_W | B_A |" in text
    for l in plan.layers:
        assert f"| {l.name} | Dense |" in text
    # validation numbers: counts, rate, UCL and the bound side by side
    assert "| changed decisions | 2 |" in text
    assert "| measured mismatch | 0.0020 |" in text
    assert f"{R.mismatch_ucl(2, 1000):.4f}" in text
    assert f"| analytic bound | {plan.bound():.4g} |" in text
    assert "| float accuracy | 95.00 % |" in text
    assert "| fixed-point accuracy | 94.00 % |" in text
    # every compared plan, the chosen one marked
    assert "**cost_aware:compute** (chosen)" in text
    for m in ("paper", "uniform", "icml2017"):
        assert f"| {m} |" in text
    # sweep rows for the rule and the baselines; the violated row is flagged
    assert "| paper | B_min=4 |" in text and "| uniform | B=8 |" in text
    assert "| icml2017 | B_A=6 |" in text
    assert "**no**" in text and "exceeds the bound" in text
    assert "16-bit would cost" in text
    assert "![" not in text            # no figures without plots


def test_report_includes_export_markdown(case, tmp_path):
    g, plan, val, *_ = case

    class FakeExport:
        path = "/x/model.tflite"
        file_size_bytes = 1234
        grid_check_passed = True
        sim_agreement = 1.0

        def to_markdown(self):
            return "### TFLite export: `model.tflite`\n\nEXPORT TABLE\n"

    R.write_report(tmp_path, plan, validation=val, export_report=FakeExport(),
                   plots=False)
    text = (tmp_path / "report.md").read_text()
    assert "## TFLite export" in text and "EXPORT TABLE" in text
    assert "1234 bytes, grid checks passed" in text


def test_report_from_calibration_like_rows(case, tmp_path):
    g, plan, val, *_ = case

    class CP:                          # the fields of calibrate.CalibratedPlan
        method, level, num_examples, num_mismatch = "paper", 5, 400, 3
        measured_mismatch, mismatch_ucl = 3 / 400, 0.02
        float_accuracy, quant_accuracy = 0.9, 0.895
        guarantee = "measured on 400 held-out examples"

    cp = CP()
    cp.plan = tfprec.paper_plan(g, b_min=5)
    cp.bound = cp.plan.bound()
    cp.compute_cost = cp.plan.cost().total_compute
    cp.memory_cost = cp.plan.cost().total_memory
    s = R.PlanSummary.from_calibrated(cp, chosen=True)
    assert (s.level, s.num_mismatch, s.mismatch_ucl, s.family) == (5, 3, 0.02, "paper")
    R.write_report(tmp_path, cp.plan, comparisons=[s], plots=False)
    text = (tmp_path / "report.md").read_text()
    assert "| **paper** (chosen) | B_min=5 |" in text
    assert "0.0075 (3/400)" in text


def test_figures_are_written_and_readable(case, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    g, plan, val, comps, sweep = case
    out = R.write_report(tmp_path, plan, gains=g, validation=val, comparisons=comps,
                         sweep_rows=sweep, settings={"target_probability": 0.01},
                         plots=True)
    names = sorted(os.path.basename(f) for f in out["figures"])
    assert names == sorted(R.FIGURES)
    for f in out["figures"]:
        img = imread(f)
        assert img.shape[0] > 300 and img.shape[1] > 500
        assert img.std() > 0.05        # not blank
    text = (tmp_path / "report.md").read_text()
    for n in R.FIGURES:
        assert f"]({n})" in text
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tfprec-")]


def test_figures_without_sweep_or_measurements(case, tmp_path):
    pytest.importorskip("matplotlib")
    g, plan, *_ = case
    paths = R.write_figures(tmp_path, plan)
    assert [os.path.basename(p) for p in paths] == [R.FIG_BITS]


def test_no_figures_when_matplotlib_missing(case, tmp_path, monkeypatch):
    g, plan, val, comps, sweep = case
    monkeypatch.setattr(R, "have_matplotlib", lambda: False)
    out = R.write_report(tmp_path, plan, validation=val, comparisons=comps,
                         sweep_rows=sweep)
    assert out["figures"] == []
    assert sorted(os.listdir(tmp_path)) == ["report.md"]


def test_mostly_float_export_gets_one_plain_line():
    """Issue 11: an export whose weights are mostly float32 says so, with the
    flag that changes it; the share is by weight count (independent recount)."""
    import types
    from tfprec.application import report as report_lib
    plan = types.SimpleNamespace(layers=[
        types.SimpleNamespace(name="a", num_weights=300),
        types.SimpleNamespace(name="b", num_weights=100)])
    exact = types.SimpleNamespace(layers=[
        types.SimpleNamespace(name="a", weight_dtype="float32"),
        types.SimpleNamespace(name="b", weight_dtype="int8")])
    aeq = types.SimpleNamespace(backend="ai_edge_quantizer", layers=[
        types.SimpleNamespace(name="a", weight_type="int4"),
        types.SimpleNamespace(name="b", weight_type="float")])
    assert report_lib.float_weight_share(exact, plan) == 300 / 400
    assert report_lib.float_weight_share(aeq, plan) == 100 / 400
    line = report_lib.mostly_float_line(exact, plan)
    assert line.startswith("the TFLite file is mostly float: 75 % of the weights")
    assert "--max_bits=8" in line
    assert report_lib.mostly_float_line(aeq, plan) is None
    assert report_lib.export_backend(exact) == "exact"
    assert report_lib.export_backend(aeq) == "ai_edge_quantizer"
