"""Plans, bound and cost model against hand-computed values."""
import dataclasses
import itertools
import json
import math
import os

import numpy as np
import pytest

import tfprec
from tfprec.planning import cost as cost_lib
from tfprec.planning import plan as plan_lib
from tfprec.planning import rules as rules_lib
from tfprec._tf import keras
from tfprec.errors import PlanError, UnattainableTargetError
from tfprec.statistics.gains import LayerGains, NoiseGains, layer_geometry

L = keras.layers


def fake_gains(gs, geo=None):
    """NoiseGains with given (G_W, G_A) per layer (R = 1 so G = E)."""
    layers = []
    for i, (gw, ga) in enumerate(gs):
        d, p, nw, ni = (geo[i] if geo else (4, 2, 8, 3))
        layers.append(LayerGains(
            name=f"l{i}", layer_class="Dense", e_w=gw, e_a=ga, r_w=1.0, r_a=1.0,
            act_signed=False, act_range_source="known bound", act_low=0.0,
            act_high=2.0, weight_max_abs=1.0, dot_length=d, num_dots=p,
            num_weights=nw, num_inputs=ni))
    return NoiseGains(tuple(layers), 100, 10, 0)


G4 = fake_gains([(4.0, 1.0), (64.0, 16.0)])


def bits(plan):
    return [(l.weight_bits, l.act_bits) for l in plan.layers]


def test_paper_offsets_and_bmin():
    ow, oa = rules_lib.paper_offsets(G4)
    assert ow.tolist() == [1, 3] and oa.tolist() == [0, 2]
    # Equalized terms: bound = 4 * 4^(1 - B_min); <= 0.01 first at B_min = 6.
    p = tfprec.paper_plan(G4, target=0.01)
    assert bits(p) == [(7, 6), (9, 8)]
    assert p.b_min == 6
    assert p.bound() == pytest.approx(4 * 4.0 ** -5, rel=1e-12)
    assert tfprec.paper_plan(G4, b_min=5).bound() == pytest.approx(4 * 4.0 ** -4)


def test_offset_rounds_half_up():
    g = fake_gains([(2.0, 1.0)])       # 0.5 * log2(2) = 0.5 -> 1
    ow, oa = rules_lib.paper_offsets(g)
    assert ow.tolist() == [1] and oa.tolist() == [0]


def test_uniform_and_icml2017():
    u = tfprec.uniform_plan(G4, target=0.01)
    assert bits(u) == [(8, 8), (8, 8)]                 # 85 * 4^(1-B) <= 0.01
    assert u.bound() == pytest.approx(85 * 4.0 ** -7)
    assert rules_lib.icml2017_offset(G4) == 1          # sum G_W / sum G_A = 4
    i = tfprec.icml2017_plan(G4, target=0.01)
    assert bits(i) == [(8, 7), (8, 7)]                 # 136 * 4^-B_A <= 0.01
    assert i.bound() == pytest.approx(136 * 4.0 ** -7)
    assert bits(tfprec.uniform_plan(G4, bits=3)) == [(3, 3), (3, 3)]
    assert bits(tfprec.icml2017_plan(G4, act_bits=3)) == [(4, 3), (4, 3)]


def test_geometry_of_real_layers():
    m = keras.Sequential([L.Input((8, 8, 2)), L.Conv2D(4, 3),
                          L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False),
                          L.Flatten(), L.Dense(3)])
    geo = {g["name"]: g for g in layer_geometry(m)}
    c, d, f = (geo[l.name] for l in (m.layers[0], m.layers[1], m.layers[3]))
    assert (c["dot_length"], c["num_dots"], c["num_weights"], c["num_inputs"]) == \
        (19, 6 * 6 * 4, 3 * 3 * 2 * 4 + 4, 8 * 8 * 2)
    assert (d["dot_length"], d["num_dots"], d["num_weights"], d["num_inputs"]) == \
        (9, 4 * 4 * 8, 3 * 3 * 4 * 2, 6 * 6 * 4)
    assert (f["dot_length"], f["num_dots"], f["num_weights"], f["num_inputs"]) == \
        (129, 3, 128 * 3 + 3, 128)


def test_plan_cost_totals():
    g = fake_gains([(4.0, 1.0), (64.0, 16.0)], geo=[(4, 2, 8, 3), (19, 144, 76, 128)])
    p = tfprec.paper_plan(g, b_min=3)                  # bits (4,3), (6,5)
    c = p.cost()
    assert c.compute == {"l0": cost_lib.compute_cost(4, 2, 3, 4),
                         "l1": cost_lib.compute_cost(19, 144, 5, 6)}
    assert c.total_memory == 4 * 8 + 3 * 3 + 6 * 76 + 5 * 128


def bound_by_hand(g, bits):
    """sum over tensors of 4^(1-B) R^2 E from the gains' own fields; a shared
    input tensor (act_group) once, with its shared gain.  ``bits``: (B_W, B_A)
    per layer."""
    total, seen = 0.0, set()
    for l, (bw, ba) in zip(g.layers, bits):
        total += 4.0 ** (1 - bw) * l.r_w ** 2 * l.e_w
        if l.act_group in seen:
            continue
        seen.add(l.act_group or l.name)
        e = l.e_a if l.e_a_shared is None else l.e_a_shared
        total += 4.0 ** (1 - ba) * l.r_a ** 2 * e
    return total


