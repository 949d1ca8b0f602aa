"""The C++ deployment check (``tsdebug cpp``): what a libtorch program needs to run an archive
(``scan``), the runner built once against the installed torch (``build``), the run in C++ compared
with Python's (``run``), and a minimal CMake application for the archive (``emit``)."""

from engine.check.cpp.build import CppUnavailable, cache_dir, runner, toolchain
from engine.check.cpp.run import CppReport, check, static_report
from engine.check.cpp.scan import Requirement, requirements

__all__ = ["CppReport", "CppUnavailable", "Requirement", "cache_dir", "check", "requirements", "runner",
           "static_report", "toolchain"]
