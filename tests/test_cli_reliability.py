"""Reliability of the command line: the output folder (refusal, manifest,
--overwrite, all-or-nothing commit, permissions), stop signals, fast errors
before TensorFlow is imported, one-line errors with exit status 2, Keras 3
and custom-object models, and the wording of the outputs (vacuous bounds,
plan names, data splits, useless plans).

Everything here is in-process on small objects or a subprocess that fails
before TensorFlow loads; nothing trains a model.
"""
import json
import os
import signal
import stat
import subprocess
import sys
import types
import zipfile

import pytest
from absl import flags

from tfprec.application import cli, staging, tables
from tfprec.application import flags as cli_flags
from tfprec.application.figures import base_method
from tfprec.errors import InvalidDataError

FLAGS = flags.FLAGS
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def run_main(args):
    """Parses ``args`` like the command line and runs cli.main; the status."""
    FLAGS.unparse_flags()
    try:
        rest = FLAGS(["tfprec"] + list(args))
        return cli.main(rest)
    finally:
        FLAGS.unparse_flags()


def snapshot(folder):
    """{name: (bytes, mode)} of every entry of ``folder``."""
    out = {}
    for n in sorted(os.listdir(folder)):
        p = os.path.join(folder, n)
        out[n] = (open(p, "rb").read() if os.path.isfile(p) else None,
                  stat.S_IMODE(os.stat(p).st_mode))
    return out


def temp_leftovers(folder):
    return [n for n in os.listdir(folder)
            if n.startswith((staging.TEMP_PREFIX, staging.BACKUP_PREFIX))]


def stage(out_dir, files, overwrite=False):
    """A Staging of ``out_dir`` holding ``files`` ({name: text})."""
    st = staging.Staging(str(out_dir), overwrite=overwrite, command="tfprec --test")
    for name, text in files.items():
        st.write_text(name, text)
    return st


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ============================================================ output folder
def test_new_folder_gets_manifest_and_umask_modes(tmp_path, umask022):
    out = tmp_path / "a" / "out"                  # parents created at commit
    st = stage(out, {"plan.json": "{}", "report.md": "new"})
    files = st.commit()
    assert sorted(os.path.basename(f) for f in files) == ["plan.json", "report.md"]
    m = staging.read_manifest(str(out))
    assert m["tool"] == "tfprec" and sorted(m["files"]) == ["plan.json", "report.md"]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755
    for n in ("plan.json", "report.md", staging.MANIFEST):
        assert stat.S_IMODE(os.stat(out / n).st_mode) == 0o644, n
    assert temp_leftovers(tmp_path) == [] and temp_leftovers(tmp_path / "a") == []