def cost_by_hand(g, bits, kind):
    total, seen = 0, set()
    for l, (bw, ba) in zip(g.layers, bits):
        d, p = l.dot_length, l.num_dots
        if kind == "compute":
            total += p * (d * ba * bw + (d - 1) * (ba + bw + math.ceil(math.log2(d)) - 1))
        else:
            total += bw * l.num_weights + (0 if l.act_group in seen else ba * l.num_inputs)
            seen.add(l.act_group or l.name)
    return total


def brute_force_min(g, target, kind, hi):
    """Cheapest cost over every assignment of 2..hi bits meeting the target
    (readers of one tensor share its bits)."""
    lead = {}
    for i, l in enumerate(g.layers):
        lead.setdefault(l.act_group or l.name, i)
    acts = sorted(set(lead.values()))
    best = math.inf
    for ws in itertools.product(range(2, hi + 1), repeat=len(g.layers)):
        for a in itertools.product(range(2, hi + 1), repeat=len(acts)):
            ab = dict(zip(acts, a))
            bits = [(w, ab[lead[l.act_group or l.name]]) for w, l in zip(ws, g.layers)]
            if bound_by_hand(g, bits) <= target:
                best = min(best, cost_by_hand(g, bits, kind))
    return best


def test_plan_bound_is_the_sum_over_tensors():
    g = fake_gains([(4.0, 1.0), (64.0, 16.0), (2.0, 8.0)])
    g = dataclasses.replace(g, layers=g.layers[:1] + tuple(
        dataclasses.replace(l, act_group="l1+l2", e_a_shared=30.0, r_a=2.0)
        for l in g.layers[1:]))
    p = tfprec.paper_plan(g, b_min=4)
    assert p.bound() == pytest.approx(bound_by_hand(g, bits(p)), rel=1e-12)


@pytest.mark.parametrize("kind", ["compute", "memory"])
def test_cost_aware_is_optimal_by_brute_force(kind):
    g = fake_gains([(4.0, 1.0), (64.0, 16.0)], geo=[(785, 512, 785 * 512, 784),
                                                    (513, 10, 513 * 10, 512)])
    for target in (0.3, 0.05, 0.01):
        ca = tfprec.cost_aware_plan(g, target, cost=kind, max_bits=9)
        assert bound_by_hand(g, bits(ca)) <= target
        assert ca.cost().total(kind) == cost_by_hand(g, bits(ca), kind)
        assert ca.cost().total(kind) == pytest.approx(brute_force_min(g, target, kind, 9),
                                                      rel=1e-12)
        paper = tfprec.paper_plan(g, target)
        assert ca.cost().total(kind) <= paper.cost().total(kind)


@pytest.mark.parametrize("kind", ["compute", "memory"])
def test_cost_aware_with_a_shared_input_by_brute_force(kind):
    g = fake_gains([(4.0, 1.0), (64.0, 16.0), (8.0, 16.0)],
                   geo=[(17, 32, 17 * 32, 16), (33, 8, 33 * 8, 32), (33, 4, 33 * 4, 32)])
    g = dataclasses.replace(g, layers=g.layers[:1] + tuple(
        dataclasses.replace(l, act_group="l1+l2", e_a_shared=40.0) for l in g.layers[1:]))
    for target in (0.1, 0.01):
        ca = tfprec.cost_aware_plan(g, target, cost=kind, max_bits=8)
        assert ca.layer("l1").act_bits == ca.layer("l2").act_bits
        assert bound_by_hand(g, bits(ca)) <= target * (1 + 1e-12)
        best = brute_force_min(g, target, kind, 8)
        assert best <= ca.cost().total(kind) <= 1.05 * best


def test_cost_aware_cheaper_when_layer_sizes_differ():
    # A big layer with a large gain: the paper rule gives it the most bits.
    g = fake_gains([(1.0, 1.0), (64.0, 64.0)], geo=[(10, 10, 100, 10),
                                                   (1000, 1000, 10 ** 6, 1000)])
    ca = tfprec.cost_aware_plan(g, 0.01)
    assert ca.cost().total_compute < 0.95 * tfprec.paper_plan(g, 0.01).cost().total_compute


def test_unattainable_targets():
    with pytest.raises(UnattainableTargetError, match="16 bits"):
        tfprec.paper_plan(G4, target=1e-30)
    with pytest.raises(UnattainableTargetError, match="16 bits"):
        tfprec.uniform_plan(G4, target=1e-30)
    with pytest.raises(UnattainableTargetError, match="16 bits"):
        tfprec.cost_aware_plan(G4, target=1e-30)
    with pytest.raises(UnattainableTargetError, match="B_min=15"):
        tfprec.paper_plan(G4, b_min=15)               # offset 3 -> 18 bits
    with pytest.raises(PlanError, match="target"):
        tfprec.paper_plan(G4, target=-1)


