"""Build fcnn's native part: oneDNN's convolutions behind the XLA FFI.

`pip install .` (and `pip install -e .`) runs this through setup.py wherever it can: Linux on
x86-64 with a C++17 compiler. Its build requirements bring CMake, Ninja, jaxlib (for the XLA FFI
headers) and onednn-devel-cpu-gomp (oneDNN 3.2's headers and CMake package); a machine where any
of it is missing, or where the build fails, gets the pure-Python fcnn and one line saying why
(fcnn.info() repeats it).

Run directly, it rebuilds the library in place for development, with what this environment
holds (pip install cmake ninja onednn-devel-cpu-gomp==2023.2.0 first):

    python native/build.py [--optional]

It configures and builds native/ into native/build/ and copies the library to
fcnn/_native/libfcnn_onednn.so. With `--optional` a machine without the tools skips the build,
says why and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARY = "libfcnn_onednn.so"
NOT_BUILT = "not-built.txt"  # beside where the library would be: why it is not
TARGET = HERE.parent / "fcnn" / "_native" / LIBRARY
ONEDNN = "2023.2.0"  # the onednn-cpu-gomp / onednn-devel-cpu-gomp wheels: oneDNN 3.2
SWITCH = "FCNN_BUILD_NATIVE"  # =0: build the pure-Python package only


class BuildFailed(RuntimeError):
    """The build ran and failed; str() is one line, the full log is in `.log`."""

    def __init__(self, why, log=None):
        super().__init__(why)
        self.log = log


def why_not_here() -> str:
    """Why this machine cannot build the native part ("" if it can, as far as can be told before
    trying): the platform, the switch, the tools and the build requirements."""
    if os.environ.get(SWITCH, "1") == "0":
        return f"{SWITCH}=0 in the environment"
    machine = platform.machine().lower()
    if sys.platform != "linux" or machine not in ("x86_64", "amd64"):
        return f"the native part is built on Linux x86-64 only (this is {sys.platform} {machine})"
    cxx = os.environ.get("CXX")
    if cxx:
        if shutil.which(shlex.split(cxx)[0]) is None:
            return f"no C++ compiler: CXX={cxx} is not found"
    elif not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler (c++, g++ or clang++) on PATH"
    if shutil.which("cmake") is None:
        return "no cmake on PATH"
    try:
        inputs()
    except BuildFailed as e:
        return str(e)
    return ""


def inputs() -> dict:
    """The build's inputs found in this environment: jaxlib's XLA FFI headers and version, and
    oneDNN's CMake package. Raises BuildFailed naming what is missing."""
    spec = importlib.util.find_spec("jaxlib")
    include = Path(spec.submodule_search_locations[0]) / "include" if spec else None
    if include is None or not (include / "xla" / "ffi" / "api" / "ffi.h").is_file():
        raise BuildFailed("jaxlib's XLA FFI headers are not installed (jaxlib/include/xla/ffi)")
    try:
        devel = importlib.metadata.distribution("onednn-devel-cpu-gomp")
    except importlib.metadata.PackageNotFoundError:
        raise BuildFailed(f"oneDNN's headers are not installed (pip install "
                          f"onednn-devel-cpu-gomp=={ONEDNN})") from None
    config = [f for f in devel.files or () if f.name == "dnnl-config.cmake"]
    if devel.version != ONEDNN or not config:
        raise BuildFailed(f"onednn-devel-cpu-gomp {devel.version} is installed; fcnn builds "
                          f"against {ONEDNN} (oneDNN 3.2, GNU OpenMP)")
    return {"include": include, "jaxlib": importlib.metadata.version("jaxlib"),
            "dnnl_dir": Path(devel.locate_file(config[0])).resolve().parent}


def _summary(log: str) -> str:
    """The first error in a compiler or CMake log, on one line."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "CMake Error" in line:
            detail = next((t.strip() for t in lines[i + 1:] if t.strip()), "")
            return f"{line.strip()} {detail}"[:300]
        if re.search(r"\berror\b", line, re.I):
            return line.strip()[:300]
    return (lines[-1].strip() if lines else "no output")[:300]


def _run(cmd, log):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.append(f"$ {shlex.join(cmd)}\n{r.stdout}")
    return r.returncode == 0


def build(target: Path = TARGET, work: Path = HERE / "build") -> str:
    """Configure and build into `work`, then put the library at `target` (atomically: a process
    that loaded the old one keeps its mapping). Returns one line saying what was built; raises
    BuildFailed (one line, the log written beside the build)."""
    start = time.perf_counter()
    found = inputs()
    log: list[str] = []
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(HERE), "-B", str(work), *generator,
                 "-DCMAKE_BUILD_TYPE=Release", f"-DXLA_FFI_INCLUDE_DIR={found['include']}",
                 f"-DFCNN_JAXLIB_VERSION={found['jaxlib']}", f"-Ddnnl_DIR={found['dnnl_dir']}"]
    ok = _run(configure, log)
    if not ok and (work / "CMakeCache.txt").exists():  # a cache from another toolchain
        shutil.rmtree(work)
        ok = _run(configure, log)
    ok = ok and _run(["cmake", "--build", str(work), "--parallel"], log)
    if not ok:
        work.mkdir(parents=True, exist_ok=True)
        path = work / "fcnn-native-build.log"
        path.write_text("\n".join(log))
        raise BuildFailed(_summary(log[-1]), path)
    _place(work / LIBRARY, target)
    return (f"built {target} against jaxlib {found['jaxlib']} and oneDNN 3.2 in "
            f"{time.perf_counter() - start:.0f} s")


def build_or_record(target: Path, work: Path) -> str:
    """`pip install`'s step: build, or on failure leave the pure-Python package with the reason
    recorded. Returns the one line to print."""
    try:
        return build(target, work)
    except BuildFailed as e:
        why = f"the build failed: {e} (log: {e.log})"
        record_not_built(target.parent, why)
        return f"building without the native kernels: {why}"


def record_not_built(folder: Path, why: str) -> None:
    """Leave the reason where fcnn looks for the library (fcnn.info() reports it), and no stale
    library beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LIBRARY).unlink(missing_ok=True)
    (folder / NOT_BUILT).write_text(why + "\n")


def _place(library: Path, target: Path) -> None:
    """Copy `library` to `target` atomically (a process that loaded the old one keeps its
    mapping), and drop any stale reason for there being none beside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copy2(library, tmp)
    tmp.replace(target)
    (target.parent / NOT_BUILT).unlink(missing_ok=True)


def mirror(source: Path, folder: Path) -> None:
    """Make `folder` hold what `source` (an fcnn/_native/) holds: the library, or the reason
    there is none."""
    if (source / LIBRARY).exists():
        _place(source / LIBRARY, folder / LIBRARY)
    else:
        record_not_built(folder, (source / NOT_BUILT).read_text().strip())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optional", action="store_true",
                   help="skip (exit 0) when the tools or oneDNN are missing")
    args = p.parse_args(argv)
    why = why_not_here()
    if why:
        print(f"native/build.py: {'skipped' if args.optional else 'cannot build'}: {why}; "
              f"fcnn runs without its native kernels.", file=sys.stderr)
        return 0 if args.optional else 1
    try:
        print(f"native/build.py: {build()}")
    except BuildFailed as e:
        print(f"native/build.py: the build failed: {e} (log: {e.log})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
