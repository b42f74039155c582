"""The tfprec command line: the demo end to end, --model with other targets,
bad flags, --helpfull.

Most runs are in-process (absl flags parsed with FLAGS(argv), then
``cli.main``) to avoid paying the TensorFlow import per run; two runs go
through ``python -m tfprec`` to check the real entry point.  Heavy steps are
shrunk with the CLI's own flags (a 32-32 MLP, 3 epochs, 200 / 300 examples,
two sweep levels).
"""
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from absl import flags

import tfprec
from tfprec.application import cli
from tfprec.application import flags as cli_flags
from tfprec.application import data as data_lib
from tfprec.application import report as report_lib
from tfprec.application import staging
from tfprec.statistics.gains import LayerGains, NoiseGains
from tfprec.planning.plan import PrecisionPlan

FLAGS = flags.FLAGS
SMALL = ["--demo_hidden=32,32", "--demo_epochs=3", "--calibration_examples=200",
         "--eval_examples=300", "--sweep_levels=3,6"]
CORE_FILES = {"plan.json", "report.md", "quantized.h5", "model.tflite",
              "summary.json", "float_model.h5"}
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def run_cli(args, capsys=None):
    """Parses ``args`` like the command line and runs main; returns
    (exit status, stdout, stderr)."""
    FLAGS.unparse_flags()
    argv = ["tfprec"] + list(args)
    try:
        try:
            rest = FLAGS(argv)
        except flags.Error as e:          # what app.run reports, exit status 1
            code, msg = 1, f"FATAL Flags parsing error: {e}"
        else:
            code, msg = cli.main(rest), ""
    finally:
        FLAGS.unparse_flags()
    out, err = ("", "")
    if capsys is not None:
        cap = capsys.readouterr()
        out, err = cap.out, cap.err
    return code, out, err + msg


def leftovers(folder):
    """Temporary (staging, backup) folders tfprec left in ``folder``."""
    return [n for n in os.listdir(folder)
            if n.startswith(".tfprec-") and n != staging.MANIFEST]


# ====================================================================== demo
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    out_dir = base / "nested" / "out"          # parents are created at the end
    plots = report_lib.have_matplotlib()
    so, se = io.StringIO(), io.StringIO()
    with redirect_stdout(so), redirect_stderr(se):
        code, _, msg = run_cli(["--demo", f"--output_dir={out_dir}"] + SMALL)
    return {"code": code, "out": so.getvalue(), "err": se.getvalue() + msg,
            "dir": out_dir, "base": base, "plots": plots}


def test_demo_writes_every_file(demo):
    assert demo["code"] == 0, demo["err"][-3000:]
    names = set(os.listdir(demo["dir"]))
    assert CORE_FILES <= names
    if demo["plots"]:
        assert set(report_lib.FIGURES) <= names
    assert not leftovers(demo["base"]) and not leftovers(demo["base"] / "nested")


def test_demo_plan_json_loads_back(demo):
    plan = PrecisionPlan.load(str(demo["dir"] / "plan.json"))
    plan.check()
    assert plan.names == ["fc1", "fc2", "logits"]
    summary = json.loads((demo["dir"] / "summary.json").read_text())
    # the default target is measured (issue 11): mismatch <= 0.01 on the
    # selection half, the plan reported on the disjoint report half
    assert summary["mode"] == "measured"
    assert summary["target"] == "measured mismatch <= 0.01"
    assert summary["bound"] == pytest.approx(plan.bound())
    assert summary["chosen"] == plan.method
    assert summary["validation"]["num_examples"] == 150
    chosen = [c for c in summary["comparisons"] if c["chosen"]]
    assert [c["method"] for c in chosen] == [plan.method]
    assert chosen[0]["num_mismatch"] <= 0.01 * chosen[0]["num_examples"]
    assert {"paper", "uniform", "icml2017"} <= {c["method"] for c in summary["comparisons"]}
    assert {(r["method"], r["level"]) for r in summary["sweep"]} >= {
        ("paper", 3), ("paper", 6), ("uniform", 6), ("icml2017", 6)}


