"""Plan integrity (issue 12): plan JSON validated up front, NoiseGains.from_dict
on bad data, and plans bound to the weights they were made from (fingerprint).

Tiny models only (a Dense 8-4-3 MLP on random data), so the file runs in
seconds.
"""
import copy
import json
import math

import numpy as np
import pytest

import tfprec
from tfprec._tf import keras
from tfprec.errors import InvalidDataError, PlanError
from tfprec.planning.plan import PrecisionPlan
from tfprec.statistics.gains import NoiseGains, model_fingerprint

L = keras.layers


def mlp(seed: int, bn: bool = False):
    """Dense 8-4-3 MLP with weights drawn from ``seed``."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8,))
    h = L.Dense(4, name="fc1")(inp)
    if bn:
        h = L.BatchNormalization(name="bn")(h)
    h = L.ReLU(name="relu")(h)
    out = L.Dense(3, name="fc2")(h)
    return keras.Model(inp, out, name="mlp")


@pytest.fixture(scope="module")
def setup():
    x = np.random.default_rng(0).normal(size=(256, 8)).astype("float32")
    m = mlp(1)
    g = tfprec.noise_gains(m, x, batch_size=256)
    return m, g, x, tfprec.paper_plan(g, 0.05)


# ------------------------------------------------------------ fingerprint
def test_gains_and_plans_carry_the_fingerprint(setup):
    m, g, _, plan = setup
    fp = model_fingerprint(m)
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 64
    assert g.fingerprint == fp and plan.fingerprint == fp
    for p in (tfprec.uniform_plan(g, 0.05), tfprec.icml2017_plan(g, 0.05),
              tfprec.cost_aware_plan(g, 0.05), tfprec.make_plan(g, "cost_aware", 0.05),
              plan.with_bits(weight_bits={"fc1": 8})):
        assert p.fingerprint == fp, p.method
    plan.validate_for(m)                         # same model: passes


def test_plan_refused_on_reinitialized_model_accepted_with_override(setup):
    m, g, x, plan = setup
    other = mlp(2)                               # same architecture, other weights
    with pytest.raises(PlanError, match=r"plan was made for other weights.*"
                                        r"allow_fingerprint_mismatch=True"):
        plan.validate_for(other)
    # quantize_model (and so every (model, plan) entry) goes through validate_for
    with pytest.raises(PlanError, match="other weights"):
        tfprec.quantize_model(other, plan)
    plan.validate_for(other, allow_fingerprint_mismatch=True)
    with pytest.raises(PlanError, match="allow_fingerprint_mismatch"):
        plan.validate_for(other, allow_fingerprint_mismatch="yes")


def test_scaled_weights_name_the_saturating_layers(setup):
    m, _, _, plan = setup
    big = mlp(1)
    big.set_weights([w * 4.0 for w in m.get_weights()])
    with pytest.raises(PlanError, match=r"other weights.*'fc1' \(max \|w\|.*"
                                        r"would saturate"):
        plan.validate_for(big)


def test_edited_weight_range_is_refused_even_with_same_fingerprint(setup):
    m, _, _, plan = setup
    d = plan.to_dict()
    d["layers"][0]["weight_range"] = d["layers"][0]["weight_range"] / 8
    edited = PrecisionPlan.from_dict(d)
    with pytest.raises(PlanError, match=r"does not fit model 'mlp'.*'fc1'.*saturate"):
        edited.validate_for(m)


def test_save_load_keeps_fingerprint_old_files_skip_the_check(setup, tmp_path):
    m, g, _, plan = setup
    path = str(tmp_path / "plan.json")
    plan.save(path)
    back = PrecisionPlan.load(path)
    assert back.fingerprint == plan.fingerprint and back == plan
    with pytest.raises(PlanError, match="other weights"):
        back.validate_for(mlp(3))
    old = json.loads(open(path).read())
    del old["fingerprint"]                       # a plan written before the field
    open(path, "w").write(json.dumps(old))
    legacy = PrecisionPlan.load(path)
    assert legacy.fingerprint is None
    legacy.validate_for(mlp(3))                  # not checked, no error
    hand = PrecisionPlan(plan.layers, "hand")    # made by hand: not checked
    hand.validate_for(mlp(3))


def test_gains_dict_round_trip_keeps_fingerprint(setup):
    _, g, _, _ = setup
    back = NoiseGains.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back.fingerprint == g.fingerprint
    assert tfprec.paper_plan(back, 0.05).fingerprint == g.fingerprint
    d = g.to_dict()
    del d["fingerprint"]
    assert NoiseGains.from_dict(d).fingerprint is None


def test_fingerprint_survives_bn_folding():
    m = mlp(4, bn=True)
    bn = m.get_layer("bn")
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4),
                    rng.normal(size=4), rng.uniform(0.5, 2, 4)])
    assert model_fingerprint(tfprec.fold_batchnorm(m)) == model_fingerprint(m)
    bn.set_weights([w * 1.5 for w in bn.get_weights()])   # BN statistics count
    assert model_fingerprint(tfprec.fold_batchnorm(m)) != model_fingerprint(mlp(4, True))


@pytest.mark.slow
def test_validate_and_calibrate_check_fingerprint_and_override(setup):
    m, g, x, plan = setup
    x = x[:32]
    other = mlp(2)
    with pytest.raises(PlanError, match="other weights"):
        tfprec.validate.validate(other, plan, x)
    with pytest.raises(PlanError, match="other weights"):
        tfprec.calibrate.calibrate(other, g, x, target_mismatch=0.5,
                                   methods=("uniform",))
    res = tfprec.calibrate.calibrate(other, g, x, target_mismatch=0.5,
                                     methods=("uniform",),
                                     allow_fingerprint_mismatch=True)
    assert res.best.plan.fingerprint is None


# ------------------------------------------------------------ plan JSON
def _layer_edit(i, key, value):
    def f(d):
        d["layers"][i][key] = value
    return f


def _top_edit(key, value):
    def f(d):
        d[key] = value
    return f


def _drop(key):
    def f(d):
        del d[key]
    return f


BAD_PLAN_DICTS = [
    (_layer_edit(0, "act_signed", "no"), r"'fc1'.*act_signed must be true or false"),
    (_layer_edit(0, "act_signed", 1), r"'fc1'.*act_signed must be true or false"),
    (_layer_edit(1, "weight_bits", 3.5), r"'fc2'.*weight_bits must be an int"),
    (_layer_edit(1, "act_bits", True), r"'fc2'.*act_bits must be an int"),
    (_layer_edit(0, "weight_bits", 17), r"'fc1'.*weight_bits must be an int .* 2\.\.16"),
    (_layer_edit(0, "dot_length", "9"), r"'fc1'.*dot_length must be a positive int"),
    (_layer_edit(0, "num_dots", -1), r"'fc1'.*num_dots must be a positive int"),
    (_layer_edit(0, "num_inputs_written", 2.5), r"'fc1'.*num_inputs_written"),
    (_layer_edit(0, "g_w", float("nan")), r"'fc1'.*g_w must be a non-negative"),
    (_layer_edit(0, "g_a", -1.0), r"'fc1'.*g_a must be a non-negative"),
    (_layer_edit(0, "weight_range", 3.0), r"'fc1'.*weight_range must be a positive power"),
    (_layer_edit(0, "name", 7), r"layer #0.*name must be a non-empty string"),
    (_layer_edit(0, "layer_class", None), r"'fc1'.*layer_class must be"),
    (_layer_edit(0, "act_group", ["fc1"]), r"'fc1'.*act_group must be a string"),
    (_layer_edit(0, "colour", "red"), r"'fc1'.*unknown fields \['colour'\]"),
    (lambda d: d["layers"][0].pop("act_bits"), r"'fc1'.*lacks fields \['act_bits'\]"),
    (_top_edit("layers", {"fc1": {}}), r"'layers' must be a non-empty list"),
    (_top_edit("layers", []), r"'layers' must be a non-empty list"),
    (_top_edit("layers", [[1, 2]]), r"plan layer #0 is not an object"),
    (_drop("layers"), r"'layers' must be a non-empty list"),
    (_top_edit("info", [1, 2]), r"'info' must be an object"),
    (_top_edit("target", "0.01"), r"'target' must be a positive"),
    (_top_edit("target", -0.5), r"'target' must be a positive"),
    (_top_edit("method", ["paper"]), r"'method' must be a string"),
    (_top_edit("fingerprint", 12), r"'fingerprint' must be a non-empty string"),
    (_top_edit("version", 2), r"version 2 is not supported"),
    (_drop("schema"), r"not a tfprec plan"),
]


@pytest.mark.parametrize("edit,msg", BAD_PLAN_DICTS)
def test_from_dict_refuses_bad_plan_dicts_up_front(setup, edit, msg):
    _, _, _, plan = setup
    d = json.loads(plan.to_json())
    edit(d)
    with pytest.raises(PlanError, match=msg):
        PrecisionPlan.from_dict(d)


@pytest.mark.parametrize("obj", [None, [1, 2], "plan", 3])
def test_from_dict_refuses_non_objects(obj):
    with pytest.raises(PlanError, match="not a tfprec plan"):
        PrecisionPlan.from_dict(obj)


def test_load_names_the_file(setup, tmp_path):
    _, _, _, plan = setup
    cases = {"latin1.json": b"\xff\xfe{\"schema\"", "text.json": b"not json at all",
             "list.json": b"[1, 2, 3]", "empty.json": b""}
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(PlanError, match=rf"{name}: ") as e:
            PrecisionPlan.load(str(p))
        assert str(p) in str(e.value)
    with pytest.raises(PlanError, match="not UTF-8"):
        PrecisionPlan.load(str(tmp_path / "latin1.json"))
    d = json.loads(plan.to_json())
    d["layers"][1]["act_signed"] = "no"
    p = tmp_path / "signed.json"
    p.write_text(json.dumps(d))
    with pytest.raises(PlanError, match=r"signed\.json: .*'fc2'.*act_signed"):
        PrecisionPlan.load(str(p))
    with pytest.raises(PlanError, match="cannot read plan file"):
        PrecisionPlan.load(str(tmp_path / "missing.json"))
    with pytest.raises(PlanError, match="plan JSON must be a str"):
        PrecisionPlan.from_json(None)


def test_non_json_info_refused_when_made(setup, tmp_path):
    _, _, _, plan = setup
    for info in ({"s": {1, 2}}, {"f": object()}, {"fn": len}):
        with pytest.raises(PlanError, match="info must be JSON-serializable"):
            PrecisionPlan(plan.layers, "custom", info=info)
    with pytest.raises(PlanError, match="info must be a dict"):
        PrecisionPlan(plan.layers, "custom", info=["a"])
    # numpy scalars and arrays are written as numbers and lists
    p = PrecisionPlan(plan.layers, "custom",
                      info={"n": np.int64(3), "a": np.arange(3, dtype=np.float32)})
    path = str(tmp_path / "np.json")
    p.save(path)
    assert PrecisionPlan.load(path).info == {"n": 3, "a": [0.0, 1.0, 2.0]}


# ------------------------------------------------------------ NoiseGains.from_dict
def _gains_edit(i, key, value):
    def f(d):
        d["layers"][i][key] = value
    return f


BAD_GAINS = [
    (lambda d: d.pop("num_examples"), r"lacks keys \['num_examples'\]"),
    (lambda d: d.pop("layers"), r"lacks keys \['layers'\]"),
    (lambda d: d.__setitem__("layers", {"fc1": 1}), r"'layers' must be a non-empty list"),
    (lambda d: d.__setitem__("layers", ["fc1"]), r"gains layer #0 must be a dict"),
    (lambda d: d.__setitem__("num_examples", "32"), r"'num_examples' must be a positive int"),
    (lambda d: d.__setitem__("num_classes", 1), r"'num_classes' must be at least 2"),
    (lambda d: d.__setitem__("num_ties", -1), r"'num_ties' must be a non-negative int"),
    (lambda d: d.__setitem__("dropped_softmax", "no"), r"'dropped_softmax' must be true"),
    (lambda d: d.__setitem__("fingerprint", 5), r"'fingerprint' must be a non-empty"),
    (_gains_edit(0, "e_w", -1.0), r"'fc1'.*e_w must be a non-negative"),
    (_gains_edit(1, "e_a", float("nan")), r"'fc2'.*e_a must be a non-negative"),
    (_gains_edit(0, "e_a_shared", float("inf")), r"'fc1'.*e_a_shared"),
    (_gains_edit(0, "r_w", 0.3), r"'fc1'.*r_w must be a positive power of two"),
    (_gains_edit(0, "act_signed", "yes"), r"'fc1'.*act_signed must be true or false"),
    (_gains_edit(0, "dot_length", 0), r"'fc1'.*dot_length must be a positive int"),
    (_gains_edit(0, "act_low", 5.0), r"'fc1'.*act_low .* is above act_high"),
    (_gains_edit(0, "name", ""), r"layer #0.*name must be a non-empty string"),
    (_gains_edit(0, "bogus", 1), r"'fc1'.*unknown keys \['bogus'\]"),
    (lambda d: d["layers"][1].pop("e_w"), r"'fc2'.*lacks keys \['e_w'\]"),
    (lambda d: d["layers"].append(copy.deepcopy(d["layers"][0])), r"\['fc1'\] more than once"),
]


@pytest.mark.parametrize("edit,msg", BAD_GAINS)
def test_gains_from_dict_refuses_bad_data(setup, edit, msg):
    _, g, _, _ = setup
    d = json.loads(json.dumps(g.to_dict()))
    edit(d)
    with pytest.raises(InvalidDataError, match=msg):
        NoiseGains.from_dict(d)


@pytest.mark.parametrize("obj", [None, [], "gains"])
def test_gains_from_dict_refuses_non_dicts(obj):
    with pytest.raises(InvalidDataError, match="gains must be a dict"):
        NoiseGains.from_dict(obj)


def test_plan_cost_never_fails_after_a_clean_load(setup):
    """What from_dict accepts, cost() and bound() can evaluate."""
    _, _, _, plan = setup
    back = PrecisionPlan.from_json(plan.to_json())
    assert math.isfinite(back.bound()) and back.cost().total_compute > 0


def test_save_refuses_a_plan_load_would_refuse(setup, tmp_path):
    import dataclasses
    _, _, _, plan = setup
    bad = dataclasses.replace(plan, layers=(dataclasses.replace(plan.layers[0],
                                                                weight_bits=17),)
                              + plan.layers[1:])
    path = tmp_path / "bad.json"
    with pytest.raises(PlanError, match=r"layer 'fc1': weight_bits must be an int "
                                        r"number of bits in 2\.\.16, got 17"):
        bad.save(str(path))
    assert not path.exists()
