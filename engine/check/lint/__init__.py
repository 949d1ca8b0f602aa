"""Findings: what ``torch.jit.trace`` froze in a saved archive.

Tracing records one path through the Python and keeps, for every op, the
Python stack that produced it.  Put that beside the source (parsed with
``ast`` when the file is on disk) and the frozen constructs show:

* an ``if`` on tensor data, on a shape or on ``self.training`` with ops from
  one side only (``frozen-branch``, ``python-state``);
* a loop whose body produced ops N times and whose trip count comes from
  data or shapes (``unrolled-loop``);
* ``.item()``/``int()``/``float()`` of a tensor, whose value became a
  constant (``baked-scalar``);
* constants equal to a dimension of the example inputs feeding shape
  arguments, ``len()`` of a tensor (``baked-shape``);
* a ``cuda`` device constant (``baked-device``).

Scripted code keeps its control flow and is not checked.  Everything is per
module instance: a submodule used twice is two instances.

The package: ``report`` (Finding, LintReport), ``source`` (the user's files
parsed), ``dependence`` (which names and tests depend on the run),
``events`` (traced ops by function and module instance), ``detectors``,
``driver`` (``lint_session``) and ``eager_checks`` (``--eager``).
"""

from engine.check.lint.detectors import SHAPE_CONSUMERS
from engine.check.lint.driver import lint_session
from engine.check.lint.eager_checks import conversion_evidence, counterexamples, trace_warnings
from engine.check.lint.report import CONFIDENCES, KINDS, Finding, LintReport

__all__ = ["CONFIDENCES", "KINDS", "SHAPE_CONSUMERS", "Finding", "LintReport", "conversion_evidence",
           "counterexamples", "lint_session", "trace_warnings"]
