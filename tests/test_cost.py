"""The cost model (METHOD.md section 4) against hand-written formulas."""
import dataclasses
import math

import numpy as np
import pytest

import tfprec
from tfprec.planning import cost as cost_lib
from tfprec._tf import keras
from tfprec.errors import PlanError
from tfprec.statistics.gains import LayerGains, NoiseGains

L = keras.layers


def hand_compute(d, p, ba, bw):
    return p * (d * ba * bw + (d - 1) * (ba + bw + math.ceil(math.log2(d)) - 1))


def test_cost_formulas_by_hand():
    # Dense 3 -> 2 with bias: D = 4, P = 2; B_A = 4, B_W = 5.
    assert cost_lib.compute_cost(4, 2, 4, 5) == 2 * (4 * 4 * 5 + 3 * (4 + 5 + 2 - 1))
    assert cost_lib.memory_cost(8, 3, 4, 5) == 5 * 8 + 4 * 3
    # D = 19 (3x3x2 + bias): ceil(log2 19) = 5.
    assert cost_lib.compute_cost(19, 144, 3, 2) == 144 * (19 * 6 + 18 * (3 + 2 + 5 - 1))


def _gains(geo, groups=None):
    layers = []
    for i, (d, p, nw, ni) in enumerate(geo):
        layers.append(LayerGains(
            name=f"l{i}", layer_class="Dense", e_w=1.0, e_a=1.0, r_w=1.0, r_a=1.0,
            act_signed=False, act_range_source="known bound", act_low=0.0,
            act_high=2.0, weight_max_abs=1.0, dot_length=d, num_dots=p,
            num_weights=nw, num_inputs=ni, act_group=(groups or {}).get(i, "")))
    return NoiseGains(tuple(layers), 100, 10, 0)


def test_tables_are_the_formulas_at_every_bit_pair():
    geo = [(4, 2, 8, 3), (19, 144, 76, 128), (1, 7, 5, 9)]
    g = _gains(geo)
    comp = cost_lib.cost_tables(g.layers, "compute")
    mem = cost_lib.cost_tables(g.layers, "memory")
    for (d, p, nw, ni), tc, tm in zip(geo, comp, mem):
        for bw in range(2, 17):
            for ba in range(2, 17):
                assert tc[bw, ba] == hand_compute(d, p, ba, bw)
                assert tm[bw, ba] == bw * nw + ba * ni
    with pytest.raises(PlanError, match="cost kind"):
        cost_lib.cost_tables(g.layers, "energy")


def test_shared_input_is_stored_once():
    # l1 and l2 read one tensor of 50 activations; l0 reads its own 3.
    geo = [(4, 2, 8, 3), (51, 10, 510, 50), (51, 20, 1020, 50)]
    g = _gains(geo, {1: "l1+l2", 2: "l1+l2"})
    p = tfprec.uniform_plan(g, bits=5)
    c = p.cost()
    assert c.total_memory == 5 * (8 + 3) + 5 * (510 + 50) + 5 * 1020
    assert c.memory["l2"] == 5 * 1020
    assert c.total_compute == sum(hand_compute(d, n, 5, 5) for d, n, _, _ in geo)
    tabs = cost_lib.cost_tables(g.layers, "memory")
    assert sum(t[5, 5] for t in tabs) == c.total_memory


def test_memory_conventions_of_a_layer():
    g = _gains([(4, 2, 8, 3), (19, 144, 76, 128)])
    p = tfprec.uniform_plan(g, bits=4)
    # A producer wrote 512 activations that pooling cut to the 128 l1 reads.
    q = dataclasses.replace(p, layers=(p.layers[0], dataclasses.replace(
        p.layers[1], num_inputs_written=512)))
    assert q.cost().total_memory == 4 * (8 + 3) + 4 * (76 + 512)
    assert q.cost("read").total_memory == 4 * (8 + 3) + 4 * (76 + 128)
    assert p.cost().total_memory == p.cost("read").total_memory     # None: fallback
    assert tfprec.PrecisionPlan.from_json(q.to_json()) == q
    d = p.to_dict()                                    # an older plan file
    for ld in d["layers"]:
        del ld["num_inputs_written"]
    assert tfprec.PrecisionPlan.from_dict(d) == p
    with pytest.raises(PlanError, match="memory_convention"):
        q.cost("pooled")


# The paper's CIFAR-10 network: valid 3x3 convolutions, 2x2 max pooling.
VGG = [("C", 32), ("C", 32), ("P",), ("C", 64), ("C", 64), ("P",), ("C", 128),
       ("C", 128), ("F", 256), ("F", 256), ("F", 10)]


def vgg_memory_by_hand(bits, convention):
    """Representational cost of VGG at uniform ``bits``: weights with biases
    plus the inputs of every weight layer, counted as the map the previous
    layer wrote ("written", before pooling) or as read ("read")."""
    h, c = 32, 3
    written = read = h * h * c                     # the network input
    total = 0
    for op in VGG:
        if op[0] == "P":
            h //= 2
            read = h * h * c
            continue
        if op[0] == "C":
            weights, out = 3 * 3 * c * op[1] + op[1], ((h - 2), op[1])
        else:
            weights, out = h * h * c * op[1] + op[1], (1, op[1])
        total += bits * (weights + (written if convention == "written" else read))
        h, c = out
        written = read = h * h * c
    return total


def vgg_model():
    clip = dict(activation=None)
    layers = [L.Input((32, 32, 3))]
    for op in VGG:
        if op[0] == "P":
            layers.append(L.MaxPooling2D(2))
            continue
        if op[0] == "F" and not any(isinstance(x, L.Flatten) for x in layers):
            layers.append(L.Flatten())
        layers.append(L.Conv2D(op[1], 3, **clip) if op[0] == "C" else L.Dense(op[1]))
        if op[1] != 10:
            layers.append(L.ReLU(max_value=2.0))
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def vgg_gains():
    keras.utils.set_random_seed(0)
    m = vgg_model()
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    return tfprec.noise_gains(m, x)


def test_vgg_memory_read_convention(vgg_gains):
    p = tfprec.uniform_plan(vgg_gains, bits=6)
    assert p.cost("read").total_memory == vgg_memory_by_hand(6, "read")


def test_vgg_memory_authors_convention(vgg_gains):
    for b in (4, 8):
        p = tfprec.uniform_plan(vgg_gains, bits=b)
        assert p.cost().total_memory == vgg_memory_by_hand(b, "written")
