"""Per-channel weight ranges of the noise-gain pass.

With ``per_channel=True`` (:func:`tfprec.statistics.gains.noise_gains`) every
Dense, Conv2D and DepthwiseConv2D op (BN folded) quantizes its weights on
one range scale R_c per output channel c (a power of two covering the
channel's kernel slice and bias entry), all channels with the layer's one
bit-width B_W, so Delta_c = R_c 2^(1-B_W).  Every other weight op (generic
layers, standalone BN, Embedding) keeps one range per tensor.

The bound's weight term of such a layer is sum_c Delta_c^2 E_c, where E_c
is the noise gain of channel c's weights (kernel slice and bias entry):

    sum_c Delta_c^2 E_c = 4^(1-B_W) sum_c R_c^2 E_c = 4^(1-B_W) G_W,

so the normalized gain G_W = R_W^2 E_W keeps its meaning with the
*effective* gain E_W = sum_c (R_c / R_W)^2 E_c.  The gradient of a channel's
weights is linear in the cotangent of that channel's output, so E_W comes
from the layer's registered norm rule applied to the output cotangent
scaled by s_c = R_c / R_W per channel (the backward pass itself is not
scaled).  Per-example and per-class rows follow the same way.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from tfprec.fixedpoint import channel_ranges

#: Weight-op kinds quantized per output channel with ``per_channel=True``.
CHANNEL_KINDS = ("dense", "conv2d", "depthwise")


def op_channel_ranges(graph, op) -> Optional[np.ndarray]:
    """R_c per output channel of ``op`` (a graph weight op, BN folded), or
    None for a kind kept per tensor."""
    if op.kind not in CHANNEL_KINDS:
        return None
    return channel_ranges(op.attrs["kernel"], op.attrs["bias"],
                          int(graph.shapes[op.output][-1]))


def channel_scales(graph, per_channel: bool) -> dict:
    """{op name: s_c = R_c / R_W} of every per-channel op (empty without
    ``per_channel``)."""
    if not per_channel:
        return {}
    out = {}
    for op in graph.weight_ops:
        r = op_channel_ranges(graph, op)
        if r is not None:
            out[op.name] = r / r.max()
    return out