def test_demo_outputs_load_and_run(demo):
    from tfprec._tf import keras
    from tfprec.quantization.configs import quantize_scope
    from tfprec.export import tflite_predict
    from tfprec.application import data
    x = data.load_dataset("mnist_subset", flatten=True, num_train=1, num_test=20).x_test
    with quantize_scope():
        q = keras.models.load_model(str(demo["dir"] / "quantized.h5"))
    zq = q.predict(x, verbose=0)
    zt = tflite_predict(str(demo["dir"] / "model.tflite"), x)
    assert zq.shape == zt.shape == (20, 10)
    # the TFLite file computes the same fixed-point network as the fake-quant model
    assert np.mean(zq.argmax(1) == zt.argmax(1)) >= 0.9


def test_demo_report_has_table_and_validation(demo):
    text = (demo["dir"] / "report.md").read_text()
    summary = json.loads((demo["dir"] / "summary.json").read_text())
    v = summary["validation"]
    assert "| layer | class | E_W | E_A | G_W | G_A | B_W | B_A |" in text
    for name in ("fc1", "fc2", "logits"):
        assert f"| {name} | Dense |" in text
    assert "- noise-gain path of the weight layers: registered: 3 (fc1, fc2, logits)" \
        in text
    assert f"| held-out examples | {v['num_examples']} |" in text
    assert f"| changed decisions | {v['num_mismatch']} |" in text
    assert f"| measured mismatch | {v['mismatch_rate']:.4f} |" in text
    assert f"| float accuracy | {100 * v['float_accuracy']:.2f} % |" in text
    assert f"| fixed-point accuracy | {100 * v['quant_accuracy']:.2f} % |" in text
    assert "95% upper confidence limit" in text
    assert f"| analytic bound | {v['bound']:.4g} |" in text
    assert "## Plans compared" in text and "## Sweep of the precision level" in text
    assert "| paper | B_min=3 |" in text and "| uniform | B=6 |" in text
    assert "## TFLite export" in text and "grid checks passed: yes" in text
    assert "tfprec --demo" in text                    # the command is recorded


def test_demo_prints_layer_table_and_summary(demo):
    out = demo["out"]
    assert "layer" in out and "B_W" in out and "G_A" in out and "compute (FA)" in out
    for name in ("fc1", "fc2", "logits"):
        assert any(line.startswith(name + " ") for line in out.splitlines())
    assert ("summary (measured on the report half of the held-out examples "
            "(150 ex.)):") in out
    assert "analytic bound" in out
    assert "measured mismatch" in out and "plans compared" in out
    written = [n for n in os.listdir(demo["dir"]) if n != staging.MANIFEST]
    assert f"wrote {len(written)} files" in out
    manifest = staging.read_manifest(str(demo["dir"]))
    assert sorted(manifest["files"]) == sorted(written)


def test_demo_figures_are_pngs(demo):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread
    for name in report_lib.FIGURES:
        img = imread(str(demo["dir"] / name))
        assert img.ndim == 3 and img.shape[0] > 300 and img.std() > 0.05
        assert f"]({name})" in (demo["dir"] / "report.md").read_text()


# ================================================================= --model
@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_model_with_cost_budget(demo, tmp_path, capsys, monkeypatch):
    assert demo["code"] == 0
    model_path = demo["dir"] / "float_model.h5"
    ref = PrecisionPlan.load(str(demo["dir"] / "plan.json"))
    budget = 0.6 * ref.cost().total_compute
    out_dir = tmp_path / "budget"
    # --data=mnist from an offline folder named by $TFPREC_DATA_DIR
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with np.load(data_lib.embedded_subset_path()) as d:
        np.savez(data_dir / "mnist.npz", **{k: d[k] for k in d.files})
    monkeypatch.setenv("TFPREC_DATA_DIR", str(data_dir))
    code, out, err = run_cli([f"--model={model_path}", f"--cost_budget={budget}",
                              "--data=mnist",
                              "--calibration_examples=200", "--eval_examples=300",
                              "--sweep_levels=none", "--noexport_tflite", "--noplots",
                              f"--output_dir={out_dir}"], capsys)
    assert code == 0, err[-3000:]
    plan = PrecisionPlan.load(str(out_dir / "plan.json"))
    assert plan.cost().total_compute <= budget
    assert plan.bound() > ref.bound()                 # less budget, larger bound
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["mode"] == "budget"
    bounds = [c["bound"] for c in summary["comparisons"]]
    assert plan.bound() == pytest.approx(min(bounds))  # 'best': smallest bound
    assert all(c["compute_cost"] <= budget for c in summary["comparisons"])
    names = set(os.listdir(out_dir))
    assert "model.tflite" not in names and not any(n.endswith(".png") for n in names)
    assert "float_model.h5" not in names
    assert f"mnist ({data_dir / 'mnist.npz'})" in (out_dir / "report.md").read_text()

    # a budget below every plan: clear error, nothing written
    out2 = tmp_path / "too_small"
    code, out, err = run_cli([f"--model={model_path}", "--cost_budget=1000",
                              "--calibration_examples=200", "--eval_examples=300",
                              f"--output_dir={out2}"], capsys)
    assert code != 0
    assert "--cost_budget=1000" in err and "minimum achievable compute cost" in err
    assert not out2.exists() and not leftovers(tmp_path)


