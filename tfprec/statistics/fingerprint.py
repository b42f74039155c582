"""The fingerprint of a model's analysed weights (plans check it against
the model they are applied to)."""
from __future__ import annotations

import hashlib

import numpy as np

from tfprec.statistics.graph import parse_model


def model_fingerprint(model, graph=None) -> str:
    """A fingerprint of the weights tfprec analyses in ``model`` (a str,
    ``"sha256:<64 hex digits>"``).

    SHA-256 over the weight layers in model order: each layer's kernel and
    bias after BatchNormalization folding (exactly the values the noise
    gains, the range scales R_W and the fake-quant model use), cast to
    float32, with their shapes.  So a model, its BN-folded clone
    (:func:`tfprec.fold_batchnorm`) and its fake-quant rebuild have the same
    fingerprint, and any change of a weight by more than float32 rounding
    changes it.  Layer names are not hashed (plans check them separately).
    ``graph``: the model's parsed graph if already at hand.  Cost: one hash
    over the weights (about 1 ms per MB).
    """
    graph = parse_model(model) if graph is None else graph
    h = hashlib.sha256()
    for op in graph.weight_ops:
        for k in ("kernel", "bias"):
            t = op.attrs.get(k)
            if t is None:
                h.update(b"none;")
                continue
            a = np.ascontiguousarray(t, dtype=np.float32)
            h.update(repr(a.shape).encode() + b";")
            h.update(a.tobytes())
    return "sha256:" + h.hexdigest()
