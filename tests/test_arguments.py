"""Out-of-domain public planning arguments (issue 12): every one raises a
tfprec error naming the argument, in the command line's words, instead of
being truncated, accepted or crashing later.

Pure arithmetic on hand-made gains (no TensorFlow pass), except the
calibrate checks, which use a tiny untrained Dense 8-4-3 MLP and refuse
before any data pass.
"""
import math

import numpy as np
import pytest

import tfprec
from tfprec import inputs
from tfprec._tf import keras
from tfprec.errors import InvalidDataError, PlanError
from tfprec.planning import budget as budget_lib
from tfprec.planning import calibrate as calibrate_lib
from tfprec.planning import cost_aware as cost_aware_lib
from tfprec.planning import select as select_lib
from tfprec.statistics.gains import LayerGains, NoiseGains

L = keras.layers


def fake_gains(per_example: bool = False) -> NoiseGains:
    layers = tuple(LayerGains(
        name=f"l{i}", layer_class="Dense", e_w=gw, e_a=ga, r_w=1.0, r_a=1.0,
        act_signed=False, act_range_source="known bound", act_low=0.0,
        act_high=2.0, weight_max_abs=1.0, dot_length=4, num_dots=2,
        num_weights=8, num_inputs=3) for i, (gw, ga) in enumerate([(4.0, 1.0),
                                                                   (64.0, 16.0)]))
    ex = np.full((4, 2), 1.0) if per_example else None
    return NoiseGains(layers, 100, 10, 0, example_w=ex, example_a=ex)


G = fake_gains()
PLAN_FUNCS = {
    "paper_plan": tfprec.paper_plan, "uniform_plan": tfprec.uniform_plan,
    "icml2017_plan": tfprec.icml2017_plan, "cost_aware_plan": tfprec.cost_aware_plan,
    "per_example_cost_aware_plan": lambda g, *a, **k:
        tfprec.per_example_cost_aware_plan(fake_gains(True) if g is G else g, *a, **k),
    "make_plan": lambda g, t=0.01, **k: tfprec.make_plan(g, "paper", t, **k),
}
BAD_TARGETS = [1.5, 2, 0, 0.0, -0.01, float("nan"), float("inf"), True, False,
               "0.01", None, [0.01]]
BAD_BITS = [3.5, 8.0, float("nan"), True, 0, 1, 17, 40, -4, "4", None, np.float32(4)]
BAD_MAX_BITS = [17, 32, 8.5, None, True, 1, "16", float("nan")]
NOT_GAINS = [None, {"layers": []}, [1, 2], "gains", 3.0]


# ------------------------------------------------------------ targets
@pytest.mark.parametrize("fn", sorted(PLAN_FUNCS))
@pytest.mark.parametrize("target", BAD_TARGETS, ids=repr)
def test_targets_out_of_domain(fn, target):
    with pytest.raises(PlanError, match=r"^target must be a probability in \(0, 1\], "
                                        r"got " + _re(repr(target)) + "$"):
        PLAN_FUNCS[fn](G, target)


def test_target_one_is_allowed_and_message_matches_cli_words():
    assert tfprec.paper_plan(G, 1.0).target == 1.0
    with pytest.raises(PlanError) as e:
        tfprec.cost_aware_plan(G, 1.5)
    assert str(e.value) == "target must be a probability in (0, 1], got 1.5"


@pytest.mark.parametrize("target", [1.5, 0, float("nan"), True])
def test_select_and_calibrate_targets(target):
    with pytest.raises(PlanError, match=r"target must be a probability in \(0, 1\]"):
        select_lib.analytic_plans(G, target)
    with pytest.raises(PlanError, match=r"target_mismatch must be a probability in "
                                        r"\[0, 1\]"):
        calibrate_lib._check_target(target if target != 0 else -1, None, True)


# ------------------------------------------------------------ bit widths
@pytest.mark.parametrize("arg,fn", [("b_min", tfprec.paper_plan),
                                    ("bits", tfprec.uniform_plan),
                                    ("act_bits", tfprec.icml2017_plan)])
@pytest.mark.parametrize("value", BAD_BITS, ids=repr)
def test_level_bits_never_truncated(arg, fn, value):
    if value is None:                   # None means "search the level"
        return
    with pytest.raises(PlanError, match=rf"^{arg} must be an int number of bits in "
                                        r"2\.\.16, got "):
        fn(G, **{arg: value})


@pytest.mark.parametrize("fn", sorted(PLAN_FUNCS))
@pytest.mark.parametrize("max_bits", BAD_MAX_BITS, ids=repr)
def test_max_bits_out_of_range(fn, max_bits):
    with pytest.raises(PlanError, match=r"^max_bits must be an int number of bits in "
                                        r"2\.\.16, got " + _re(repr(max_bits))):
        PLAN_FUNCS[fn](G, 0.01, max_bits=max_bits)


@pytest.mark.parametrize("max_bits", BAD_MAX_BITS, ids=repr)
def test_max_bits_in_level_searches(max_bits):
    for call in (lambda: budget_lib.rule_levels(G, "paper", max_bits),
                 lambda: budget_lib.smallest_bound_plan(G, "paper", 1e3,
                                                        max_bits=max_bits),
                 lambda: select_lib.analytic_plans(G, 0.01, max_bits=max_bits)):
        with pytest.raises(PlanError, match="max_bits must be an int number of bits"):
            call()