@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_model_with_measured_target_into_existing_dir(demo, tmp_path, capsys):
    assert demo["code"] == 0
    out_dir = tmp_path / "measured"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    (out_dir / "plan.json").write_text("old")
    args = [f"--model={demo['dir'] / 'float_model.h5'}",
            "--target_mismatch=0.05", "--allocation=paper",
            "--calibration_examples=200", "--eval_examples=300",
            "--sweep_levels=none", "--noexport_tflite", f"--output_dir={out_dir}"]
    code, out, err = run_cli(args, capsys)            # not tfprec's folder: refused
    assert code == 2 and "--overwrite" in err and "keep.txt" in err
    assert (out_dir / "plan.json").read_text() == "old"
    code, out, err = run_cli(args + ["--overwrite"], capsys)
    assert code == 0, err[-3000:]
    assert "selection half" in err                    # the calibration progress lines
    assert "report half of the held-out examples (150 ex.)" in out
    assert "selection half of the held-out examples (150 ex.)" in out
    assert (out_dir / "keep.txt").read_text() == "mine"
    assert "keep.txt" not in staging.read_manifest(str(out_dir))["files"]
    plan = PrecisionPlan.load(str(out_dir / "plan.json"))     # replaced
    assert plan.method == "paper"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["mode"] == "measured" and summary["calibration"] is not None
    assert summary["validation"]["num_examples"] == 150       # the unseen half
    text = (out_dir / "report.md").read_text()
    assert "## Calibration on measured data" in text
    assert "calibration did not see" in text
    assert not leftovers(tmp_path)


def run_on_demo(demo, out_dir, capsys, *flags):
    """The CLI on the demo's float model with the paper allocation, small
    calibration / evaluation sets, no sweep and no plots, plus ``flags``."""
    return run_cli([f"--model={demo['dir'] / 'float_model.h5'}", *flags,
                    "--allocation=paper", "--calibration_examples=200",
                    "--eval_examples=300", "--sweep_levels=none", "--noplots",
                    f"--output_dir={out_dir}"], capsys)


@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_per_channel_weights_flag(demo, tmp_path, capsys):
    """--per_channel_weights: per-channel ranges in plan.json (the plan's
    bound computed from them), the report's table says so, and the file is
    written by the ai_edge_quantizer backend (the exact writer has one weight
    scale per tensor)."""
    assert demo["code"] == 0
    out_dir = tmp_path / "per_channel"
    code, out, err = run_on_demo(demo, out_dir, capsys, "--per_channel_weights")
    assert code == 0, err[-3000:]
    plan = PrecisionPlan.load(str(out_dir / "plan.json"))
    assert all(l.weight_channel_ranges is not None for l in plan.layers)
    assert all(max(l.weight_channel_ranges) == l.weight_range for l in plan.layers)
    assert "per channel" in (out_dir / "report.md").read_text()
    assert "ai_edge_quantizer" in out
    assert os.path.getsize(out_dir / "model.tflite") > 0


@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_tflite_mode_integer(demo, tmp_path, capsys):
    """--tflite_mode=integer: model.tflite is written by the
    ai_edge_quantizer backend with full_integer=True (its metadata says
    so, no float convolution or FLOOR remains), and the console says so."""
    from tfprec.export.aeq_recipe import read_graph
    from tfprec.export.aeq_report import read_metadata
    from tfprec.application.steps import TFLITE_MODES
    assert sorted(TFLITE_MODES) == sorted(FLAGS["tflite_mode"].parser.enum_values)
    assert demo["code"] == 0
    out_dir = tmp_path / "integer"
    code, out, err = run_on_demo(demo, out_dir, capsys, "--tflite_mode=integer")
    assert code == 0, err[-3000:]
    assert "ai_edge_quantizer backend, integer mode" in out
    meta = read_metadata(str(out_dir / "model.tflite"))
    assert meta["mode"] == "integer"
    g = read_graph((out_dir / "model.tflite").read_bytes())
    names = [op.name for op in g.ops]
    assert "FLOOR" not in names
    fcs = [op for op in g.ops if op.name == "FULLY_CONNECTED"]
    assert len(fcs) == len(PrecisionPlan.load(str(out_dir / "plan.json")).layers)
    assert all(g.type_name(op.outputs[0]) == "int8" for op in fcs[:-1])
    assert "mode: integer" in (out_dir / "report.md").read_text()


