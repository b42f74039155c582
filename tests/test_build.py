"""The Bazel BUILD files stay in step with the sources (no Bazel needed).

Each BUILD file is Starlark, which for these files is a subset of Python, so
it is parsed with :mod:`ast`: every top-level rule call becomes a
:class:`Target` (kind, name, srcs, deps, data, main, size, tags; a
``glob([...])`` is expanded against the package folder).  The tests check:

* coverage: every ``tfprec/**/*.py`` is in the srcs of a py_library /
  py_binary of ``//tfprec`` (one BUILD file for the package tree; a module's
  target is its path without ``.py``, ``//tfprec:statistics/gains``); every ``tests/test_*.py`` is a py_test of ``//tests`` (and
  the test helpers are in some target); every ``examples/*.py`` and
  ``benchmarks/*.py`` is in a target of its package, and every script with a
  ``__main__`` block is a py_binary -- so adding a file without a target
  fails here;
* every src exists;
* deps: each target's deps cover the repository modules its sources import
  (``tfprec.a.b`` -> ``//tfprec:a/b``, ``import tfprec`` -> ``//tfprec``, a
  sibling module -> a target holding that file), every repository label in
  deps / data names an existing target or file, and the dependency graph has
  no cycles (Bazel rejects them);
* rule hygiene: unique names per package, py_test sizes and tags, the CLI
  binary's main module.

Run with pytest; ``python tests/test_build.py`` works too.  The BUILD files
are written by ``python .ci/gen_build.py``.
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
    """Python files of a package folder (recursively for ``tfprec``)."""
    d = os.path.join(root, package)
    if not os.path.isdir(d):
        return []
    out = []
    for dirpath, dirnames, names in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith((".", "__pycache__")))
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        out += [f"{rel}/{n}" for n in names if fnmatch.fnmatch(n, pattern)]
        if package != "tfprec":
            break
    return sorted(out)


def expected_files(root: str = ROOT) -> list:
    """Every source file that must be covered by a target."""
    return (py_files(root, "tfprec") + py_files(root, "tests")
            + py_files(root, "examples") + py_files(root, "benchmarks"))


def label_of_file(path: str) -> str:
    """``tfprec/a/b.py`` -> ``//tfprec:a/b``; ``tfprec/a/__init__.py`` ->
    ``//tfprec:a``; ``tfprec/__init__.py`` -> ``//tfprec:tfprec``; other
    packages: ``//pkg:stem``."""
    pkg = path.split("/", 1)[0]
    if pkg != "tfprec":
        return f"//{os.path.dirname(path)}:{os.path.basename(path)[:-3]}"
    rel = path[len("tfprec/"):-3]
    if rel == "__init__":
        return "//tfprec:tfprec"
    if rel.endswith("/__init__"):
        rel = rel[:-len("/__init__")]
    return f"//tfprec:{rel}"


def label_of_module(root: str, dotted: str) -> Optional[str]:
    """Target of the file that defines tfprec module ``dotted`` (None if no
    such file: an attribute imported from a package)."""
    parts = dotted.split(".")
    base = os.path.join(root, *parts)
    if os.path.isfile(base + ".py"):
        return label_of_file("/".join(parts) + ".py")
    if os.path.isfile(os.path.join(base, "__init__.py")):
        return label_of_file("/".join(parts) + "/__init__.py")
    return None


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
        if pkg.startswith("tfprec"):
            pkg = "tfprec"               # one BUILD file for the package tree
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
def imports_of(path: str, root: str = ROOT) -> tuple:
    """(tfprec modules as dotted names, other top-level names) a file imports.

    ``from tfprec.a import b`` gives ``tfprec.a.b`` when that is a module,
    else ``tfprec.a``; ``import tfprec`` gives ``tfprec``.
    """
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    mods, other = set(), set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] == "tfprec":
                    mods.add(a.name)
                else:
                    other.add(a.name.split(".")[0])
        elif isinstance(n, ast.ImportFrom):
            if n.level:                      # relative import inside tfprec
                raise AssertionError(f"{path}: use absolute tfprec imports")
            mod = n.module or ""
            if mod.split(".")[0] == "tfprec":
                for a in n.names:
                    sub = f"{mod}.{a.name}"
                    mods.add(sub if label_of_module(root, sub) else mod)
            elif mod:
                other.add(mod.split(".")[0])
    return mods, other


def dependency_problems(root: str = ROOT, builds: Optional[dict] = None) -> list:
    """Missing deps, dangling labels and cycles, as readable strings."""
    builds = load(root) if builds is None else builds
    by_label = {t.label: t for ts in builds.values() for t in ts}
    cov = coverage(root, builds)
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
            mods, other = imports_of(full, root)
            for m in sorted(mods):
                want = label_of_module(root, m)
                if want is None:
                    problems.append(f"{t.label}: {src} imports {m}, which is no file")
                    continue
                if want == label_of_file(src) or want in deps:
                    continue
                problems.append(f"{t.label}: {src} imports {m} but deps lack {want!r}")
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


def test_srcs_exist(builds):
    missing = []
    for ts in builds.values():
        for t in ts:
            for p in t.src_paths():
                if not os.path.isfile(os.path.join(ROOT, p)):
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
    assert "__main__.py" in t.srcs and ":application/cli" in t.deps


def test_library_per_module(builds):
    """One py_library per tfprec module, named after it."""
    libs = {t.label: t for t in builds["tfprec"] if t.kind == "py_library"}
    for p in py_files(ROOT, "tfprec"):
        if p == "tfprec/__main__.py":
            continue
        lab = label_of_file(p)
        assert lab in libs, f"no py_library {lab} for {p}"
        assert libs[lab].srcs == [p[len("tfprec/"):]]


def test_checks_catch_problems(tmp_path):
    """The checks fail for a file without a target, a missing dep, a
    dangling label and a cycle."""
    (tmp_path / "tfprec").mkdir()
    (tmp_path / "examples").mkdir()
    (tmp_path / "BUILD").write_text("")
    (tmp_path / "tfprec" / "__init__.py").write_text("")
    (tmp_path / "tfprec" / "a.py").write_text("from tfprec import b\n")
    (tmp_path / "tfprec" / "b.py").write_text("import tfprec.a\n")
    (tmp_path / "tfprec" / "sub").mkdir()
    (tmp_path / "tfprec" / "sub" / "__init__.py").write_text("")
    (tmp_path / "tfprec" / "sub" / "c.py").write_text("from tfprec.sub import d\n")
    (tmp_path / "tfprec" / "sub" / "d.py").write_text("x = 1\n")
    (tmp_path / "tfprec" / "new.py").write_text("x = 1\n")
    (tmp_path / "examples" / "run.py").write_text(
        "import tfprec\nif __name__ == '__main__':\n    pass\n")
    (tmp_path / "tfprec" / "BUILD").write_text(
        'py_library(name = "tfprec", srcs = ["__init__.py"])\n'
        'py_library(name = "a", srcs = ["a.py"], deps = [":b"])\n'
        'py_library(name = "b", srcs = ["b.py"], deps = [":a", ":gone"])\n'
        'py_library(name = "sub", srcs = ["sub/__init__.py"])\n'
        'py_library(name = "sub/c", srcs = ["sub/c.py"])\n'
        'py_library(name = "sub/d", srcs = ["sub/d.py"])\n')
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
    assert any("//tfprec:sub/c" in p and "//tfprec:sub/d" in p for p in deps)
    assert any("//examples:run" in p and "'//tfprec:tfprec'" in p for p in deps)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
