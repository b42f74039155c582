"""tfprec.compat holds every private TF / tf_keras / TFMOT internal tfprec uses;
this test fails loudly on a version those internals were not checked with."""
import tfprec  # noqa: F401
from tfprec import compat
from tfprec._tf import keras


def test_installed_versions_were_checked():
    bad = compat.unchecked_versions()
    assert not bad, (
        f"tfprec.compat was checked against {compat.CHECKED_VERSIONS}, but "
        f"{bad} is installed: re-run the whole suite on it, then add the "
        "version to compat.CHECKED_VERSIONS.")


def test_graph_internals_work():
    inp = keras.Input((3,))
    h = keras.layers.Dense(4, name="d1")(inp)
    out = keras.layers.Dense(2, name="d2")(h)
    model = keras.Model(inp, out)
    assert compat.is_graph_network(model)
    names = [n.layer.name for n in compat.nodes_in_order(model)]
    assert names[-2:] == ["d1", "d2"] and names[0] == model.layers[0].name
    assert compat.producing_layer(out).name == "d2"
    assert compat.producing_node(out).layer.name == "d2"

    class Sub(keras.Model):
        def call(self, x):
            return x
    assert not compat.is_graph_network(Sub())


def test_nested_models_are_expanded():
    L = keras.layers
    inner_in = keras.Input((3,))
    inner = keras.Model(inner_in, L.Dense(4, name="i2")(L.Dense(4, name="i1")(inner_in)),
                        name="inner")
    head = keras.Sequential([L.Input((4,)), L.Dense(2, activation="sigmoid", name="h")],
                            name="head")
    x = keras.Input((3,))
    out = head(L.ReLU(name="r")(inner(x)))
    model = keras.Model(x, out)
    nodes = [n for n in compat.nodes_in_order(model) if not n.is_input]
    assert [n.layer.name for n in nodes] == ["i1", "i2", "r", "h"]
    # the flat chain links: each call reads the tensor the previous one writes,
    # from the outer input to the outer output
    assert nodes[0].call_args[0] is x
    for a, b in zip(nodes, nodes[1:]):
        assert b.call_args[0] is a.outputs
    assert nodes[-1].outputs is out
    assert compat.output_layer(model).name == "h"
    assert compat.producing_layer(out).name == "head"       # the outer node