@pytest.mark.slow   # default-suite time (< 5 min); see README
def test_weight_rounding_flag(demo, tmp_path, capsys):
    """--weight_rounding=gptq: plan.json is the plan for the input model;
    quantized.h5 holds weights on the plan's grid that differ from
    round-to-nearest; the summary and the report say which rounding."""
    from tfprec._tf import keras
    from tfprec.quantization import apply
    from tfprec.quantization.configs import quantize_scope
    assert demo["code"] == 0
    model_path = demo["dir"] / "float_model.h5"
    out_dir = tmp_path / "gptq"
    code, out, err = run_on_demo(demo, out_dir, capsys, "--weight_rounding=gptq")
    assert code == 0, err[-3000:]
    model = keras.models.load_model(model_path, compile=False)
    plan = PrecisionPlan.load(str(out_dir / "plan.json"))
    plan.validate_for(model)                      # the input model's fingerprint
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["weight_rounding"] == "gptq"
    report = (out_dir / "report.md").read_text()
    assert "--weight_rounding=gptq" in report
    # --rounding_examples=0 (default): 8 input rows per kernel row of the
    # 784-input first layer
    assert "GPTQ on 6272 training examples" in report
    with quantize_scope():
        q = keras.models.load_model(out_dir / "quantized.h5", compile=False)
    near = apply.quantize_model(model, plan)
    differs = 0
    for lp in plan.layers:
        k = apply.quantized_weights(q, lp.name)[0].astype(np.float64)
        codes = k / (lp.weight_range * 2.0 ** (1 - lp.weight_bits))
        np.testing.assert_array_equal(codes, np.round(codes))
        differs += int(np.sum(k != apply.quantized_weights(near, lp.name)[0]))
    assert differs > 0
    assert os.path.getsize(out_dir / "model.tflite") > 0


