"""Rewrites of the float TFLite file for the fast and full-integer modes
of :mod:`tfprec.export.aeq` (``exact_ties=False``, ``full_integer=True``):
the model's own caps that the next integer grid makes redundant, and the
operators a full-integer recipe must leave float."""
from __future__ import annotations

import numpy as np

from tfprec.export.aeq_recipe import TflGraph, closed_consumers, read_graph


def drop_redundant_caps(content: bytes, op_of: dict, fmts: dict, clip: dict,
                        nudged: set) -> tuple:
    """(float file, number of ops dropped): the model's own caps, a MINIMUM
    with a scalar constant c (a clipped ReLU), removed where they cannot
    change a value: every path from its output reaches, through
    :data:`~tfprec.export.aeq_recipe.TRANSPARENT` ops only, the input of
    weight ops with no plan clip (``clip[n]`` None: the integer
    requantization saturates at the
    grid's top) whose grid tops hi*Delta_A are <= c, so that
    clip(round(min(x, c)/Delta)) = clip(round(x/Delta)), and whose ties can
    be tuned without the float cap (layers in ``nudged``).  AI Edge Quantizer
    has no integer MINIMUM: a cap left in would run in float32 between
    integer layers."""
    from ai_edge_litert import schema_py_generated as S
    import flatbuffers
    g = read_graph(content)
    name_of = {op.index: n for n, op in op_of.items()}
    drop = {}
    for op in g.ops:
        data = [t for t in op.inputs if t >= 0 and g.const(t) is None]
        consts = [t for t in op.inputs if t >= 0 and g.const(t) is not None]
        if op.name != "MINIMUM" or len(data) != 1 or len(consts) != 1:
            continue
        c = g.const(consts[0])
        if g.tensors[consts[0]].type != S.TensorType.FLOAT32 or c.size != 4:
            continue
        cap = float(c.view(np.float32)[0])
        names = [name_of[k.index] for k in closed_consumers(g, op.outputs[0], name_of) or ()]
        if names and all(clip.get(n, True) is None and n in nudged
                         and fmts[n][1].hi * fmts[n][1].step <= cap for n in names):
            drop[op.index] = (data[0], op.outputs[0])
    if not drop:
        return content, 0
    m = S.ModelT.InitFromPackedBuf(bytearray(content), 0)
    sg = m.subgraphs[0]
    for i, (src, out) in drop.items():
        for o in sg.operators:
            o.inputs = [src if t == out else t for t in o.inputs]
    sg.operators = [o for i, o in enumerate(sg.operators) if i not in drop]
    # renumber the tensors without the ones no operator uses any more (the
    # calibrator reads every tensor)
    used = {t for o in sg.operators for t in list(o.inputs) + list(o.outputs) if t >= 0}
    used |= set(sg.inputs) | set(sg.outputs)
    keep = [t for t in range(len(sg.tensors)) if t in used]
    new = {t: i for i, t in enumerate(keep)}
    sg.tensors = [sg.tensors[t] for t in keep]
    for o in sg.operators:
        o.inputs = [new[t] if t >= 0 else t for t in o.inputs]
        o.outputs = [new[t] for t in o.outputs]
    sg.inputs = [new[t] for t in sg.inputs]
    sg.outputs = [new[t] for t in sg.outputs]
    for sd in m.signatureDefs or []:
        for tm in list(sd.inputs or []) + list(sd.outputs or []):
            tm.tensorIndex = new[tm.tensorIndex]
    b = flatbuffers.Builder(len(content) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output()), len(drop)


def float_only_tensors(g: TflGraph, op_of: dict, float_layers: list) -> list:
    """Output tensors of the operators a full-integer recipe must leave
    float: the plan's explicit roundings
    (:class:`~tfprec.export.aeq_recipe.PlanRound`: its FLOOR and the
    multiplications around it), the weight ops of ``float_layers``
    (weights planned above 8 bits), and every other operator with a
    non-scalar float32 constant (a standalone BN's affine, a generic weight
    layer: their weights are on the plan's grid, not AEQ's)."""
    from ai_edge_litert import schema_py_generated as S
    weight = {op.index for op in op_of.values()}
    keep = {op_of[n].index for n in float_layers if n in op_of}
    out = []
    for op in g.ops:
        if not op.outputs:
            continue
        name = g.tensor_name(op.outputs[0])
        consts = [t for t in op.inputs if t >= 0 and g.const(t) is not None
                  and g.tensors[t].type == S.TensorType.FLOAT32
                  and int(np.prod(g.tensors[t].shape)) > 1]
        if (op.index in keep or "_plan_round" in name
                or (op.index not in weight and consts)):
            out.append(op.outputs[0])
    return out