def test_replaced_file_keeps_umask_mode_not_0600(tmp_path, umask022):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("mine")
    os.chmod(out / "report.md", 0o644)
    st = stage(out, {"report.md": "new", "plan.json": "{}"}, overwrite=True)
    st.commit()
    assert (out / "report.md").read_text() == "new"
    assert stat.S_IMODE(os.stat(out / "report.md").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(out / "plan.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o755


@pytest.mark.parametrize("name", ["report.md", "plan.json", "notes.txt"])
def test_foreign_folder_is_refused_without_overwrite(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text("the user's own file")
    with pytest.raises(cli.CliError, match="--output_dir") as e:
        staging.Staging(str(out))
    assert e.value.code == 2 and name in str(e.value) and "--overwrite" in str(e.value)
    assert (out / name).read_text() == "the user's own file"
    assert temp_leftovers(tmp_path) == []


def test_overwrite_on_foreign_folder_replaces_only_same_names(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("old report")
    (out / "keep.txt").write_text("mine")
    stage(out, {"report.md": "new report", "plan.json": "{}"}, overwrite=True).commit()
    assert (out / "report.md").read_text() == "new report"
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(staging.read_manifest(str(out))["files"]) == ["plan.json", "report.md"]


def test_tfprec_folder_is_replaced_whole(tmp_path):
    """A second run into a folder tfprec wrote: no --overwrite needed, and
    the first run's files this run does not write are removed."""
    out = tmp_path / "out"
    stage(out, {"plan.json": "1", "model.tflite": "1", "float_model.h5": "1"}).commit()
    st = stage(out, {"plan.json": "2", "report.md": "2"})
    st.commit()
    assert sorted(os.listdir(out)) == sorted(["plan.json", "report.md", staging.MANIFEST])
    assert (out / "plan.json").read_text() == "2"
    assert st.removed == ["float_model.h5", "model.tflite"] and st.replaced == ["plan.json"]


def test_tfprec_folder_with_user_files_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    stage(out, {"plan.json": "1", "model.tflite": "1"}).commit()
    (out / "mine.txt").write_text("mine")
    with pytest.raises(cli.CliError, match="mine.txt") as e:
        staging.check_output_dir(str(out))
    assert e.value.code == 2 and "did not write" in str(e.value)
    stage(out, {"plan.json": "2"}, overwrite=True).commit()
    assert sorted(os.listdir(out)) == sorted(["plan.json", "mine.txt", staging.MANIFEST])


def test_folder_changed_during_the_run_is_refused_at_commit(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    st = stage(out, {"plan.json": "new"})
    (out / "plan.json").write_text("written meanwhile by someone else")
    with pytest.raises(cli.CliError, match="--overwrite"):
        st.commit()
    st.discard()
    assert (out / "plan.json").read_text() == "written meanwhile by someone else"
    assert temp_leftovers(tmp_path) == []


@pytest.mark.parametrize("fail_at", [1, 2, 4, 7])
def test_failed_commit_leaves_the_folder_exactly_as_before(tmp_path, monkeypatch,
                                                           fail_at):
    """os.replace fails on its ``fail_at``-th call (1: staging the manifest;
    2-5: moving an old file out; 6-9: moving a new one in): every file is
    moved back."""
    out = tmp_path / "out"
    stage(out, {"plan.json": "1", "report.md": "1", "model.tflite": "1"}).commit()
    before = snapshot(out)
    st = stage(out, {"plan.json": "2", "report.md": "2", "summary.json": "2"})
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == fail_at:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(cli.CliError, match="left as it was") as e:
        st.commit()
    monkeypatch.setattr(os, "replace", real)
    st.discard()
    assert e.value.code == 1 and "No space left" in str(e.value)
    assert snapshot(out) == before
    assert temp_leftovers(tmp_path) == [] and temp_leftovers(out) == []


def test_failed_rename_of_a_new_folder_removes_created_parents(tmp_path, monkeypatch):
    st = stage(tmp_path / "p" / "q" / "out", {"plan.json": "1"})

    def broken(src, dst):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", broken)
    with pytest.raises(cli.CliError, match="Permission denied"):
        st.commit()
    monkeypatch.undo()
    st.discard()
    assert os.listdir(tmp_path) == []


# ============================================================ signals, errors
@pytest.fixture
def quick_run(monkeypatch, tmp_path):
    """cli.main with the TensorFlow import replaced by a no-op and ``_load``
    replaced by ``action`` (set by the test); returns (status, out_dir)."""
    monkeypatch.setattr(cli, "_quiet_tf", lambda: None)

    def go(action, capsys):
        monkeypatch.setattr(cli, "_load", lambda r: action(r))
        out = tmp_path / "out"
        code = run_main(["--demo", f"--output_dir={out}"])
        return code, out, capsys.readouterr().err
    return go


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_stop_signal_cleans_staging_and_exits_128_plus_signum(quick_run, capsys,
                                                              tmp_path, signame):
    signum = getattr(signal, signame)
    seen = {}

    def action(r):
        r.staging.write_text("plan.json", "{}")
        seen["dir"] = r.staging.dir
        os.kill(os.getpid(), signum)              # the handler raises here

    before = signal.getsignal(signum)
    code, out, err = quick_run(action, capsys)
    assert code == 128 + signum
    assert signame in err and "Traceback" not in err
    assert not os.path.exists(seen["dir"]) and not out.exists()
    assert temp_leftovers(tmp_path) == []
    assert signal.getsignal(signum) is before     # the handler is restored


def test_keyboard_interrupt_exits_130_and_cleans(quick_run, capsys, tmp_path):
    def action(r):
        raise KeyboardInterrupt
    code, out, err = quick_run(action, capsys)
    assert code == 130 and "interrupted" in err and temp_leftovers(tmp_path) == []


def test_tfprec_error_is_one_line_exit_2(quick_run, capsys, tmp_path):
    def action(r):
        raise InvalidDataError("x_val holds NaN at example 3")
    code, out, err = quick_run(action, capsys)
    assert code == 2
    assert err.strip() == "tfprec: error: InvalidDataError: x_val holds NaN at example 3"
    assert temp_leftovers(tmp_path) == [] and not out.exists()


def test_os_error_while_running_is_exit_1(quick_run, capsys, tmp_path):
    def action(r):
        raise OSError(28, "No space left on device")
    code, out, err = quick_run(action, capsys)
    assert code == 1 and "No space left on device" in err and "Traceback" not in err


# ============================================================ before TensorFlow
def _fresh_python(code: str):
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env=ENV, timeout=120)


def test_flag_and_file_checks_run_without_tensorflow(tmp_path):
    """read_settings checks flags and files; TensorFlow is not imported."""
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "report.md").write_text("mine")
    code = f"""
import sys
from absl import flags
from tfprec.application import flags as f
cases = [["--model=does_not_exist.h5"], ["--demo", "--output_dir={tmp_path}/busy"],
         ["--demo", "--data_dir={tmp_path}/nowhere"], ["--demo", "--max_accuracy_drop=1",
         "--cost_budget=5"]]
for args in cases:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tfprec"] + args)
    try:
        f.read_settings(flags.FLAGS)
        print("NO ERROR", args)
    except f.CliError as e:
        print("ERR", e.code, e)
print("TF", "tensorflow" in sys.modules)
"""
    r = _fresh_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[-1] == "TF False"
    errs = [line for line in lines if line.startswith("ERR 2 ")]
    assert len(errs) == 4, r.stdout
    assert "--model" in errs[0] and "does_not_exist.h5" in errs[0]
    assert "--output_dir" in errs[1] and "report.md" in errs[1]
    assert "--data_dir" in errs[2] and "--cost_budget" in errs[3]


@pytest.mark.parametrize("args,names", [
    (["--model_path", "does_not_exist.h5"], ["--model", "does_not_exist.h5"]),
    (["--demo", "--batch_size=0"], ["--batch_size"]),
    (["--demo", "--no_such_flag=1"], ["no_such_flag"]),
])
def test_entry_point_usage_errors_exit_2_without_traceback(tmp_path, args, names):
    r = subprocess.run([sys.executable, "-m", "tfprec", *args,
                        f"--output_dir={tmp_path}/o"], capture_output=True, text=True,
                       env=ENV, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("tfprec: error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    for n in names:
        assert n in r.stderr
    assert os.listdir(tmp_path) == []


def test_import_tfprec_is_lazy():
    r = _fresh_python(
        "import os, sys, tfprec\n"
        "print('tensorflow' in sys.modules, os.environ['TF_USE_LEGACY_KERAS'])")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["False 1"]


def test_lazy_names_resolve_to_their_modules():
    import tfprec
    from tfprec import PrecisionPlan, noise_gains  # noqa: F401
    from tfprec.planning.plan import PrecisionPlan as P
    from tfprec.statistics.gains import noise_gains as ng
    assert PrecisionPlan is P and tfprec.noise_gains is ng
    assert tfprec.validate.__name__ == "tfprec.quantization.validate"
    assert tfprec.calibrate.__name__ == "tfprec.planning.calibrate"
    assert tfprec.data.__name__ == "tfprec.application.data"
    assert [n for n in tfprec.__all__ if not hasattr(tfprec, n)] == []
    assert set(tfprec.__all__) <= set(dir(tfprec))
    with pytest.raises(AttributeError, match="no_such_name"):
        tfprec.no_such_name  # noqa: B018


def test_help_lists_tfprec_flags_only():
    r = subprocess.run([sys.executable, "-m", "tfprec", "--help"], capture_output=True,
                       text=True, env=ENV, timeout=120)
    assert r.returncode == 0
    text = r.stdout + r.stderr
    for name in ("--target_bound", "--target_mismatch", "--[no]overwrite",
                 "--custom_objects", "--output_dir"):
        assert name in text, name
    for foreign in ("tpu", "pfor", "xla_"):
        assert f"--{foreign}" not in text.lower()


# ============================================================ models
def _zip(path, member, meta):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, json.dumps(meta))
        z.writestr("model.weights.h5", b"")


def test_keras3_file_is_named_as_such(tmp_path):
    k3 = tmp_path / "k3.keras"
    _zip(k3, "metadata.json", {"keras_version": "3.6.0", "date_saved": "x"})
    with pytest.raises(cli.CliError, match="Keras 3") as e:
        cli_flags.check_model_path(str(k3))
    assert e.value.code == 2 and "tf_keras" in str(e.value) and ".h5" in str(e.value)
    k2 = tmp_path / "k2.keras"
    _zip(k2, "metadata.json", {"keras_version": "2.21.0"})
    cli_flags.check_model_path(str(k2))           # a tf_keras .keras file passes
    assert cli_flags.keras3_version(str(k2)) is None


def test_unreadable_model_is_a_usage_error(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root reads every file")
    p = tmp_path / "m.h5"
    p.write_bytes(b"x")
    os.chmod(p, 0)
    with pytest.raises(cli.CliError, match="not readable"):
        cli_flags.check_model_path(str(p))


def test_custom_objects(tmp_path, monkeypatch):
    """tfprec's own ClipWeights always reloads; a user's unknown class is
    named in the error, and --custom_objects supplies it."""
    from tfprec._tf import keras
    from tfprec.application import models, steps
    mod = tmp_path / "my_layers_h3.py"
    mod.write_text(
        "import tf_keras as keras\n"
        "class Doubler(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from my_layers_h3 import Doubler
    inp = keras.Input((4,))
    x = keras.layers.Dense(3, kernel_constraint=models.ClipWeights(1.0))(inp)
    path = str(tmp_path / "m.h5")
    keras.Model(inp, Doubler()(x)).save(path)
    with pytest.raises(cli.CliError, match="'Doubler'") as e:
        steps.load_model(path)
    assert e.value.code == 2 and "--custom_objects" in str(e.value)
    m = steps.load_model(path, "my_layers_h3")
    assert m.layers[1].kernel_constraint.limit == 1.0
    with pytest.raises(cli.CliError, match="--custom_objects") as e:
        steps.load_model(path, "no_such_module_h3")
    assert e.value.code == 2
    clip_only = str(tmp_path / "clip.h5")
    keras.Model(inp, x).save(clip_only)
    import tfprec
    with tfprec.quantize_scope():                  # tfprec's own object is known
        keras.models.load_model(clip_only, compile=False)


# ============================================================ wording
def test_vacuous_bound_is_not_reported_as_holding():
    assert tables.bound_verdict(0.08, 2.2e5) == "vacuous (bound >= 1)"
    assert tables.bound_verdict(0.08, 1.0) == "vacuous (bound >= 1)"
    assert tables.bound_verdict(0.001, 0.01) == "yes"
    assert tables.bound_verdict(0.02, 0.01) == "**no**"
    row = types.SimpleNamespace(method="paper", level=3, b_min=3, bound=5.0,
                                mismatch_rate=0.1, num_mismatch=3, num_examples=30,
                                quant_accuracy=0.9, compute_cost=1.0, memory_cost=1.0)
    assert "| vacuous (bound >= 1) |" in tables.sweep_markdown([row])


def test_one_name_per_plan():
    assert base_method("cost_aware_pe:compute") == "cost_aware"
    assert base_method("cost_aware:memory") == "cost_aware"
    assert base_method("paper") == "paper"
    s = tables.PlanSummary(method="cost_aware_pe:compute", level=0.0566, bound=0.01,
                           compute_cost=1.0, memory_cost=1.0, chosen=True)
    md = tables.comparison_markdown([s])
    assert "**cost_aware_pe:compute** (chosen) | t=0.0566 |" in md


def test_useless_plans_are_flagged():
    from tfprec.application import steps
    model = types.SimpleNamespace(outputs=[types.SimpleNamespace(shape=(None, 10))])
    bad = types.SimpleNamespace(float_accuracy=0.97, quant_accuracy=0.18,
                                mismatch_rate=0.8)
    w = steps.usefulness_warnings(bad, model, "report half (150 ex.)")
    assert len(w) == 2 and "79.0 percentage points" in w[0]
    assert "report half (150 ex.)" in w[0] and "80.0 %" in w[1]
    chance = types.SimpleNamespace(float_accuracy=0.2, quant_accuracy=0.12,
                                   mismatch_rate=0.3)
    assert "near chance" in steps.usefulness_warnings(chance, model, "x")[0]
    good = types.SimpleNamespace(float_accuracy=0.97, quant_accuracy=0.965,
                                 mismatch_rate=0.01)
    assert steps.usefulness_warnings(good, model, "x") == []


def test_deprecated_measured_flag_maps_to_target_mismatch(tmp_path):
    FLAGS.unparse_flags()
    try:
        FLAGS(["tfprec", "--demo", "--target_measured_mismatch=0.05",
               f"--output_dir={tmp_path}/o"])
        s = cli_flags.read_settings(FLAGS)
    finally:
        FLAGS.unparse_flags()
    assert s.mode == "measured" and s.target_mismatch == 0.05
    assert s.measured_flag == "target_mismatch"
    assert any("deprecated" in n for n in s.notices)