@pytest.mark.parametrize("level", [0, 40, 3.5, True, "4", None, float("nan")], ids=repr)
def test_sweep_levels(level):
    with pytest.raises(PlanError, match=r"level must be an int number of bits in "
                                        r"2\.\.16, got " + _re(repr(level))):
        budget_lib.rule_plan(G, "uniform", level)
    with pytest.raises(PlanError, match=r"b_mins\[1\] must be an int number of bits"):
        inputs.bit_levels("b_mins", [4, level])
    assert inputs.bit_levels("b_mins", range(2, 5)) == [2, 3, 4]
    with pytest.raises(PlanError, match="b_mins must be a list or range"):
        inputs.bit_levels("b_mins", "2-12")


def test_with_bits():
    plan = tfprec.paper_plan(G, 0.01)
    with pytest.raises(PlanError, match=r"no layers named \['fc9'\]; it has "
                                        r"\['l0', 'l1'\]"):
        plan.with_bits(weight_bits={"fc9": 4})
    with pytest.raises(PlanError, match=r"no layers named \['zz'\]"):
        plan.with_bits(act_bits={"l0": 4, "zz": 5})
    for b in (3.5, True, 0, 17, "4", float("nan")):
        with pytest.raises(PlanError, match=r"weight_bits\['l1'\] must be an int "
                                            r"number of bits in 2\.\.16"):
            plan.with_bits(weight_bits={"l1": b})
        with pytest.raises(PlanError, match=r"act_bits\['l0'\] must be an int"):
            plan.with_bits(act_bits={"l0": b})
    with pytest.raises(PlanError, match="weight_bits must be a dict"):
        plan.with_bits(weight_bits=["l0"])
    assert plan.with_bits(weight_bits={"l0": 5}).layer("l0").weight_bits == 5


# ------------------------------------------------------------ not gains
@pytest.mark.parametrize("fn", sorted(PLAN_FUNCS))
@pytest.mark.parametrize("gains", NOT_GAINS, ids=repr)
def test_not_gains(fn, gains):
    with pytest.raises(PlanError, match=r"^gains must be a tfprec\.NoiseGains .*got "):
        PLAN_FUNCS[fn](gains, 0.01)


@pytest.mark.parametrize("gains", NOT_GAINS, ids=repr)
def test_not_gains_elsewhere(gains):
    plan = tfprec.paper_plan(G, 0.01)
    for call in (lambda: tfprec.planning.rules.paper_offsets(gains),
                 lambda: budget_lib.rule_levels(gains, "paper"),
                 lambda: budget_lib.smallest_bound_plan(gains, "paper", 1e3),
                 lambda: budget_lib.default_targets(gains, 0.1),
                 lambda: select_lib.analytic_plans(gains, 0.01),
                 lambda: select_lib.budget_plans(gains, 1e3),
                 lambda: tfprec.per_example_bound(plan, gains)):
        with pytest.raises(PlanError, match="gains must be a tfprec.NoiseGains"):
            call()
    with pytest.raises(PlanError, match="plan must be a tfprec PrecisionPlan"):
        tfprec.per_example_bound(None, fake_gains(True))


# ------------------------------------------------------------ choices
def test_method_cost_and_convention_choices():
    with pytest.raises(PlanError, match="unknown plan method 'x'"):
        tfprec.make_plan(G, "x")
    with pytest.raises(PlanError, match=r"^cost must be one of \('compute', 'memory'\), "
                                        r"got 'x'$"):
        tfprec.cost_aware_plan(G, 0.01, cost="x")
    with pytest.raises(PlanError, match=r"^memory_convention must be one of "):
        tfprec.cost_aware_plan(G, 0.01, memory_convention="x")
    with pytest.raises(PlanError, match=r"^cost must be one of"):
        select_lib.cheapest({"paper": tfprec.paper_plan(G, 0.01)}, cost="area")
    with pytest.raises(PlanError, match=r"methods must be a list or tuple .* got "
                                        r"'paper'; pass \('paper',\)"):
        select_lib.analytic_plans(G, 0.01, methods="paper")
    with pytest.raises(PlanError, match=r"methods must be one of .* got 'x'"):
        select_lib.analytic_plans(G, 0.01, methods=("paper", "x"))
    with pytest.raises(PlanError, match="methods lists a name twice"):
        select_lib.budget_plans(G, 1e3, methods=("paper", "paper"))
    with pytest.raises(PlanError, match=r"method must be one of .* got 'x'"):
        budget_lib.smallest_bound_plan(G, "x", 1e3)
    with pytest.raises(PlanError, match=r"plans\['paper'\] must be a PrecisionPlan"):
        select_lib.tightest({"paper": None})


# ------------------------------------------------------------ numbers and counts
@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "1e3", None],
                         ids=repr)
