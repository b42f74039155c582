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
