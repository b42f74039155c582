"""The Bazel BUILD files stay in step with the sources (no Bazel needed).

Each BUILD file is Starlark, which for these files is a subset of Python, so
it is parsed with :mod:`ast`: every top-level rule call becomes a
:class:`Target` (kind, name, srcs, deps, data, main, size, tags; a
``glob([...])`` is expanded against the package folder).  The tests check:

* coverage: every ``tfprec/*.py`` is in the srcs of a py_library / py_binary
  of ``//tfprec``; every ``tests/test_*.py`` is a py_test of ``//tests`` (and
  the test helpers are in some target); every ``examples/*.py`` and
  ``benchmarks/*.py`` is in a target of its package, and every script with a
  ``__main__`` block is a py_binary -- so adding a file without a target
  fails here;
* the targets for files other engineers are still adding exist already
  (:data:`PENDING`); their srcs may be missing until the files land, every
  other src must exist;
* deps: each target's deps cover the repository modules its sources import
  (``tfprec.X`` -> ``//tfprec:X``, ``import tfprec`` -> ``//tfprec``, a
  sibling module -> a target holding that file), every repository label in
  deps / data names an existing target or file, and the dependency graph has
  no cycles (Bazel rejects them);
* rule hygiene: unique names per package, py_test sizes and tags, the CLI
  binary's main module.

Run with pytest; ``python tests/test_build.py`` works too.
"""
from __future__ import annotations

import ast
import dataclasses
import fnmatch
import os
import sys
from typing import Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("", "tfprec", "tests", "examples", "benchmarks")
PY_RULES = ("py_library", "py_binary", "py_test")
TEST_SIZES = ("small", "medium", "large", "enormous")

# Files other engineers are adding while this was written: their targets must
# exist now; the files themselves may be missing until they land.
PENDING = {
    "tfprec/calibrate.py": ("tfprec", "calibrate"),
    "tfprec/baselines.py": ("tfprec", "baselines"),
    "tfprec/cli.py": ("tfprec", "cli"),
    "tfprec/__main__.py": ("tfprec", "tfprec_cli"),
    "tfprec/report.py": ("tfprec", "report"),
    "tests/test_calibrate.py": ("tests", "test_calibrate"),
    "tests/test_baselines.py": ("tests", "test_baselines"),
    "tests/test_cli.py": ("tests", "test_cli"),
    "tests/test_report.py": ("tests", "test_report"),
    "benchmarks/calibrated.py": ("benchmarks", "calibrated"),
    "benchmarks/peers.py": ("benchmarks", "peers"),
}


# ============================================================== parsing
@dataclasses.dataclass
class Target:
    package: str
    kind: str
    name: str
    srcs: list
    deps: list
    data: list
    main: Optional[str]
    size: Optional[str]
    tags: Optional[list]
    line: int

    @property
    def label(self) -> str:
        return f"//{self.package}:{self.name}"

    def src_paths(self) -> list:
        """Repository-relative paths of the srcs that are files of this
        package (labels of other targets are left out)."""
        return [_join(self.package, s) for s in self.srcs
                if not s.startswith(("//", ":", "@"))]


def _join(package: str, path: str) -> str:
    return f"{package}/{path}" if package else path


def _glob(root: str, package: str, patterns) -> list:
    d = os.path.join(root, package)
    names = sorted(os.listdir(d)) if os.path.isdir(d) else []
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)
            and os.path.isfile(os.path.join(d, n))]