def test_json_round_trip_and_file(tmp_path):
    p = tfprec.cost_aware_plan(G4, 0.01, cost="memory")
    q = tfprec.PrecisionPlan.from_json(p.to_json())
    assert q == p and q.bound() == p.bound()
    path = tmp_path / "plan.json"
    p.save(str(path))
    assert tfprec.PrecisionPlan.load(str(path)) == p
    d = json.loads(path.read_text())
    assert d["schema"] == "tfprec.plan" and d["version"] == 1
    assert d["bound"] == pytest.approx(p.bound())


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(schema="other"), "schema"),
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d["layers"][0].pop("act_bits"), "act_bits"),
    (lambda d: d["layers"][0].update(weight_bits=1), "weight_bits must be an int .* got 1"),
    (lambda d: d["layers"][1].update(act_bits=17), "act_bits must be an int .* got 17"),
    (lambda d: d["layers"][1].update(act_bits=4.5), "act_bits must be an int .* got 4.5"),
    (lambda d: d["layers"][1].update(act_bits=True), "act_bits must be an int .* got True"),
    (lambda d: d["layers"][0].update(act_range=3.0), "power of two"),
    (lambda d: d["layers"][0].update(color="red"), "unknown fields"),
    (lambda d: d["layers"][1].update(name="l0"), "twice"),
])
def test_bad_plan_json(mutate, match):
    d = tfprec.paper_plan(G4).to_dict()
    mutate(d)
    with pytest.raises(PlanError, match=match):
        tfprec.PrecisionPlan.from_dict(d)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="bad.json"):
        tfprec.PrecisionPlan.load(str(bad))
    with pytest.raises(PlanError, match="missing.json"):
        tfprec.PrecisionPlan.load(str(tmp_path / "missing.json"))


def test_save_to_unwritable_path_leaves_nothing(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    os.chmod(d, 0o500)
    try:
        if os.access(str(d), os.W_OK):
            pytest.skip("running as a user that ignores directory permissions")
        with pytest.raises(PlanError, match="ro"):
            tfprec.paper_plan(G4).save(str(d / "plan.json"))
        assert os.listdir(d) == []
    finally:
        os.chmod(d, 0o700)
    with pytest.raises(PlanError, match="no_such_dir"):
        tfprec.paper_plan(G4).save(str(tmp_path / "no_such_dir" / "plan.json"))


def _mlp(widths, name):
    layers = [L.Input((6,))] + [L.Dense(w, activation="relu") for w in widths[:-1]]
    return keras.Sequential(layers + [L.Dense(widths[-1])], name=name)


def test_plan_for_another_model():
    keras.utils.set_random_seed(0)
    m = _mlp([5, 3], "a")
    x = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
    p = tfprec.paper_plan(tfprec.noise_gains(m, x))
    p.validate_for(m)
    other = _mlp([7, 3], "b")                      # same names, other shape
    other_names = [l.name for l in other.layers]
    if other_names == [l.name for l in m.layers]:
        with pytest.raises(PlanError, match="num_weights"):
            p.validate_for(other)
    else:
        with pytest.raises(PlanError, match="not match"):
            p.validate_for(other)
    renamed = dataclasses.replace(p, layers=(dataclasses.replace(p.layers[0], name="zz"),)
                                  + p.layers[1:])
    with pytest.raises(PlanError, match="zz"):
        renamed.validate_for(m)


def test_with_bits_checks_names_and_bits():
    p = tfprec.paper_plan(G4, b_min=4)
    with pytest.raises(PlanError, match=r"no layers named \['zz'\]"):
        p.with_bits(weight_bits={"zz": 4})
    with pytest.raises(PlanError, match=r"no layers named \['yy'\]"):
        p.with_bits(act_bits={"l0": 4, "yy": 3})
    for bad in (3.5, float("nan"), True, 1, 17):
        with pytest.raises(PlanError, match="must be an int number of bits in 2..16"):
            p.with_bits(weight_bits={"l0": bad})
    assert bits(p.with_bits(act_bits={"l1": np.int64(3)})) == [(5, 4), (7, 3)]


@pytest.mark.parametrize("make", [
    lambda **k: tfprec.paper_plan(G4, 0.01, **k),
    lambda **k: tfprec.uniform_plan(G4, 0.01, **k),
    lambda **k: tfprec.icml2017_plan(G4, 0.01, **k),
    lambda **k: tfprec.cost_aware_plan(G4, 0.01, **k),
    lambda **k: tfprec.make_plan(G4, "cost_aware", 0.01, **k),
])
def test_max_bits_is_checked(make):
    for bad in (17, 1, 8.0, True):
        with pytest.raises(PlanError, match="max_bits must be an int number of bits"):
            make(max_bits=bad)


def test_level_arguments_are_checked():
    for make, arg in ((lambda v: tfprec.paper_plan(G4, b_min=v), "b_min"),
                      (lambda v: tfprec.uniform_plan(G4, bits=v), "bits"),
                      (lambda v: tfprec.icml2017_plan(G4, act_bits=v), "act_bits")):
        for bad in (3.5, float("nan"), False, 17):
            with pytest.raises(PlanError, match=f"{arg} must be an int number of bits"):
                make(bad)