@pytest.mark.slow
def test_predicted_allocation(demo, tmp_path, capsys):
    """--allocation=cost_aware_predicted: per-class gains on the selection
    half; a measured target is met there by calibrate's predicted family
    and the plan is validated on the report half; with --cost_budget the
    plan fits and is the lowest-prediction plan of planning.budget."""
    from tfprec.planning import budget as budget_lib
    from tfprec.planning.predict import (SOFTMAX, predicted_accuracy_drop,
                                         predicted_mismatch)
    assert demo["code"] == 0
    model_path = demo["dir"] / "float_model.h5"
    common = [f"--model={model_path}", "--allocation=cost_aware_predicted",
              "--calibration_examples=200", "--eval_examples=300",
              "--sweep_levels=none", "--noexport_tflite", "--noplots"]
    out_dir = tmp_path / "predicted"
    code, out, err = run_cli(common + ["--target_mismatch=0.05",
                                       f"--output_dir={out_dir}"], capsys)
    assert code == 0, err[-3000:]
    assert "per-class noise gains (mismatch predictor) over the selection half" in err
    plan = PrecisionPlan.load(str(out_dir / "plan.json"))
    assert plan.method.startswith("cost_aware_predicted")
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["mode"] == "measured"
    assert summary["validation"]["num_examples"] == 150       # the report half
    cal = summary["calibration"]
    assert cal["best"] == "cost_aware_predicted" and cal["num_examples"] == 150
    (cand,) = cal["candidates"]
    assert cand["num_mismatch"] <= 0.05 * 150 and cand["evaluations"] >= 1
    assert "allocation cost_aware_predicted" in out
    assert "predicted_accuracy_drop" not in plan.info        # a mismatch target

    out_dir = tmp_path / "predicted_drop"     # an accuracy target: the softmax drop
    code, out, err = run_cli(common + ["--max_accuracy_drop=2",
                                       f"--output_dir={out_dir}"], capsys)
    assert code == 0, err[-3000:]
    plan = PrecisionPlan.load(str(out_dir / "plan.json"))
    assert plan.method.startswith("cost_aware_predicted")
    assert plan.info["predicted_accuracy_drop"] <= plan.target * (1 + 1e-6)
    cand = json.loads((out_dir / "summary.json").read_text())["calibration"][
        "candidates"][0]
    assert cand["accuracy_drop_pp"] <= 2 + 1e-9
    from tfprec.application import steps
    model = steps.load_model(str(model_path))
    ds = data_lib.load_dataset("mnist_subset", flatten=True)
    x, y = ds.x_test[:150], ds.y_test[:150]
    pg = tfprec.noise_gains(model, x, per_class=True)
    assert plan.info["predicted_accuracy_drop"] == pytest.approx(
        predicted_accuracy_drop(plan, pg, SOFTMAX), rel=1e-6)

    out_dir = tmp_path / "predicted_budget"
    two = plan.with_bits(weight_bits={l.name: 2 for l in plan.layers},
                         act_bits={l.name: 2 for l in plan.layers})
    budget = 0.5 * (plan.cost().total_compute + two.cost().total_compute)
    # the same plan as the library's, from gains on the same selection half:
    # the softmax drop by default, the selection half's labels on request
    for how, labels in (("softmax", SOFTMAX), ("labels", y)):
        d = out_dir / how
        code, out, err = run_cli(common + [f"--cost_budget={budget}",
                                           f"--predicted_drop={how}",
                                           f"--output_dir={d}"], capsys)
        assert code == 0, err[-3000:]
        plan = PrecisionPlan.load(str(d / "plan.json"))
        assert plan.cost().total_compute <= budget
        assert "lowest predicted accuracy drop that fits" in out
        assert "report half of the held-out examples (150 ex.)" in out
        assert json.loads((d / "summary.json").read_text())["validation"][
            "num_examples"] == 150
        want = budget_lib.predicted_budget_plan(pg, budget, labels=labels)
        assert ([(l.weight_bits, l.act_bits) for l in plan.layers]
                == [(l.weight_bits, l.act_bits) for l in want.layers])
        assert plan.info["predicted_mismatch"] == pytest.approx(
            predicted_mismatch(want, pg), rel=1e-6)
        assert plan.info["predicted_accuracy_drop"] == pytest.approx(
            predicted_accuracy_drop(want, pg, labels), rel=1e-6)


