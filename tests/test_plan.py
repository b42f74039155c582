"""Plans, bound and cost model against hand-computed values."""
import dataclasses
import itertools
import json
import os

import numpy as np
import pytest

import tfprec
from tfprec.planning import cost as cost_lib
from tfprec.planning import plan as plan_lib
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
    ow, oa = plan_lib.paper_offsets(G4)
    assert ow.tolist() == [1, 3] and oa.tolist() == [0, 2]
    # Equalized terms: bound = 4 * 4^(1 - B_min); <= 0.01 first at B_min = 6.
    p = tfprec.paper_plan(G4, target=0.01)
    assert bits(p) == [(7, 6), (9, 8)]
    assert p.b_min == 6
    assert p.bound() == pytest.approx(4 * 4.0 ** -5, rel=1e-12)
    assert tfprec.paper_plan(G4, b_min=5).bound() == pytest.approx(4 * 4.0 ** -4)


def test_offset_rounds_half_up():
    g = fake_gains([(2.0, 1.0)])       # 0.5 * log2(2) = 0.5 -> 1
    ow, oa = plan_lib.paper_offsets(g)
    assert ow.tolist() == [1] and oa.tolist() == [0]


def test_uniform_and_icml2017():
    u = tfprec.uniform_plan(G4, target=0.01)
    assert bits(u) == [(8, 8), (8, 8)]                 # 85 * 4^(1-B) <= 0.01
    assert u.bound() == pytest.approx(85 * 4.0 ** -7)
    assert plan_lib.icml2017_offset(G4) == 1          # sum G_W / sum G_A = 4
    i = tfprec.icml2017_plan(G4, target=0.01)
    assert bits(i) == [(8, 7), (8, 7)]                 # 136 * 4^-B_A <= 0.01
    assert i.bound() == pytest.approx(136 * 4.0 ** -7)
    assert bits(tfprec.uniform_plan(G4, bits=3)) == [(3, 3), (3, 3)]
    assert bits(tfprec.icml2017_plan(G4, act_bits=3)) == [(4, 3), (4, 3)]


def test_cost_formulas_by_hand():
    # Dense 3 -> 2 with bias: D = 4, P = 2; B_A = 4, B_W = 5.
    assert cost_lib.compute_cost(4, 2, 4, 5) == 2 * (4 * 4 * 5 + 3 * (4 + 5 + 2 - 1))
    assert cost_lib.memory_cost(8, 3, 4, 5) == 5 * 8 + 4 * 3
    # D = 19 (3x3x2 + bias): ceil(log2 19) = 5.
    assert cost_lib.compute_cost(19, 144, 3, 2) == 144 * (19 * 6 + 18 * (3 + 2 + 5 - 1))


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


def _exhaustive_min(g, target, kind, lo=2, hi=9):
    best = None
    for bw0, ba0, bw1, ba1 in itertools.product(range(lo, hi + 1), repeat=4):
        b = plan_lib._bound(np.array([x.g_w for x in g.layers]),
                            np.array([x.g_a for x in g.layers]),
                            [bw0, bw1], [ba0, ba1])
        if b > target:
            continue
        c = sum(cost_lib.layer_cost(l, kind, ba, bw) for l, ba, bw in
                zip(g.layers, (ba0, ba1), (bw0, bw1)))
        best = c if best is None else min(best, c)
    return best


@pytest.mark.parametrize("kind", ["compute", "memory"])
def test_cost_aware_never_worse_than_paper_and_near_exhaustive(kind):
    g = fake_gains([(4.0, 1.0), (64.0, 16.0)], geo=[(785, 512, 785 * 512, 784),
                                                    (513, 10, 513 * 10, 512)])
    for target in (0.3, 0.05, 0.01):
        ca = tfprec.cost_aware_plan(g, target, cost=kind)
        assert ca.bound() <= target
        paper = tfprec.paper_plan(g, target)
        assert ca.cost().total(kind) <= paper.cost().total(kind)
        assert ca.cost().total(kind) <= tfprec.uniform_plan(g, target).cost().total(kind)
        best = _exhaustive_min(g, target, kind)
        assert ca.cost().total(kind) <= 1.01 * best


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
    (lambda d: d["layers"][0].update(weight_bits=1), "weight_bits=1"),
    (lambda d: d["layers"][1].update(act_bits=17), "act_bits=17"),
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
