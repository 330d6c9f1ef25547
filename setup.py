"""fcnn's build: the Python package, and its native part (oneDNN's convolutions through the XLA
FFI, native/) wherever this machine can build it.

Linux x86-64 with a C++ compiler builds the library with CMake (native/build.py); the wheel then
requires the jaxlib whose headers it was built against, exactly, and oneDNN's runtime wheel.
Anywhere else, or when the build fails, the package is pure Python and the build prints one
line saying why, which fcnn.info() repeats at run time. FCNN_BUILD_NATIVE=0 skips the native
part on purpose. The static metadata is in pyproject.toml; only the dependencies are computed
here, because the jaxlib pin depends on the build.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("fcnn_native_build", ROOT / "native" / "build.py")
native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(native)

DEPENDENCIES = [
    # tested on 0.10.2; a jax without the primitive API fcnn uses falls back to its custom_vjp
    # binding with a warning (docs/design.md, "Bindings")
    "jax>=0.4.30",
    "jaxlib>=0.4.30",
    "optax>=0.2",
    "chex>=0.1.86",
    "numpy>=1.24",
    "tqdm>=4.66",
    "matplotlib>=3.7",
    "pillow>=9",  # reading images (fcnn.data.preprocess); matplotlib depends on it too
    "flatbuffers>=24.3",  # jax.export serialisation (scripts/export.py)
    "safetensors>=0.4",  # trained weights without pickle (fcnn.weights), read with its numpy API
]
LINUX_X86 = 'sys_platform == "linux" and platform_machine == "x86_64"'

WHY_NOT = native.why_not_here()
if WHY_NOT:
    ext_modules = []
else:
    ext_modules = [Extension("fcnn._native.libfcnn_onednn", sources=[])]
    jaxlib = native.inputs()["jaxlib"]
    DEPENDENCIES += [
        # the XLA FFI structures are compiled in: fcnn refuses the library under another jaxlib
        f"jaxlib=={jaxlib}; {LINUX_X86}",
        f"onednn-cpu-gomp=={native.ONEDNN}; {LINUX_X86}",  # libdnnl.so.3, loaded by fcnn
    ]


def _say(line):
    print(f"fcnn: {line}", file=sys.stderr, flush=True)


def _native_dirs(command) -> list[Path]:
    """Where fcnn/_native/ is being built: the wheel's, and the source tree's. A checkout's
    `python -m pytest` imports fcnn from the checkout, not from site-packages, so a plain `pip
    install .` leaves the same library (or the same reason for none) there too; an editable
    install builds there alone."""
    tree = ROOT / "fcnn" / "_native"
    inplace = getattr(command, "editable_mode", False) or getattr(command, "inplace", False)
    return [tree] if inplace else [Path(command.build_lib) / "fcnn" / "_native", tree]


class BuildPy(build_py):
    def run(self):
        super().run()
        if WHY_NOT:
            _say(f"building without the native kernels: {WHY_NOT}.")
            for folder in _native_dirs(self):
                native.record_not_built(folder, WHY_NOT)


class BuildNative(build_ext):
    """The CMake build of native/; a failure leaves the pure-Python package."""

    def get_ext_filename(self, fullname):
        return str(Path(*fullname.split(".")[:-1], native.LIBRARY))

    def run(self):
        for ext in self.extensions:
            target = Path(self.get_ext_fullpath(ext.name))
            _say(native.build_or_record(target, Path(self.build_temp) / "native"))
            for folder in _native_dirs(self):
                if folder.resolve() != target.parent.resolve():
                    native.mirror(target.parent, folder)


setup(install_requires=DEPENDENCIES, ext_modules=ext_modules,
      cmdclass={"build_py": BuildPy, "build_ext": BuildNative})
