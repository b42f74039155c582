"""Complexity model of a precision plan (METHOD.md section 4).

Per weight layer with dot-product length D (bias included), P dot products
per example, B_A-bit inputs and B_W-bit weights:

* computational cost, in 1-bit full adders per example:
  P * [ D * B_A * B_W + (D - 1) * (B_A + B_W + ceil(log2 D) - 1) ]
* representational cost, in bits:
  B_W * (weights incl. biases) + B_A * (input activations per example).
"""
from __future__ import annotations

import dataclasses
import math

COST_KINDS = ("compute", "memory")


def compute_cost(dot_length: int, num_dots: int, act_bits: float,
                 weight_bits: float) -> float:
    """Computational cost of one layer, in 1-bit full adders per example."""
    d = int(dot_length)
    adder = (d - 1) * (act_bits + weight_bits + math.ceil(math.log2(d)) - 1)
    return float(num_dots) * (d * act_bits * weight_bits + adder)


def memory_cost(num_weights: int, num_inputs: int, act_bits: float,
                weight_bits: float) -> float:
    """Representational cost of one layer, in bits."""
    return float(weight_bits) * num_weights + float(act_bits) * num_inputs


def layer_cost(layer, kind: str, act_bits=None, weight_bits=None) -> float:
    """Cost of a layer (any object with the geometry fields) at given bits.

    ``kind`` is "compute" (full adders) or "memory" (bits).  Bits default to
    the layer's own ``act_bits`` / ``weight_bits``.
    """
    ba = layer.act_bits if act_bits is None else act_bits
    bw = layer.weight_bits if weight_bits is None else weight_bits
    if kind == "compute":
        return compute_cost(layer.dot_length, layer.num_dots, ba, bw)
    if kind == "memory":
        return memory_cost(layer.num_weights, layer.num_inputs, ba, bw)
    raise ValueError(f"cost kind must be one of {COST_KINDS}, got {kind!r}")


@dataclasses.dataclass(frozen=True)
class PlanCost:
    """Costs of a plan: per layer and total.

    Attributes:
      compute: layer name -> full adders per example.
      memory: layer name -> bits.
    """

    compute: dict
    memory: dict

    @property
    def total_compute(self) -> float:
        """Total computational cost, 1-bit full adders per example."""
        return float(sum(self.compute.values()))

    @property
    def total_memory(self) -> float:
        """Total representational cost, bits."""
        return float(sum(self.memory.values()))

    def total(self, kind: str) -> float:
        if kind == "compute":
            return self.total_compute
        if kind == "memory":
            return self.total_memory
        raise ValueError(f"cost kind must be one of {COST_KINDS}, got {kind!r}")


def plan_cost(layers) -> PlanCost:
    """Costs of layers that carry bits and geometry (e.g. ``plan.layers``)."""
    return PlanCost({l.name: layer_cost(l, "compute") for l in layers},
                    {l.name: layer_cost(l, "memory") for l in layers})
