"""Build the compiled core.  Metadata lives in pyproject.toml; this file only
declares the extension module so that setuptools can cythonize it.

``QUORUMLOCK_NO_EXTENSIONS=1`` at build time skips the extension (the package
then runs on its pure-Python twin, the same names and behaviour, slower)."""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ext_modules = []
if not os.environ.get("QUORUMLOCK_NO_EXTENSIONS"):
    from Cython.Build import cythonize
    from setuptools import Extension

    extra_compile_args = []
    if sys.platform != "win32":
        extra_compile_args = ["-O2", "-fno-strict-aliasing"]
    ext_modules = cythonize(
        [
            Extension(
                "quorumlock._core",
                ["src/quorumlock/_core.pyx"],
                include_dirs=["csrc"],
                extra_compile_args=extra_compile_args,
            )
        ],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
        include_path=["src/quorumlock"],
    )


class build_py_with_shim(build_py):
    """Also ship csrc/ql_clockshim.c as quorumlock/chaos/ql_clockshim.c: the
    safety checker compiles it at run time, and a wheel has no csrc/."""

    def run(self):
        super().run()
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "ql_clockshim.c")
        if os.path.isfile(src) and not self.editable_mode:
            dst = os.path.join(self.build_lib, "quorumlock", "chaos", "ql_clockshim.c")
            self.mkpath(os.path.dirname(dst))
            self.copy_file(src, dst)


setup(ext_modules=ext_modules, cmdclass={"build_py": build_py_with_shim})