# ================================================================ bad flags
@pytest.fixture
def bad_inputs(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5")
    (tmp_path / "a_file").write_text("x")
    return tmp_path


BAD = [
    (["--demo", "--target_mismatch=-0.01"], ["--target_mismatch"]),
    (["--demo", "--target_bound=-0.01"], ["--target_bound"]),
    (["--demo", "--target_bound=0"], ["--target_bound"]),
    (["--demo", "--allocation=greedy"], ["--allocation"]),
    (["--demo", "--allocation=cost_aware_predicted", "--target_bound=0.01"],
     ["--allocation=cost_aware_predicted", "--target_bound"]),
    (["--demo", "--cost=energy"], ["--cost"]),
    (["--model={d}/missing.h5"], ["--model", "missing.h5"]),
    (["--model={d}/garbage.h5"], ["--model", "garbage.h5"]),
    (["--demo", "--data={d}/garbage.npz"], ["--data", "garbage.npz"]),
    (["--demo", "--data={d}/missing.npz"], ["--data", "missing.npz"]),
    (["--demo", "--data=imagenet"], ["--data", "imagenet"]),
    (["--demo", "--data=mnist", "--data_dir={d}/nowhere"], ["--data_dir", "nowhere"]),
    (["--demo", "--eval_examples=0"], ["--eval_examples"]),
    (["--demo", "--calibration_examples=-5"], ["--calibration_examples"]),
    (["--demo", "--rounding_examples=-1"], ["--rounding_examples"]),
    (["--demo", "--max_accuracy_drop=-1"], ["--max_accuracy_drop"]),
    (["--demo", "--target_measured_mismatch=1.5"], ["--target_measured_mismatch"]),
    (["--demo", "--cost_budget=-3"], ["--cost_budget"]),
    (["--demo", "--cost_budget=1e9", "--max_accuracy_drop=1"],
     ["--cost_budget", "--max_accuracy_drop"]),
    (["--demo", "--target_mismatch=0.02", "--cost_budget=1e9"],
     ["--target_mismatch", "--cost_budget"]),
    (["--demo", "--target_bound=0.02", "--max_accuracy_drop=1"],
     ["--target_bound", "--max_accuracy_drop"]),
    (["--demo", "--target_mismatch=0.02", "--target_measured_mismatch=0.02"],
     ["--target_measured_mismatch", "--target_mismatch"]),
    (["--demo", "--sweep_levels=1-40"], ["--sweep_levels"]),
    (["--demo", "--demo_hidden=32,x"], ["--demo_hidden"]),
    (["--demo", "--max_bits=20"], ["--max_bits"]),
    (["--demo", "--model={d}/garbage.h5"], ["--demo", "--model"]),
    ([], ["--model", "--demo"]),
    (["--demo", "--output_dir={d}/a_file"], ["--output_dir", "a_file"]),
]


@pytest.mark.parametrize("args,names", BAD, ids=[" ".join(a) or "no-args" for a, _ in BAD])
def test_bad_flags_fail_cleanly(bad_inputs, capsys, args, names):
    d = str(bad_inputs)
    out_dir = bad_inputs / "out"
    args = [a.format(d=d) for a in args]
    if not any(a.startswith("--output_dir") for a in args):
        args.append(f"--output_dir={out_dir}")
    before = set(os.listdir(bad_inputs))
    code, out, err = run_cli(args, capsys)
    assert code != 0
    for n in names:
        assert n in err, err[-2000:]
    assert not out_dir.exists()
    assert set(os.listdir(bad_inputs)) == before      # nothing new, no temp folder


def test_missing_data_dir_from_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFPREC_DATA_DIR", str(tmp_path / "nowhere"))
    code, out, err = run_cli(["--demo", "--data=mnist", f"--output_dir={tmp_path}/o"],
                             capsys)
    assert code != 0 and "TFPREC_DATA_DIR" in err and "nowhere" in err
    assert os.listdir(tmp_path) == []


def test_positional_arguments_are_rejected(tmp_path, capsys):
    code, out, err = run_cli(["--demo", "stray", f"--output_dir={tmp_path}/o"], capsys)
    assert code == 2 and "stray" in err and not (tmp_path / "o").exists()


def test_every_flag_has_help():
    names = [f.name for f in FLAGS.get_flags_for_module(cli_flags.__name__)]
    for required in ("model", "data", "data_dir", "calibration_examples",
                     "eval_examples", "target_bound", "target_mismatch",
                     "max_accuracy_drop", "overwrite", "custom_objects",
                     "target_measured_mismatch", "cost_budget", "allocation", "cost",
                     "output_dir", "demo", "plots", "export_tflite"):
        assert required in names
    for f in FLAGS.get_flags_for_module(cli_flags.__name__):
        assert f.help and len(f.help) > 15, f.name
    assert FLAGS["target_bound"].default == 0.01
    assert FLAGS["target_mismatch"].default is None   # measured, as in calibrate()
    assert FLAGS["allocation"].default == "best"
    assert FLAGS["output_dir"].default == "tfprec_out"
    assert FLAGS["export_tflite"].default is True
    assert FLAGS["plots"].default == report_lib.have_matplotlib()


# ============================================================ subprocesses
def test_helpfull_lists_every_flag():
    r = subprocess.run([sys.executable, "-m", "tfprec", "--helpfull"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout + r.stderr
    for f in FLAGS.get_flags_for_module(cli_flags.__name__):
        flag = f"--[no]{f.name}" if f.boolean else f"--{f.name}"
        assert flag in text, flag
    assert "tfprec --demo" in text                    # the usage text


def test_entry_point_bad_flag_exits_nonzero(tmp_path):
    out_dir = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "tfprec", "--demo",
                        "--target_mismatch=-1", f"--output_dir={out_dir}"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2
    assert "--target_mismatch" in r.stderr and "Traceback" not in r.stderr
    assert not out_dir.exists() and os.listdir(tmp_path) == []


# ============================================================ pure helpers
def test_parse_levels():
    assert cli.parse_levels("2-5") == [2, 3, 4, 5]
    assert cli.parse_levels("8,2,4") == [2, 4, 8]
    assert cli.parse_levels("none") == [] and cli.parse_levels("") == []
    for bad in ("1-4", "5-3", "2,x", "17"):
        with pytest.raises(ValueError):
            cli.parse_levels(bad)


def _gains():
    layers = tuple(LayerGains(
        name=f"l{i}", layer_class="Dense", e_w=gw, e_a=ga, r_w=1.0, r_a=1.0,
        act_signed=False, act_range_source="known bound", act_low=0.0, act_high=2.0,
        weight_max_abs=1.0, dot_length=d, num_dots=p, num_weights=nw, num_inputs=ni)
        for i, (gw, ga, d, p, nw, ni) in enumerate(
            [(40.0, 5.0, 785, 64, 50240, 784), (10.0, 9.0, 65, 64, 4160, 64),
             (9.0, 1.0, 65, 10, 650, 64)]))
    return NoiseGains(layers, 100, 10, 0)


def _level_plan(rule, g, **level):
    """The rule's plan at one level, None when the level needs > 16 bits."""
    try:
        return rule(g, **level)
    except tfprec.UnattainableTargetError:
        return None


@pytest.mark.parametrize("cost", ["compute", "memory"])
def test_budget_plans_fit_the_budget(cost):
    """select.budget_plans, as the CLI's --cost_budget uses it: every plan
    fits, the bisected cost-aware bound is no worse than any rule's level
    scan, and the minimum cost is every tensor at 2 bits."""
    from tfprec.planning import select
    g = _gains()
    full = tfprec.uniform_plan(g, bits=16).cost().total(cost)
    low = tfprec.uniform_plan(g, bits=2).cost().total(cost)
    for frac in (0.2, 0.45, 0.7):
        budget = low + frac * (full - low)
        plans, min_costs = select.budget_plans(g, budget, cost=cost)
        plan = plans["cost_aware"]
        assert min_costs["cost_aware"] == pytest.approx(low)
        assert plan.cost().total(cost) <= budget
        assert plan.info["cost_budget"]["budget"] == budget
        # brute force over each single-level rule's levels: the best that fits
        for m, make in (("paper", lambda b: _level_plan(tfprec.paper_plan, g, b_min=b)),
                        ("uniform", lambda b: _level_plan(tfprec.uniform_plan, g, bits=b))):
            fits = [p for p in map(make, range(2, 17))
                    if p is not None and p.cost().total(cost) <= budget]
            if fits:
                best = min(p.bound() for p in fits)
                assert plans[m].bound() == pytest.approx(best)
                assert plan.bound() <= best * 1.01
        assert select.tightest(plans, cost) in plans
    plans, _ = select.budget_plans(g, full * 2, cost=cost, methods=("cost_aware",))
    assert plans["cost_aware"].cost().total(cost) == pytest.approx(full)
    plans, min_costs = select.budget_plans(g, low * 0.5, cost=cost,
                                           methods=("cost_aware",))
    assert plans == {} and min_costs["cost_aware"] == pytest.approx(low)


def test_choices_take_settings_not_flags():
    """steps.choose_* work from a Settings object (the flags are not parsed
    here: reading FLAGS would raise); the choices match a direct search."""
    import dataclasses
    from tfprec.application import steps
    g = _gains()
    s = cli.Settings(mode="analytic", target_bound=0.01, cost="memory")
    ch = steps.choose_analytic(s, g, None, None)
    direct = {m: tfprec.make_plan(g, m, 0.01, cost="memory")
              for m in ("cost_aware", "paper", "uniform", "icml2017")}
    assert set(ch.plans) == set(direct)
    assert ch.plan.cost().total_memory == min(p.cost().total_memory
                                              for p in direct.values())
    ch = steps.choose_analytic(dataclasses.replace(s, allocation="paper"), g, None, None)
    assert ch.chosen == "paper" and ch.plan.bound() == pytest.approx(direct["paper"].bound())
    full = tfprec.uniform_plan(g, bits=16).cost().total_compute
    b = cli.Settings(mode="budget", cost_budget=0.5 * full)
    ch = steps.choose_budget(b, None, g, None, None)
    assert ch.plan.cost().total_compute <= 0.5 * full
    assert ch.plan.bound() == min(p.bound() for p in ch.plans.values())
    with pytest.raises(cli.CliError, match="minimum achievable compute cost"):
        steps.choose_budget(dataclasses.replace(b, cost_budget=10.0), None, g, None,
                            None)
