"""The install: `pip install .` builds the native kernels where it can, and anywhere else gives
the pure-Python package with one line saying why; fcnn loads the kernels only under the jaxlib
and oneDNN they were built for, and `fcnn.info()` says what runs."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import fcnn
from fcnn.ops import onednn

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fcnn_native_build", ROOT / "native" / "build.py")
native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native)


def _can_build_here() -> bool:
    return (sys.platform == "linux" and platform.machine() == "x86_64"
            and any(shutil.which(c) for c in ("c++", "g++", "clang++"))
            and os.environ.get("FCNN_ONEDNN", "1") != "0")


@pytest.mark.skipif(not _can_build_here(), reason="not Linux x86-64 with a C++ compiler, or "
                    "FCNN_ONEDNN=0")
def test_the_install_runs_the_native_kernels_where_it_can_build_them():
    """On Linux x86-64 with a compiler, the README's install has built and loaded them: the
    suite's oneDNN tests run rather than skip."""
    assert onednn.AVAILABLE, onednn.WHY_NOT
    assert "onednn" in fcnn.ops.convolution.algorithms.ALGORITHMS
    info = fcnn.info()
    assert info.native and "built for jaxlib" in info.native_detail
    assert "native kernels: yes" in str(info)


def _build_wheel(tmp_path, **env):
    """`pip wheel` of this source tree (no build isolation: the test has no network), in a
    copy so the tree's own build/ and fcnn/_native/ are untouched."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "_native", "*.egg-info", ".*venv*", "__pycache__", ".hypothesis"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fcnn-*.whl")
    return wheel, out.stdout + out.stderr


@pytest.mark.parametrize("env, why", [
    ({"CXX": "/nonexistent/c++"}, "no C++ compiler: CXX=/nonexistent/c++ is not found"),
    ({"FCNN_BUILD_NATIVE": "0"}, "FCNN_BUILD_NATIVE=0 in the environment"),
])
def test_an_install_that_cannot_build_is_pure_python_and_says_why(tmp_path, env, why):
    wheel, log = _build_wheel(tmp_path, **env)
    lines = [t.strip() for t in log.splitlines() if "fcnn: building without" in t]
    assert lines == [f"fcnn: building without the native kernels: {why}."], log[-3000:]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith("/METADATA"))).decode()
        z.extractall(tmp_path / "site")
    assert not any(n.endswith(".so") for n in names), names
    assert "fcnn/_native/not-built.txt" in names
    requires = [t for t in metadata.splitlines() if t.startswith("Requires-Dist:")]
    assert "Requires-Dist: jaxlib>=0.4.30" in requires and not any(
        "==" in t and ("jaxlib" in t or "onednn" in t) for t in requires), requires
    # that package, imported: no kernels, the reason from the install, the algorithms fcnn's own
    code = textwrap.dedent("""
        import fcnn
        i = fcnn.info()
        print(i.native, i.native_detail)
        print("onednn" in fcnn.ops.convolution.algorithms.ALGORITHMS)
    """)
    env = {k: v for k, v in os.environ.items() if k != "FCNN_ONEDNN"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={**env, "PYTHONPATH": str(tmp_path / "site")},
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"False this install built none: {why}", "False"]


@pytest.mark.parametrize("system, machine", [("darwin", "arm64"), ("win32", "AMD64"),
                                              ("linux", "aarch64")])
def test_another_platform_is_not_built_for(monkeypatch, system, machine):
    monkeypatch.delenv("FCNN_BUILD_NATIVE", raising=False)
    monkeypatch.setattr(native.sys, "platform", system)
    monkeypatch.setattr(native.platform, "machine", lambda: machine)
    assert native.why_not_here() == (f"the native part is built on Linux x86-64 only (this is "
                                     f"{system} {machine.lower()})")


def test_a_failed_build_leaves_the_pure_package_and_its_reason(tmp_path, monkeypatch):
    """The compiler or CMake fails: the first error, on one line, is the reason recorded, and
    no library (a stale one included) is left."""
    log = textwrap.dedent("""\
        -- The CXX compiler identification is GNU 12.2.0
        CMake Error at CMakeLists.txt:14 (message):

          fcnn: configure with -DXLA_FFI_INCLUDE_DIR=<jaxlib>/include
        -- Configuring incomplete, errors occurred!
    """)
    monkeypatch.setattr(native, "inputs", lambda: {"include": "i", "jaxlib": "0.1",
                                                   "dnnl_dir": "d"})

    def fail(cmd, out):
        out.append(log)
        return False

    monkeypatch.setattr(native, "_run", fail)
    target = tmp_path / "pkg" / "fcnn" / "_native" / native.LIBRARY
    target.parent.mkdir(parents=True)
    target.write_bytes(b"stale")
    line = native.build_or_record(target, tmp_path / "work")
    why = ("the build failed: CMake Error at CMakeLists.txt:14 (message): fcnn: configure with "
           f"-DXLA_FFI_INCLUDE_DIR=<jaxlib>/include (log: {tmp_path / 'work'}/"
           f"fcnn-native-build.log)")
    assert line == f"building without the native kernels: {why}"
    assert not target.exists()
    assert (target.parent / native.NOT_BUILT).read_text() == why + "\n"
    assert "CMake Error" in (tmp_path / "work" / "fcnn-native-build.log").read_text()
    assert native._summary("a.cc:3:1: error: expected ';'\nninja: build stopped") == \
        "a.cc:3:1: error: expected ';'"


def test_build_script_skips_when_optional(tmp_path):
    """Run by hand on a machine without the tools, the build says why; `--optional` exits 0."""
    env = {**os.environ, "PATH": str(tmp_path)}  # no compiler, no cmake
    env.pop("CXX", None)
    env.pop("FCNN_BUILD_NATIVE", None)
    run = [sys.executable, str(ROOT / "native" / "build.py")]
    why = "no C++ compiler (c++, g++ or clang++) on PATH"
    skipped = subprocess.run([*run, "--optional"], env=env, capture_output=True, text=True)
    assert skipped.returncode == 0 and f"native/build.py: skipped: {why}" in skipped.stderr
    failed = subprocess.run(run, env=env, capture_output=True, text=True)
    assert failed.returncode == 1 and f"cannot build: {why}" in failed.stderr


def test_refusal_names_what_differs():
    built = {"jaxlib": "0.10.2", "onednn": [3, 2, 0]}
    assert onednn.refusal(built, "0.10.2", (3, 2, 1)) == ""
    assert onednn.refusal(built, "0.10.3", (3, 2, 0)) == (
        "libfcnn_onednn.so was built for jaxlib 0.10.2 and this is jaxlib 0.10.3: reinstall "
        "fcnn to rebuild it (pip install .)")
    assert onednn.refusal(built, "0.10.2", (3, 3, 0)).startswith(
        "libfcnn_onednn.so was built for oneDNN 3.2.0 and this process loaded oneDNN 3.3.0")


@pytest.mark.skipif(not onednn.LIBRARY.exists() or not onednn.BUILD,
                    reason="no native library loads here")
def test_a_library_built_for_another_jaxlib_is_refused_and_fcnn_falls_back():
    """The process's jaxlib is not the one the library was built against (as after `pip install
    -U jaxlib`): the handlers are not registered, one warning says why, and "auto" runs fcnn's
    own algorithms."""
    code = textwrap.dedent("""
        import importlib.metadata, warnings
        real = importlib.metadata.version
        importlib.metadata.version = lambda d: "0.0.1" if d == "jaxlib" else real(d)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import fcnn
        import jax.numpy as jnp
        print([str(w.message) for w in caught if "fcnn" in str(w.message)])
        print(fcnn.ops.onednn.AVAILABLE, "onednn" in fcnn.ops.convolution.algorithms.ALGORITHMS)
        print(float(fcnn.ops.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1))).sum()))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    warned, state, value = run.stdout.splitlines()
    assert json.loads(warned.replace("'", '"')) == [
        f"fcnn: the native kernels are not used: libfcnn_onednn.so was built for jaxlib "
        f"{onednn.BUILD['jaxlib']} and this is jaxlib 0.0.1: reinstall fcnn to rebuild it "
        f"(pip install .)"]
    assert state == "False False" and value == "36.0"


def test_info_reports_what_runs(monkeypatch):
    from fcnn import tuning
    from fcnn.ops import _binding

    info = fcnn.info()
    text = str(info)
    assert info.native == onednn.AVAILABLE and info.binding == _binding.binding()
    assert info.tuning_mode == tuning.mode() and info.tuning_cache == str(tuning.cache_dir())
    assert text.splitlines()[2] == (f"native kernels: {'yes' if info.native else 'no'}: "
                                    f"{info.native_detail}")
    with tuning.using("table"), _binding.using("custom_vjp"):
        other = str(fcnn.info())
    assert 'algorithms ("auto"): the built-in table' in other
    assert "binding: custom_vjp (custom_vjp: reverse mode only)" in other
    assert fcnn.info().line().startswith("fcnn ")