def _value(node, root: str, package: str):
    """Literal value of an attribute; ``glob([...])`` and ``a + b`` too."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "glob"):
        return _glob(root, package, ast.literal_eval(node.args[0]))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _value(node.left, root, package) + _value(node.right, root, package)
    return ast.literal_eval(node)


def parse_build(root: str, package: str) -> list:
    """Targets of ``<root>/<package>/BUILD`` (every top-level call with a
    ``name``)."""
    path = os.path.join(root, package, "BUILD")
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    out = []
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Name)):
            continue
        call = stmt.value
        kw = {k.arg: k.value for k in call.keywords if k.arg}
        if "name" not in kw:
            continue
        val = lambda k, d=None: _value(kw[k], root, package) if k in kw else d  # noqa: E731
        out.append(Target(package, call.func.id, val("name"), list(val("srcs", []) or []),
                          list(val("deps", []) or []), list(val("data", []) or []),
                          val("main"), val("size"), val("tags"), stmt.lineno))
    return out


def load(root: str = ROOT) -> dict:
    """package -> its targets, for every package with a BUILD file."""
    return {p: parse_build(root, p) for p in PACKAGES
            if os.path.isfile(os.path.join(root, p, "BUILD"))}


def normalize(label: str, package: str) -> str:
    """Canonical ``//pkg:name`` form of a label written in ``package``."""
    if label.startswith(":"):
        return f"//{package}:{label[1:]}"
    if label.startswith("//"):
        if ":" in label:
            return label
        pkg = label[2:]
        return f"//{pkg}:{pkg.rsplit('/', 1)[-1]}"
    return f"//{package}:{label}"          # a file or target of this package


# ============================================================== sources
def py_files(root: str, package: str, pattern: str = "*.py") -> list:
    d = os.path.join(root, package)
    if not os.path.isdir(d):
        return []
    return sorted(_join(package, n) for n in os.listdir(d)
                  if fnmatch.fnmatch(n, pattern) and os.path.isfile(os.path.join(d, n)))


def expected_files(root: str = ROOT) -> list:
    """Every source file that must be covered by a target."""
    return (py_files(root, "tfprec") + py_files(root, "tests")
            + py_files(root, "examples") + py_files(root, "benchmarks"))


def has_main_block(path: str) -> bool:
    with open(path) as f:
        tree = ast.parse(f.read())
    for stmt in tree.body:
        if (isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare)
                and isinstance(stmt.test.left, ast.Name)
                and stmt.test.left.id == "__name__"):
            return True
    return False


def coverage(root: str = ROOT, builds: Optional[dict] = None) -> dict:
    """file -> targets whose srcs hold it (only py_* rules count)."""
    builds = load(root) if builds is None else builds
    cov: dict = {}
    for pkg, targets in builds.items():
        for t in targets:
            if t.kind in PY_RULES:
                for p in t.src_paths():
                    cov.setdefault(p, []).append(t)
    return cov


def uncovered(root: str = ROOT, builds: Optional[dict] = None) -> list:
    """Problems: files without a (suitable) target, as readable strings."""
    cov = coverage(root, builds)
    bad = []
    for f in expected_files(root):
        pkg, base = os.path.split(f)
        ts = [t for t in cov.get(f, []) if t.package == pkg]
        if not ts:
            bad.append(f"{f}: no py_library/py_binary/py_test in {pkg}/BUILD lists it in srcs")
            continue
        kinds = {t.kind for t in ts}
        if pkg == "tests" and base.startswith("test_") and "py_test" not in kinds:
            bad.append(f"{f}: is a test file but no py_test in tests/BUILD runs it")
        if (pkg in ("examples", "benchmarks") or base == "__main__.py") and \
                has_main_block(os.path.join(root, f)) and "py_binary" not in kinds:
            bad.append(f"{f}: is a script (__main__ block) but has no py_binary")
    return bad


# ============================================================== imports
def _module_names(root: str, package: str) -> set:
    return {os.path.basename(p)[:-3] for p in py_files(root, package)}


def imports_of(path: str, tfprec_modules: set) -> tuple:
    """(tfprec modules, other top-level names) imported anywhere in a file.

    ``import tfprec`` and ``from tfprec import <not a module>`` give
    ``'__init__'``.
    """
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    mods, other = set(), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                parts = a.name.split(".")
                if parts[0] == "tfprec":
                    mods.add(parts[1] if len(parts) > 1 else "__init__")
                else:
                    other.add(parts[0])
        elif isinstance(n, ast.ImportFrom):
            if n.level:                      # relative import inside tfprec
                if n.module:
                    mods.add(n.module.split(".")[0])
                else:
                    mods.update(a.name for a in n.names)
                continue
            parts = (n.module or "").split(".")
            if parts[0] == "tfprec":
                if len(parts) > 1:
                    mods.add(parts[1])
                else:
                    for a in n.names:
                        mods.add(a.name if a.name in tfprec_modules else "__init__")
            elif parts[0]:
                other.add(parts[0])
    return mods, other


