"""The optional C part of tsdebug: engine._moments (see engine/_moments.c).

Everything else is in pyproject.toml.  Without a C compiler the build goes on
without it and tsdebug computes statistics with torch's reductions instead.
"""

import sys

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "engine._moments",
    ["engine/_moments.c"],
    extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
    optional=True,
)])
