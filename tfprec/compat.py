"""The one place where tfprec touches private TensorFlow / tf_keras / TFMOT
internals that have no public equivalent.

Everything else in tfprec uses public APIs.  The internals below were
checked against the versions in :data:`CHECKED_VERSIONS`;
``tests/test_compat.py`` fails loudly on any other version, so an upgrade is
a deliberate step: re-run the suite, then add the version here.

* functional-graph traversal: ``Model._is_graph_network`` (a built
  Sequential or functional model, not a subclassed one) and
  ``Model._nodes_by_depth`` (the layer calls of the model's own graph, by
  depth; ``Layer.inbound_nodes`` lists a shared layer's calls in *every*
  model that uses it, so it cannot tell which belong to this model);
* ``KerasTensor._keras_history``: the (layer, node index, tensor index)
  that produced a symbolic tensor;
* TFMOT ``QuantizeWrapperV2._weight_vars``: the (variable, quantizer,
  quantizer variables) triples of a wrapped layer.
"""
from __future__ import annotations

from tfprec._tf import tf, keras

#: package -> the major.minor versions whose internals tfprec was checked with.
CHECKED_VERSIONS = {
    "tensorflow": ("2.21",),
    "tf_keras": ("2.21",),
    "tensorflow_model_optimization": ("0.8",),
}


def installed_versions() -> dict:
    """package -> installed version string."""
    import tensorflow_model_optimization as tfmot
    return {"tensorflow": tf.__version__, "tf_keras": keras.__version__,
            "tensorflow_model_optimization": tfmot.__version__}


def unchecked_versions() -> dict:
    """package -> installed version, for packages whose version is not in
    :data:`CHECKED_VERSIONS` (empty when everything was checked)."""
    out = {}
    for pkg, v in installed_versions().items():
        if ".".join(v.split(".")[:2]) not in CHECKED_VERSIONS[pkg]:
            out[pkg] = v
    return out


def is_graph_network(model) -> bool:
    """Whether ``model`` is a built Sequential or functional model."""
    return bool(getattr(model, "_is_graph_network", False))


def nodes_in_order(model) -> list:
    """The layer-call nodes of ``model``'s own graph, inputs first
    (topological order; input nodes included, see ``node.is_input``)."""
    by_depth = model._nodes_by_depth
    return [n for d in sorted(by_depth.keys(), reverse=True) for n in by_depth[d]]


def producing_layer(tensor):
    """The layer that produced symbolic tensor ``tensor``."""
    return tensor._keras_history.layer


def producing_node(tensor):
    """The node (layer call) that produced symbolic tensor ``tensor``."""
    layer, node_index, _ = tensor._keras_history
    return layer.inbound_nodes[node_index]


def is_symbolic(value) -> bool:
    """Whether ``value`` is a symbolic (Keras functional) tensor."""
    return hasattr(value, "_keras_history")


def wrapper_weight_vars(wrapper) -> list:
    """(variable, quantizer) pairs of a TFMOT ``QuantizeWrapperV2``."""
    return [(v, q) for v, q, _ in wrapper._weight_vars]