def dependency_problems(root: str = ROOT, builds: Optional[dict] = None) -> list:
    """Missing deps, dangling labels and cycles, as readable strings."""
    builds = load(root) if builds is None else builds
    by_label = {t.label: t for ts in builds.values() for t in ts}
    cov = coverage(root, builds)
    tfmods = _module_names(root, "tfprec") | {os.path.basename(p)[:-3]
                                              for p in PENDING if p.startswith("tfprec/")}
    # sibling / example modules a file may import by plain name
    plain = {}
    for pkg in ("tests", "examples", "benchmarks"):
        for p in py_files(root, pkg):
            plain.setdefault(os.path.basename(p)[:-3], []).append(p)
    problems = []
    for t in by_label.values():
        if t.kind not in PY_RULES:
            continue
        deps = {normalize(d, t.package) for d in t.deps}
        own = set(t.src_paths())
        # dangling labels
        for d in sorted(deps):
            if d not in by_label:
                problems.append(f"{t.label} (BUILD line {t.line}): dep {d} is not a target")
        for d in t.data:
            lab = normalize(d, t.package)
            pkg, name = lab[2:].split(":", 1)
            if lab not in by_label and not os.path.exists(os.path.join(root, pkg, name)):
                problems.append(f"{t.label}: data {d} is neither a target nor a file")
        # a source also listed by a direct dep (a py_binary over its
        # py_library) is checked there
        via_dep = {p for d in deps if d in by_label for p in by_label[d].src_paths()}
        for src in sorted(own - via_dep):
            full = os.path.join(root, src)
            if not os.path.isfile(full):
                continue
            mods, other = imports_of(full, tfmods)
            for m in sorted(mods):
                want = "//tfprec:tfprec" if m == "__init__" else f"//tfprec:{m}"
                if f"tfprec/{'__init__' if m == '__init__' else m}.py" in own:
                    continue
                if want not in deps:
                    short = "//tfprec" if m == "__init__" else want
                    what = "import tfprec" if m == "__init__" else f"tfprec.{m}"
                    problems.append(f"{t.label}: {src} imports {what} but deps lack "
                                    f"{short!r}")
            here = os.path.dirname(src)
            for name in sorted(other):
                files = plain.get(name, [])
                local = [p for p in files if os.path.dirname(p) == here]
                files = local or files
                if not files or any(p in own for p in files):
                    continue
                holders = {x.label for p in files for x in cov.get(p, [])}
                if not holders & deps and not any(
                        normalize(d, t.package) == f"//{os.path.dirname(p)}:"
                        f"{os.path.basename(p)}" for d in t.data for p in files):
                    problems.append(f"{t.label}: {src} imports {name} ({files[0]}) but "
                                    f"deps hold none of {sorted(holders) or 'its targets'}")
    # cycles (depth-first search over repository labels)
    state: dict = {}

    def visit(lab, stack):
        state[lab] = 1
        t = by_label[lab]
        for d in sorted({normalize(x, t.package) for x in t.deps}):
            if d not in by_label:
                continue
            if state.get(d) == 1:
                cyc = stack[stack.index(d):] + [d] if d in stack else [lab, d]
                problems.append("dependency cycle: " + " -> ".join(cyc))
            elif d not in state:
                visit(d, stack + [d])
        state[lab] = 2

    for lab in sorted(by_label):
        if lab not in state:
            visit(lab, [lab])
    return problems


# ============================================================== tests
@pytest.fixture(scope="module")
def builds():
    return load(ROOT)


def test_every_package_has_a_build_file(builds):
    for p in PACKAGES:
        assert p in builds, f"{_join(p, 'BUILD')} is missing"


def test_every_source_file_has_a_target(builds):
    bad = uncovered(ROOT, builds)
    assert not bad, "files without a Bazel target:\n  " + "\n  ".join(bad)


