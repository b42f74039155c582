"""Complexity model of a precision plan (METHOD.md section 4).

Per weight layer with dot-product length D (bias included), P dot products
per example, B_A-bit inputs and B_W-bit weights:

* computational cost, in 1-bit full adders per example:
  P * [ D * B_A * B_W + (D - 1) * (B_A + B_W + ceil(log2 D) - 1) ]
* representational cost, in bits:
  B_W * (weights incl. biases) + B_A * (input activations per example).

Which input activations the representational cost counts
(``memory_convention``):

* ``"written"`` (default, the authors' tables): the feature map the
  producing layer writes, before any max pooling
  (``num_inputs_written``; layers without that field, or with None, fall
  back to ``num_inputs``);
* ``"read"``: the tensor the layer reads (``num_inputs``, after pooling).

A tensor read by several weight layers (the same non-empty ``act_group``)
is stored once: its B_A * inputs is counted by its first reader only.  The
computational cost is per layer (every reader multiplies).

A layer without an activation format (an Embedding, whose input is integer
token ids: ``act_bits`` None in a plan, ``has_act`` False in the gains) is a
table lookup: 0 full adders, and B_W * (table entries) bits; its B_A (a
placeholder in the searches' bit arrays) changes nothing
(:func:`has_act`).

The two formulas exist only here (:func:`compute_cost`, :func:`memory_cost`);
both accept numpy arrays of bits, so :func:`cost_tables` evaluates them over
whole bit grids.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfprec.errors import PlanError
from tfprec.fixedpoint import MAX_BITS

COST_KINDS = ("compute", "memory")
MEMORY_CONVENTIONS = ("written", "read")


def compute_cost(dot_length: int, num_dots: int, act_bits, weight_bits):
    """Computational cost of one layer, in 1-bit full adders per example.

    Bits may be numpy arrays (broadcast); scalars give a float.
    """
    d = int(dot_length)
    adder = (d - 1) * (act_bits + weight_bits + math.ceil(math.log2(d)) - 1)
    out = float(num_dots) * (d * act_bits * weight_bits + adder)
    return out if isinstance(out, np.ndarray) else float(out)


def memory_cost(num_weights: int, num_inputs: int, act_bits, weight_bits):
    """Representational cost of one layer, in bits: B_W * weights + B_A *
    inputs.  ``num_inputs`` is the count of input activations the chosen
    convention stores (see the module doc).  Bits may be numpy arrays."""
    out = weight_bits * float(num_weights) + act_bits * float(num_inputs)
    return out if isinstance(out, np.ndarray) else float(out)


def _check_convention(memory_convention: str) -> str:
    if memory_convention not in MEMORY_CONVENTIONS:
        raise PlanError(f"memory_convention must be one of {MEMORY_CONVENTIONS}, "
                        f"got {memory_convention!r}")
    return memory_convention


def stored_inputs(layer, memory_convention: str = "written") -> int:
    """Input activations per example the representational cost counts for
    ``layer``: ``num_inputs_written`` (if set) under ``"written"``,
    ``num_inputs`` under ``"read"``."""
    _check_convention(memory_convention)
    written = getattr(layer, "num_inputs_written", None)
    if memory_convention == "written" and written is not None:
        return int(written)
    return int(layer.num_inputs)


def _check_kind(kind: str) -> str:
    if kind not in COST_KINDS:
        raise PlanError(f"cost kind must be one of {COST_KINDS}, got {kind!r}")
    return kind


def has_act(layer) -> bool:
    """Whether ``layer`` (a plan's LayerPrecision or a LayerGains) has an
    input-activation format: False for an Embedding (integer ids)."""
    return bool(getattr(layer, "has_act", True))


def layer_cost(layer, kind: str, act_bits=None, weight_bits=None,
               memory_convention: str = "written", count_inputs: bool = True) -> float:
    """Cost of a layer (any object with the geometry fields) at given bits.

    ``kind`` is "compute" (full adders) or "memory" (bits).  Bits default to
    the layer's own ``act_bits`` / ``weight_bits``.  ``count_inputs=False``
    leaves the input activations out of the memory cost (a shared tensor
    already counted by another reader).  A layer without an activation
    format (:func:`has_act` False, a lookup) costs 0 full adders and
    B_W * num_weights bits, whatever ``act_bits``.
    """
    bw = layer.weight_bits if weight_bits is None else weight_bits
    if not has_act(layer):
        _check_kind(kind)
        zero = 0.0 * np.asarray(bw, float)
        if kind == "compute":
            return zero if zero.ndim else 0.0
        return memory_cost(layer.num_weights, 0, 0, bw)
    ba = layer.act_bits if act_bits is None else act_bits
    if _check_kind(kind) == "compute":
        return compute_cost(layer.dot_length, layer.num_dots, ba, bw)
    n_in = stored_inputs(layer, memory_convention) if count_inputs else 0
    return memory_cost(layer.num_weights, n_in, ba, bw)


def first_readers(layers) -> list:
    """For each layer: whether it is the first reader of its input tensor
    (True unless an earlier layer has the same non-empty ``act_group``)."""
    seen = set()
    out = []
    for l in layers:
        group = getattr(l, "act_group", "")
        out.append(not group or group not in seen)
        if group:
            seen.add(group)
    return out


def cost_tables(layers, kind: str, memory_convention: str = "written") -> list:
    """Per layer, the cost at every bit pair: ``tab[B_W, B_A]`` for bits
    0..MAX_BITS (index = bits), in full adders ("compute") or bits
    ("memory").  Memory tables of a shared tensor's later readers leave the
    input activations out, so sums of table entries are plan totals."""
    b = np.arange(MAX_BITS + 1, dtype=float)
    bw, ba = b[:, None], b[None, :]
    shape = (MAX_BITS + 1, MAX_BITS + 1)
    return [np.broadcast_to(layer_cost(l, kind, ba, bw, memory_convention, first),
                            shape)
            for l, first in zip(layers, first_readers(layers))]


@dataclasses.dataclass(frozen=True)
class PlanCost:
    """Costs of a plan: per layer and total.

    Attributes:
      compute: layer name -> full adders per example.
      memory: layer name -> bits (a shared input tensor counted in its first
        reader's entry only).
      memory_convention: "written" or "read" (see the module doc).
    """

    compute: dict
    memory: dict
    memory_convention: str = "written"

    @property
    def total_compute(self) -> float:
        """Total computational cost, 1-bit full adders per example."""
        return float(sum(self.compute.values()))

    @property
    def total_memory(self) -> float:
        """Total representational cost, bits."""
        return float(sum(self.memory.values()))

    def total(self, kind: str) -> float:
        """``total_compute`` (full adders) or ``total_memory`` (bits)."""
        if _check_kind(kind) == "compute":
            return self.total_compute
        return self.total_memory


def plan_cost(layers, memory_convention: str = "written") -> PlanCost:
    """Costs of layers that carry bits and geometry (e.g. ``plan.layers``)."""
    firsts = first_readers(layers)
    return PlanCost(
        {l.name: layer_cost(l, "compute") for l in layers},
        {l.name: layer_cost(l, "memory", memory_convention=memory_convention,
                            count_inputs=first) for l, first in zip(layers, firsts)},
        _check_convention(memory_convention))
