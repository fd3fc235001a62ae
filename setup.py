"""Build the compiled core.  Metadata lives in pyproject.toml; this file only
declares the extension module so that setuptools can cythonize it.

``QUORUMLOCK_NO_EXTENSIONS=1`` at build time skips the extension (the package
then runs on its pure-Python twin, the same names and behaviour, slower)."""

import os
import sys

from setuptools import setup

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

setup(ext_modules=ext_modules)