def test_pending_targets_exist(builds):
    labels = {t.label: t for ts in builds.values() for t in ts}
    for path, (pkg, name) in PENDING.items():
        t = labels.get(f"//{pkg}:{name}")
        assert t is not None, f"no target //{pkg}:{name} for {path}"
        assert path in t.src_paths(), f"//{pkg}:{name} does not list {path}"


def test_srcs_exist(builds):
    missing = []
    for ts in builds.values():
        for t in ts:
            for p in t.src_paths():
                if not os.path.isfile(os.path.join(ROOT, p)) and p not in PENDING:
                    missing.append(f"{t.label}: {p}")
    assert not missing, "srcs that do not exist:\n  " + "\n  ".join(missing)


def test_unique_names(builds):
    for pkg, ts in builds.items():
        names = [t.name for t in ts]
        dups = sorted({n for n in names if names.count(n) > 1})
        assert not dups, f"{_join(pkg, 'BUILD')}: duplicate target names {dups}"


def test_deps_cover_imports_and_have_no_cycles(builds):
    bad = dependency_problems(ROOT, builds)
    assert not bad, "BUILD deps out of step with the sources:\n  " + "\n  ".join(bad)


def test_py_tests_have_size_and_tags(builds):
    for t in builds["tests"]:
        if t.kind == "py_test":
            assert t.size in TEST_SIZES, f"{t.label}: size {t.size!r}"
            assert t.tags and all(isinstance(x, str) for x in t.tags), f"{t.label}: tags"
            assert t.srcs == [f"{t.name}.py"], f"{t.label}: srcs {t.srcs}"


def test_cli_binary(builds):
    t = {x.name: x for x in builds["tfprec"]}["tfprec_cli"]
    assert t.kind == "py_binary" and t.main == "__main__.py"
    assert "__main__.py" in t.srcs and ":cli" in t.deps


def test_library_per_module(builds):
    """One py_library per tfprec module, named after it."""
    libs = {t.name: t for t in builds["tfprec"] if t.kind == "py_library"}
    for p in py_files(ROOT, "tfprec"):
        stem = os.path.basename(p)[:-3]
        if stem == "__main__":
            continue
        name = "tfprec" if stem == "__init__" else stem
        assert name in libs, f"no py_library //tfprec:{name} for {p}"
        assert libs[name].srcs == [os.path.basename(p)]


def test_checks_catch_problems(tmp_path):
    """The checks fail for a file without a target, a missing dep, a
    dangling label and a cycle."""
    (tmp_path / "tfprec").mkdir()
    (tmp_path / "examples").mkdir()
    (tmp_path / "BUILD").write_text("")
    (tmp_path / "tfprec" / "__init__.py").write_text("")
    (tmp_path / "tfprec" / "a.py").write_text("from tfprec import b\n")
    (tmp_path / "tfprec" / "b.py").write_text("import tfprec.a\n")
    (tmp_path / "tfprec" / "new.py").write_text("x = 1\n")
    (tmp_path / "examples" / "run.py").write_text(
        "import tfprec\nif __name__ == '__main__':\n    pass\n")
    (tmp_path / "tfprec" / "BUILD").write_text(
        'py_library(name = "tfprec", srcs = ["__init__.py"])\n'
        'py_library(name = "a", srcs = ["a.py"], deps = [":b"])\n'
        'py_library(name = "b", srcs = ["b.py"], deps = [":a", ":gone"])\n')
    (tmp_path / "examples" / "BUILD").write_text(
        'py_library(name = "run", srcs = glob(["*.py"]))\n')
    root = str(tmp_path)
    b = load(root)
    bad = uncovered(root, b)
    assert any(p.startswith("tfprec/new.py") for p in bad)
    assert any(p.startswith("examples/run.py") and "py_binary" in p for p in bad)
    deps = dependency_problems(root, b)
    assert any("//tfprec:gone is not a target" in p for p in deps)
    assert any("dependency cycle" in p for p in deps)
    assert any("//examples:run" in p and "'//tfprec'" in p for p in deps)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
