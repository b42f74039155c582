"""Reports of the TFLite export: one :class:`LayerExport` per weight layer
and the model-level :class:`ExportReport` (with a markdown rendering)."""
from __future__ import annotations

import dataclasses
import os

from tfprec.errors import ExportError
from tfprec.fileio import atomic_write_bytes


@dataclasses.dataclass
class LayerExport:
    """How one weight layer was realized and whether its grids check out.

    Attributes:
      name, layer_class, kind: the Keras layer and its graph kind.
      weight_bits, act_bits: planned B_W and B_A (bits).
      weight_step, act_step: planned Delta_W and Delta_A (units of the
        weights and of the input activation).
      act_signed: planned signedness of the input format.
      weight_dtype: stored type of the kernel ('int8' or 'float32').
      bias_dtype: stored type of the bias ('int32', 'int8', 'float32', or
        'none').
      act_dtype: stored type of the input activation ('int8' or 'float32').
      compute: 'int8' (integer kernel) or 'float32'.
      output: how the layer's result leaves it ('int8 on <layer> grid',
        'int32 -> float32', 'float32').
      weights_grid_ok: kernel and bias read back from the interpreter hold
        exactly the plan's codes with scale Delta_W (bias: Delta_A*Delta_W).
      act_grid_ok: the input tensor read back after running the interpreter
        on the check examples holds only allowed codes with scale Delta_A.
      act_codes_match: fraction of input-activation codes equal to the
        plan's fixed-point simulation on the check examples, on the kernel
        family the export targets.
      num_weights, num_inputs: counts used for the representational cost.
      exact_on: the kernel families ('xnnpack', 'reference', 'optimized')
        on which this layer's arithmetic equals the plan's by construction
        (every requantization rounds like the plan, no float32 sum rounds).
      notes: anything worth knowing (fallbacks, rounding).
    """

    name: str
    layer_class: str
    kind: str
    weight_bits: int
    act_bits: int
    weight_step: float
    act_step: float
    act_signed: bool
    weight_dtype: str = ""
    bias_dtype: str = ""
    act_dtype: str = ""
    compute: str = ""
    output: str = ""
    weights_grid_ok: bool = False
    act_grid_ok: bool = False
    act_codes_match: float = float("nan")
    num_weights: int = 0
    num_inputs: int = 0
    exact_on: tuple = ()
    notes: list = dataclasses.field(default_factory=list)

    @property
    def grid_check_passed(self) -> bool:
        return bool(self.weights_grid_ok and self.act_grid_ok)


@dataclasses.dataclass
class ExportReport:
    """Result of :func:`export_tflite`.

    Attributes:
      path: the written ``.tflite`` file.
      layers: one :class:`LayerExport` per weight layer, in model order.
      file_size_bytes: size of the written file (bytes).
      plan_bits: the plan's representational cost in bits,
        sum over layers of B_W * num_weights + B_A * num_inputs.
      check_examples: examples the activation check ran on (0: none, the
        activation grids were not checked and act_grid_ok holds vacuously).
      check_source: 'representative_data', 'synthetic' or 'no'.
      kernels: the TFLite kernel family the rounding was tuned for.
      sim_agreement: fraction of check examples whose TFLite decision (on
        that kernel family) equals the decision of the plan's fixed-point
        simulation (:func:`simulate_plan`).
      max_logit_diff: largest |TFLite logit - simulated logit| on them.
      agreement_by_kernels, max_logit_diff_by_kernels: the same for every
        kernel family ('xnnpack': the interpreter's default; 'reference':
        BUILTIN_REF; 'optimized': builtin kernels without delegates), each
        measured by running the written file itself on the check examples.
      act_codes_match_by_kernels: {family: fraction (a probability) of all
        weight-layer input codes, over the check examples, equal to the
        plan's simulation}.
      exact_on: the kernel families on which every layer is exact by
        construction (the intersection of the layers' ``exact_on``); also
        stored in the file's ``tfprec`` metadata entry (JSON).
      notes: model-level notes.
    """

    path: str
    layers: list
    file_size_bytes: int
    plan_bits: float
    check_examples: int
    check_source: str
    sim_agreement: float
    max_logit_diff: float
    kernels: str = "xnnpack"
    agreement_by_kernels: dict = dataclasses.field(default_factory=dict)
    max_logit_diff_by_kernels: dict = dataclasses.field(default_factory=dict)
    act_codes_match_by_kernels: dict = dataclasses.field(default_factory=dict)
    exact_on: tuple = ()
    notes: list = dataclasses.field(default_factory=list)

    @property
    def plan_bytes(self) -> float:
        return self.plan_bits / 8.0

    @property
    def grid_check_passed(self) -> bool:
        return all(l.grid_check_passed for l in self.layers)

    def layer(self, name: str) -> LayerExport:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def to_markdown(self) -> str:
        ok = lambda b: "yes" if b else "**NO**"  # noqa: E731
        lines = [
            f"### TFLite export: `{os.path.basename(self.path)}`",
            "",
            f"- file size: {self.file_size_bytes} bytes; plan representational "
            f"cost: {self.plan_bits:.0f} bits = {self.plan_bytes:.0f} bytes "
            f"(file / plan = {self.file_size_bytes / max(self.plan_bytes, 1e-9):.2f})",
            f"- grid checks passed: {ok(self.grid_check_passed)} "
            + (f"(activations checked on {self.check_examples} "
               f"{self.check_source.replace('_', ' ')} examples)" if self.check_examples
               else "(weights only: check_examples=0)"),
            f"- decisions equal to the plan's fixed-point simulation "
            f"({self.kernels} kernels): {100 * self.sim_agreement:.2f}%, max "
            f"|logit difference| {self.max_logit_diff:.3g}; by kernel family "
            f"(the written file run on each): "
            + ", ".join(f"{k} {100 * v:.2f}%" for k, v in self.agreement_by_kernels.items()),
            "- exact by construction on kernel families: "
            + (", ".join(self.exact_on) if self.exact_on else "none (see the notes)"),
            "",
            "| layer | B_W | B_A | weights | input | compute | output | "
            "weight grid | input grid | input codes = sim | exact on |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for l in self.layers:
            sign = "s" if l.act_signed else "u"
            lines.append(
                f"| {l.name} | {l.weight_bits} | {l.act_bits}{sign} | "
                f"{l.weight_dtype} (bias {l.bias_dtype}) | {l.act_dtype} | "
                f"{l.compute} | {l.output} | {ok(l.weights_grid_ok)} | "
                f"{ok(l.act_grid_ok)} | {100 * l.act_codes_match:.2f}% | "
                f"{', '.join(l.exact_on) or 'none'} |")
        notes = list(self.notes) + [f"{l.name}: {n}" for l in self.layers for n in l.notes]
        if notes:
            lines += [""] + [f"- {n}" for n in notes]
        return "\n".join(lines) + "\n"


def write_checked(path: str, content: bytes, report, layers, strict: bool):
    """Writes ``content`` atomically to ``path`` unless ``strict`` and a
    layer's grid check failed (ExportError naming the layers, carrying the
    report, nothing written); sets ``report.file_size_bytes``."""
    if strict and not report.grid_check_passed:
        bad = [l.name for l in layers if not l.grid_check_passed]
        err = ExportError(f"grid check failed for layers {bad}; nothing written "
                          f"to {path!r}")
        err.report = report
        raise err
    try:
        atomic_write_bytes(path, content)
    except OSError as e:
        raise ExportError(f"cannot write TFLite file {path!r}: {e}") from e
    report.file_size_bytes = os.path.getsize(path)
    return report