def test_budgets_and_steps(bad):
    with pytest.raises(PlanError, match=r"^budget must be a positive finite number of "
                                        r"full adders, got "):
        budget_lib.cost_aware_at_budget(G, bad)
    with pytest.raises(PlanError, match=r"^log_width must be a positive finite number"):
        budget_lib.smallest_bound_plan(G, "cost_aware", 1e3, log_width=bad)
    with pytest.raises(PlanError, match=r"^target must be a positive finite number"):
        cost_aware_lib.cost_aware_at_level(G, bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None], ids=repr)
def test_counts(bad):
    with pytest.raises(InvalidDataError, match=r"^per_decade must be a positive int"):
        budget_lib.default_targets(G, 0.1, per_decade=bad)
    with pytest.raises(InvalidDataError, match=r"^tolerance_pp must be a non-negative"):
        budget_lib.default_targets(G, -1 if bad is None else -abs(float(bad)) - 1)


def test_level_above_one_is_internal_only():
    """The level searches may use bound levels above 1; users may not."""
    assert cost_aware_lib.cost_aware_at_level(G, 5.0).target == 5.0
    with pytest.raises(PlanError, match="target must be a probability"):
        tfprec.cost_aware_plan(G, 5.0)
    plan, _ = budget_lib.smallest_bound_plan(G, "cost_aware", 1e9)
    assert plan is not None


# ------------------------------------------------------------ calibrate
@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    out = L.Dense(3, name="fc2")(L.Dense(4, activation="relu", name="fc1")(inp))
    return keras.Model(inp, out)


@pytest.mark.parametrize("kw,err,msg", [
    (dict(target_mismatch=1.5), PlanError, r"target_mismatch must be a probability in \[0, 1\], got 1.5"),
    (dict(target_mismatch=float("nan")), PlanError, "target_mismatch must be a probability"),
    (dict(target_mismatch=True), PlanError, "target_mismatch must be a probability"),
    (dict(target_mismatch=0.1, methods="paper"), PlanError, "methods must be a list or tuple"),
    (dict(target_mismatch=0.1, methods=("x",)), PlanError, "unknown calibration family 'x'"),
    (dict(target_mismatch=0.1, cost="x"), PlanError, r"cost must be one of"),
    (dict(target_mismatch=0.1, max_bits=8.5), PlanError, "max_bits must be an int"),
    (dict(target_mismatch=0.1, grid_per_octave=0), InvalidDataError, "grid_per_octave must be a positive int"),
    (dict(target_mismatch=0.1, greedy_budget=-1), InvalidDataError, "greedy_budget must be a non-negative int"),
    (dict(target_mismatch=0.1, batch_size=2.0), InvalidDataError, "batch_size must be a positive int"),
    (dict(target_mismatch=0.1, allow_fingerprint_mismatch="yes"), PlanError,
     "allow_fingerprint_mismatch must be true or false"),
])
def test_calibrate_arguments(tiny, kw, err, msg):
    x = np.zeros((4, 8), "float32")
    with pytest.raises(err, match=msg):
        calibrate_lib.calibrate(tiny, G, x, **kw)


@pytest.mark.parametrize("gains", NOT_GAINS, ids=repr)
def test_calibrate_not_gains(tiny, gains):
    with pytest.raises(PlanError, match="gains must be a tfprec.NoiseGains"):
        calibrate_lib.calibrate(tiny, gains, np.zeros((4, 8), "float32"),
                                target_mismatch=0.1)


# ------------------------------------------------------------ inputs helpers
def test_inputs_helpers_error_class_and_words():
    with pytest.raises(PlanError, match=r"^x must be a probability in \(0, 1\], got 2$"):
        inputs.probability("x", 2, error=PlanError)
    with pytest.raises(InvalidDataError, match=r"^n must be a positive int, got True$"):
        inputs.positive_int("n", True)
    with pytest.raises(InvalidDataError, match="flag must be true or false"):
        inputs.flag("flag", "no")
    assert inputs.flag("flag", np.bool_(True)) is True
    with pytest.raises(InvalidDataError, match="info must be JSON-serializable"):
        inputs.json_compatible("info", {"a": {1}})
    assert math.isclose(inputs.positive_number("t", np.float32(0.5)), 0.5)


def _re(text: str) -> str:
    import re
    return re.escape(text)


def test_gains_strategy_and_sweep_levels_are_checked():
    """noise_gains(strategy="x") and fractional sweep levels are named errors,
    not an AttributeError or a silent truncation to int."""
    import tfprec
    from tfprec.errors import InvalidDataError, PlanError
    from tfprec.quantization import validate as validate_lib
    from tfprec._tf import keras
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(5, activation="relu")(inp)))
    x = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
    with pytest.raises(InvalidDataError, match="strategy must be a tf.distribute.Strategy"):
        tfprec.noise_gains(model, x, strategy="x")
    gains = tfprec.noise_gains(model, x)
    for bad in ([3.5], [0], [40], [True]):
        with pytest.raises(PlanError, match=r"b_mins\[0\]"):
            validate_lib.sweep(model, gains, x, b_mins=bad)
    with pytest.raises(PlanError, match="level"):
        validate_lib.plan_at_level(gains, "paper", 4.5)
