"""The optional C parts of tsdebug (everything else is in pyproject.toml).

engine.run._moments (engine/run/_moments.c): a tensor's statistics in one pass.
engine.run._stepper (engine/run/_stepper.c): the interpreter's whole-run loop for the common nodes.
Without a C compiler the build goes on without them and tsdebug runs the
Python code they follow (torch's reductions, the machine's own handlers).
"""

import sys

from setuptools import Extension, setup

FLAGS = [] if sys.platform == "win32" else ["-O3"]

setup(ext_modules=[
    Extension("engine.run._moments", ["engine/run/_moments.c"], extra_compile_args=FLAGS, optional=True),
    Extension("engine.run._stepper", ["engine/run/_stepper.c"], extra_compile_args=FLAGS, optional=True),
])
