"""Build fcnn's optional native part: oneDNN's convolutions behind the XLA FFI.

    pip install ".[native]"          # oneDNN 3.2 (GNU OpenMP build) and its headers
    python native/build.py [--optional]

Configures and builds native/ with CMake (a C++17 compiler; Ninja if present) into
native/build/, and copies the library to fcnn/_native/libfcnn_onednn.so, where fcnn finds it:
`"onednn"` then joins the convolution algorithms (docs/design.md). With `--optional` a machine
without the tools or oneDNN skips the build, says why and exits 0 (what .ci/run does).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE.parent / "fcnn" / "_native" / "libfcnn_onednn.so"


def missing() -> str:
    """What the build lacks ("" if nothing)."""
    if sys.platform != "linux":
        return f"the native part is built on Linux only (this is {sys.platform})"
    for tool in ("cmake",):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler (c++, g++ or clang++) on PATH"
    if not (Path(sys.prefix) / "lib" / "cmake" / "dnnl").is_dir():
        return (f"oneDNN's headers are not installed in {sys.prefix}: pip install "
                f"'.[native]' (onednn-cpu-gomp and onednn-devel-cpu-gomp 2023.2.0)")
    try:
        import jax

        jax.ffi.include_dir()
    except (ImportError, AttributeError) as e:
        return f"this jax has no XLA FFI headers ({e})"
    return ""


def build() -> Path:
    out = HERE / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(HERE), "-B", str(out), *generator,
                    "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={sys.executable}"],
                   check=True)
    subprocess.run(["cmake", "--build", str(out)], check=True)
    TARGET.parent.mkdir(exist_ok=True)
    tmp = TARGET.with_suffix(".so.tmp")
    shutil.copy2(out / "libfcnn_onednn.so", tmp)
    tmp.replace(TARGET)  # a process that loaded the old library keeps its mapping
    return TARGET


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optional", action="store_true",
                   help="skip (exit 0) when the tools or oneDNN are missing")
    args = p.parse_args(argv)
    why = missing()
    if why:
        print(f"native/build.py: {'skipped' if args.optional else 'cannot build'}: {why}; "
              f"fcnn runs without its oneDNN kernels.", file=sys.stderr)
        return 0 if args.optional else 1
    path = build()
    print(f"native/build.py: built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
