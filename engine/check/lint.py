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
"""

from __future__ import annotations

import ast
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Callable

import torch

from engine.sources import is_torch_frame
from engine.errors import ModelError
from engine.ir import Graph, Node, parent_module_path

KINDS = ("frozen-branch", "unrolled-loop", "baked-shape", "baked-scalar", "baked-device", "python-state",
         "trace-warning")

SHAPE_CONSUMERS = frozenset({
    "aten::view", "aten::reshape", "aten::expand", "aten::zeros", "aten::ones", "aten::empty", "aten::full",
    "aten::arange", "aten::new_zeros", "aten::new_ones", "aten::new_empty", "aten::new_full", "aten::repeat",
    "aten::narrow", "aten::split", "aten::chunk", "aten::slice", "aten::select", "aten::randn", "aten::rand",
    "aten::zeros_like", "aten::unflatten", "aten::broadcast_to", "aten::tile",
})

_SHAPE_TEXT = re.compile(r"\.(size|shape|dim|ndim|numel|nelement)\b|\blen\(")
_SCALAR_TEXT = re.compile(r"\.item\(\)|\.tolist\(\)|\b(int|float|bool)\(")


#: How sure a finding is, least first.
CONFIDENCES = ("low", "medium", "high")


@dataclass
class Finding:
    kind: str
    file: str | None
    line: int | None
    text: str | None
    frozen: str  # what was frozen: the branch taken, the trip count, the constant
    evidence: str
    confidence: str  # one of CONFIDENCES
    nodes: list[str] = field(default_factory=list)
    module_path: str = ""
    method: str = "forward"
    counterexample: str | None = None  # input specs on which archive and Python disagree (--eager)
    first_divergence: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "?"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LintReport:
    findings: list[Finding] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)  # method -> traced/scripted/unknown
    notes: list[str] = field(default_factory=list)
    counterexample_file: str | None = None
    reproduce: str | None = None  # the tsdebug diff command that shows the disagreement
    conversions: list[dict] = field(default_factory=list)  # --eager: tensor-to-Python conversions seen

    def to_json(self) -> dict:
        return {
            "command": "lint",
            "methods": self.methods,
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
            "counterexample_file": self.counterexample_file,
            "reproduce": self.reproduce,
            "conversions": self.conversions,
        }


# ------------------------------------------------------------------ sources


@lru_cache(maxsize=256)
def _parse(path: str) -> tuple[ast.Module | None, list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return ast.parse(text), text.splitlines()
    except Exception:
        return None, []


def _functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _called_name(call: ast.Call) -> str | None:
    """The function a call names in this file: ``f(...)`` or ``self.f(...)``."""
    f = call.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self":
        return f.attr
    return f.id if isinstance(f, ast.Name) else None


@lru_cache(maxsize=256)
def _literal_arguments(path: str) -> dict[str, set[str]]:
    """Per private helper of the file (``_split_heads``), the parameters every call in the file
    passes as a literal (``self._split_heads(q, n, d, True)``): fixed at each call site.

    Private only: a public function may also be called from other files with other values.
    """
    tree, _ = _parse(path)
    if tree is None:
        return {}
    params: dict[str, list[str]] = {}
    for fn in _functions(tree):
        if fn.name.startswith("_") and not fn.name.startswith("__"):
            names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
            params[fn.name] = names[1:] if names[:1] == ["self"] else names
    literal: dict[str, set[str]] = {}
    seen: set[str] = set()
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        name = _called_name(call)
        if name not in params:
            continue
        passed = dict(zip(params[name], call.args))
        passed.update((k.arg, k.value) for k in call.keywords if k.arg)
        here = {p for p, v in passed.items() if isinstance(v, ast.Constant)}
        literal[name] = here if name not in seen else literal[name] & here
        seen.add(name)
    return literal


def _span(nodes: list[ast.stmt]) -> tuple[int, int] | None:
    if not nodes:
        return None
    return nodes[0].lineno, max(getattr(n, "end_lineno", n.lineno) for n in nodes)


def _in(span: tuple[int, int] | None, line: int) -> bool:
    return span is not None and span[0] <= line <= span[1]


def _src(expr: ast.AST, lines: list[str]) -> str:
    try:
        return ast.unparse(expr)
    except Exception:
        return ""


_NOT_DATA = frozenset({"self", "len", "int", "float", "bool", "isinstance", "None", "True", "False", "torch",
                       "range", "abs", "min", "max", "any", "all", "str", "hasattr", "getattr"})


def _depends_on_data(test_expr: ast.AST, test: str, local_names: set[str],
                     rank_names: frozenset | set = frozenset(), shape_names: frozenset | set = frozenset()
                     ) -> str | None:
    """Why an ``if``/``while`` test depends on what tracing cannot keep, or None.

    ``self.flag`` and ``self.sub is not None`` are configuration: the same on
    every run, tracing keeps them right.  A test that reads the function's
    arguments or locals (tensors, shapes, lists) is not.
    """
    if "is_tracing" in test:
        return None  # written for tracing: the trace takes the path its authors meant it to
    if "self.training" in test:
        return "python-state"
    if _only_type_checks(test_expr):
        return None  # ``x is None``, ``isinstance(x, Tensor)``: a trace fixes its arguments' types
    if _reads_only_rank(test_expr, local_names, rank_names):
        return "rank"
    names = {n.id for n in _data_parts(test_expr) if isinstance(n, ast.Name)} - _NOT_DATA
    data = names & local_names
    if not data:
        return None  # ``len(self.blocks) - 1``, a loop index over a module list: configuration
    if _SCALAR_TEXT.search(test):
        return "scalar"
    if _SHAPE_TEXT.search(test) or data <= shape_names:  # ``h, w = img.shape[-2:]`` then ``if h > 1:``
        return "shape"
    return "tensor data"


def _data_parts(expr: ast.AST):
    """The nodes of a test outside its type checks (``and x is not None`` reads no data)."""
    if _only_type_checks(expr):
        return
    yield expr
    for child in ast.iter_child_nodes(expr):
        yield from _data_parts(child)


def _only_checks(body: list[ast.stmt]) -> bool:
    """Statements that can only raise or do nothing (nested checks included): no ops either way."""
    for s in body:
        if isinstance(s, (ast.Raise, ast.Pass)) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)):
            continue
        if isinstance(s, ast.If) and _only_checks(s.body) and _only_checks(s.orelse):
            continue
        return False
    return True


def _deciding_guard(test: ast.AST, took_if: bool, lines: list[str], local: set[str],
                    ranks: frozenset | set) -> str | None:
    """The part of ``a and b`` (``a or b``) that is the same on every run, when the trace took
    the side that part decides alone (else for ``and``, if for ``or``): its source, or None."""
    if not isinstance(test, ast.BoolOp) or took_if != isinstance(test.op, ast.Or):
        return None
    fixed = [v for v in test.values if _depends_on_data(v, _src(v, lines), local, ranks) is None]
    if not fixed or len(fixed) == len(test.values):
        return None
    return ", ".join(_src(v, lines) for v in fixed)


def _unreached(fn: ast.FunctionDef, stmt: ast.AST, op_lines: set[int]) -> bool:
    """``stmt`` sits in a side of an enclosing ``if`` from which no op came."""
    for outer in ast.walk(fn):
        if not isinstance(outer, ast.If) or outer is stmt:
            continue
        for side in (outer.body, outer.orelse):
            span = _span(side)
            if span and _in(span, stmt.lineno) and not any(_in(span, line) for line in op_lines):
                return True
    return False


def _only_type_checks(expr: ast.AST) -> bool:
    """The test asks what kind of value it has, not what is in it."""
    if isinstance(expr, ast.BoolOp):
        return all(_only_type_checks(v) for v in expr.values)
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        return _only_type_checks(expr.operand)
    if isinstance(expr, ast.Compare):
        if all(isinstance(op, (ast.Is, ast.IsNot)) for op in expr.ops) and \
                all(isinstance(c, ast.Constant) and c.value is None for c in expr.comparators):
            return True
        # ``fmt == Format.NHWC``: an enum member, set by the caller (tensors are not compared with those)
        if all(_enum_member(c) for c in expr.comparators):
            return True
        # ``x.device.type == "cuda"``, ``x.dtype == torch.float16``: what kind of tensor, not its data
        return any(isinstance(n, ast.Attribute) and n.attr in ("device", "dtype", "is_cuda", "layout")
                   for n in ast.walk(expr.left))
    if isinstance(expr, ast.Call):
        f = expr.func
        if isinstance(f, ast.Name) and f.id in ("isinstance", "hasattr", "callable"):
            return True
        return isinstance(f, ast.Attribute) and f.attr in ("is_floating_point", "is_complex", "is_sparse",
                                                           "is_scripting")
    # ``input.is_quantized``, ``cache.is_compileable``: what kind of value, a flag it carries
    return isinstance(expr, ast.Attribute) and expr.attr.startswith(("is_", "has_"))


def _enum_member(expr: ast.AST) -> bool:
    """``Format.NHWC``, ``Mode.FAST``: a capitalized class's CONSTANT_CASE member."""
    return (isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id[:1].isupper()
            and expr.attr.isupper())


@lru_cache(maxsize=256)
def _fixed_length_helpers(path: str) -> frozenset[str]:
    """Private helpers of the file that return a list whose length is the same on every run:
    built from ``[]`` by appends made once per iteration of loops over what a trace keeps fixed
    (CANINE's ``_hash_bucket_tensors``: one tensor per prime of ``_PRIMES[:num_hashes]``)."""
    tree, _ = _parse(path)
    if tree is None:
        return frozenset()
    literal = _literal_arguments(path)
    out = set()
    for fn in _functions(tree):
        if not fn.name.startswith("_") or fn.name.startswith("__"):
            continue
        returns = [n.value for n in ast.walk(fn) if isinstance(n, ast.Return)]
        if not returns or not all(isinstance(r, ast.Name) for r in returns) or len({r.id for r in returns}) != 1:
            continue
        name = returns[0].id
        local = _local_names(fn, literal.get(fn.name, set()))
        if _grows_once_per_fixed_iteration(fn, name, local):
            out.add(fn.name)
    return frozenset(out)


def _grows_once_per_fixed_iteration(fn: ast.FunctionDef, name: str, local: set[str]) -> bool:
    """``name = []`` once, then only ``name.append(...)`` as a statement directly in the body of
    ``for`` loops whose iterables a trace keeps fixed (and nothing else touches ``name``)."""
    static = _static_loop_names(fn)
    made = appends = 0
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if len(node.targets) != 1 or not (isinstance(node.value, ast.List) and not node.value.elts):
                return False
            made += 1
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and isinstance(node.target, ast.Name) \
                and node.target.id == name:
            return False
        elif isinstance(node, ast.For):
            fixed = _static_iterable(node.iter, static) or not _names(node.iter) & local
            for stmt in node.body:
                call = stmt.value if isinstance(stmt, ast.Expr) else None
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) \
                        and isinstance(call.func.value, ast.Name) and call.func.value.id == name:
                    if call.func.attr != "append" or not fixed:
                        return False
                    appends += 1
    uses = [n for n in ast.walk(fn) if isinstance(n, ast.Name) and n.id == name]
    # the assignment, the appends, the return: no other use could change its length
    return made == 1 and appends >= 1 and len(uses) == made + appends + 1


def _fixed_length_iterable(expr: ast.AST, fn: ast.FunctionDef, helpers: frozenset[str]) -> bool:
    """``expr`` (or what ``enumerate``/``zip``/``reversed`` wrap) is a local set only from a call to
    one of ``helpers``: a list of the same length on every run."""
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) \
            and expr.func.id in ("enumerate", "zip", "reversed") and expr.args:
        return all(_fixed_length_iterable(a, fn, helpers) for a in expr.args)
    if isinstance(expr, ast.Call):
        values = [expr]
    elif isinstance(expr, ast.Name):
        assigns = [n for n in ast.walk(fn) if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == expr.id for t in n.targets)]
        if not assigns or any(len(n.targets) != 1 for n in assigns):
            return False
        values = [n.value for n in assigns]
    else:
        return False
    return all(isinstance(v, ast.Call) and _called_name(v) in helpers for v in values)


def _pairwise(target: ast.AST, value: ast.AST) -> bool:
    """``a, b = x, y``: as many names as values, no starred item."""
    return isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) \
        and len(target.elts) == len(value.elts) and all(isinstance(t, ast.Name) for t in target.elts) \
        and not any(isinstance(v, ast.Starred) for v in value.elts)


def _local_names(fn: ast.FunctionDef, literal_arguments: set[str] = frozenset()) -> set[str]:
    """Names whose values can change from run to run: arguments and locals, less the
    Python values a trace sees as fixed by its caller or its configuration: arguments
    annotated as plain numbers, strings or flags (``idx: int``), given such a default
    (``residual=True``) or passed as literals by every call (``literal_arguments``), and
    locals set only from those, from ``self``'s attributes, constants or type checks
    (``using_eager = self.config.impl == "eager"``)."""
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    stores = _stores(fn)
    names = ({a.arg for a in args} - {"self"}) | set(stores)
    plain = {a.arg for a in args if _plain_annotation(a.annotation)} | _flag_arguments(fn) | set(literal_arguments)
    assigned: dict[str, list[ast.AST]] = defaultdict(list)
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assigned[node.targets[0].id].append(node.value)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and _pairwise(node.targets[0], node.value):
            # ``patch_width, patch_height = self.patch_width, self.patch_height``: name by name
            for name, value in zip(node.targets[0].elts, node.value.elts):
                assigned[name.id].append(value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            assigned[node.target.id].append(node.value)
    # Hugging Face's ``output_attentions = output_attentions if output_attentions is not None
    # else self.config.output_attentions``: a None-default argument that falls back to the configuration
    for a in _none_default_arguments(fn):
        values = assigned.get(a.arg, [])
        # (T5's ``use_cache = False`` under gradient checkpointing: a constant is fixed too)
        if values and len(values) == stores[a.arg] and any(_config_fallback(v, a.arg) for v in values) \
                and all(_config_fallback(v, a.arg) or isinstance(v, ast.Constant) for v in values):
            plain.add(a.arg)
    # only ``name = value`` statements set them (no loop target, unpacking or ``+=``)
    simple = {n: values for n, values in assigned.items() if len(values) == stores[n] and n not in names & {
        a.arg for a in args}}
    changed = True
    while changed:
        changed = False
        for name, values in simple.items():
            if name not in plain and all(_fixed_value(v, plain, names) for v in values):
                plain.add(name)
                changed = True
    return names - plain - _static_loop_names(fn)


_STATIC_ITER = re.compile(r"self(\.[\w.]+)?(\.(children|modules|named_children|named_modules|values|items|keys)\(\))?"
                          r"|range\(\s*(\d+|self\.[\w.]+)\s*\)|enumerate\(self\.[\w.]+\)")


def _static_iterable(expr: ast.AST, static: set[str]) -> bool:
    """``expr`` yields the same items on every run: a module list (``self.blocks``), a fixed
    range, a name bound by such a loop (``for f in fuse_outer`` inside ``for fuse_outer in
    self.fuse_layers``), or enumerate/zip/reversed of those."""
    if _STATIC_ITER.fullmatch(ast.unparse(expr)):
        return True
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "range" and not expr.keywords:
        # ``range(0, self.config.num_blocks)``: numbers and configuration
        return all(_static_item(a, static | {"self"}) or isinstance(a, ast.Constant) for a in expr.args)
    while isinstance(expr, ast.Attribute):
        expr = expr.value
    if isinstance(expr, ast.Name):
        return expr.id in static
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) \
            and expr.func.id in ("enumerate", "zip", "reversed") and expr.args and not expr.keywords:
        return all(_static_iterable(a, static) for a in expr.args)
    return False


def _static_loop_names(fn: ast.FunctionDef) -> set[str]:
    """The targets of loops over static iterables (``for i, m in enumerate(self.blocks)``),
    nested ones included: the same values on every run."""
    # (target, where its values come from, is it a loop): ``for i, x in enumerate(zip(self.a, self.b))``,
    # then ``a, b = x``
    bindings = [(n.target, n.iter, True) for n in ast.walk(fn) if isinstance(n, ast.For)]
    bindings += [(n.targets[0], n.value, False) for n in ast.walk(fn)
                 if isinstance(n, ast.Assign) and len(n.targets) == 1]
    static: set[str] = set()
    changed = True
    while changed:
        changed = False
        for target, source, loop in bindings:
            if _static_iterable(source, static) if loop else _static_item(source, static):
                names = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
                if not names <= static:
                    static |= names
                    changed = True
    return static


def _names(expr: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}


def _static_item(expr: ast.AST, static: set[str]) -> bool:
    """``expr`` is one of those static things, or part of one (``x``, ``x[0]``, ``x.blocks``)."""
    while isinstance(expr, (ast.Attribute, ast.Subscript)):
        expr = expr.value
    return isinstance(expr, ast.Name) and expr.id in static


def _fixed_value(expr: ast.AST, plain: set[str], local: set[str]) -> bool:
    """``expr`` says only what a trace keeps fixed: type checks, is_tracing(), values made
    of constants, ``self``'s attributes, module-level names and other such names."""
    if _only_type_checks(expr) or "is_tracing" in ast.unparse(expr):
        return True
    if isinstance(expr, ast.BoolOp):
        return all(_fixed_value(v, plain, local) for v in expr.values)
    if isinstance(expr, ast.UnaryOp):
        return _fixed_value(expr.operand, plain, local)
    if isinstance(expr, ast.IfExp):
        return all(_fixed_value(v, plain, local) for v in (expr.test, expr.body, expr.orelse))
    return all(n.id in plain or n.id in _NOT_DATA or n.id not in local
               for n in ast.walk(expr) if isinstance(n, ast.Name))


def _defaults(fn: ast.FunctionDef) -> list[tuple[ast.arg, ast.AST]]:
    """The arguments that have a default, with it."""
    positional = fn.args.posonlyargs + fn.args.args
    pairs = list(zip(positional[len(positional) - len(fn.args.defaults):], fn.args.defaults))
    return pairs + [(a, d) for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None]


def _flag_arguments(fn: ast.FunctionDef) -> set[str]:
    """Arguments without annotation whose default is a bool, number or string (``residual=True``)."""
    return {a.arg for a, d in _defaults(fn) if a.annotation is None and isinstance(d, ast.Constant)
            and type(d.value) in (bool, int, float, str)}


def _none_default_arguments(fn: ast.FunctionDef) -> list[ast.arg]:
    return [a for a, d in _defaults(fn) if isinstance(d, ast.Constant) and d.value is None
            and (a.annotation is None or _plain_annotation(a.annotation))]


def _config_fallback(expr: ast.AST, name: str) -> bool:
    """``name if name is not None else self.config.x`` (or with ``or``): the argument or a configuration value."""
    if isinstance(expr, ast.IfExp) and _only_type_checks(expr.test):
        parts = [expr.body, expr.orelse]
    elif isinstance(expr, ast.BoolOp) and isinstance(expr.op, ast.Or):
        parts = list(expr.values)
    else:
        return False
    for part in parts:
        if isinstance(part, ast.Name) and part.id == name:
            continue
        if isinstance(part, ast.Constant):
            continue
        root = part
        while isinstance(root, ast.Attribute):
            root = root.value
        if not (isinstance(root, ast.Name) and root.id == "self"):
            return False
    return True


def _stores(fn: ast.FunctionDef) -> dict[str, int]:
    """How many times each name is bound in the function (assignments, loop targets, ``+=``)."""
    stores: dict[str, int] = defaultdict(int)
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            stores[node.id] += 1
    return stores


def _locals_set_only_from(fn: ast.FunctionDef, source: Callable[[ast.AST], bool]) -> set[str]:
    """Locals every assignment of which (``a = ...`` or ``a, b = ...``) has a value ``source`` accepts."""
    stores = _stores(fn)
    found: dict[str, int] = defaultdict(int)
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and source(node.value):
            target = node.targets[0]
            for name in (target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]):
                if isinstance(name, ast.Name):
                    found[name.id] += 1
    return {n for n, k in found.items() if k == stores[n]}


def _rank_locals(fn: ast.FunctionDef) -> set[str]:
    """Locals set only from a tensor's rank (``ndim = tensor.ndim``)."""
    return _locals_set_only_from(fn, _is_rank_read)


_SHAPE_CALLS = frozenset({"size", "dim", "numel"})


def _shape_locals(fn: ast.FunctionDef) -> set[str]:
    """Locals set only from tensors' shapes (``h, w = img.shape[-2:]``, ``n = x.size(0)``)."""
    return _locals_set_only_from(fn, _only_shape_reads)


def _only_shape_reads(expr: ast.AST) -> bool:
    """The expression reads tensors only through their shapes (``x.shape[-2:]``, ``x.size(0) // 2``)."""
    bases = set()
    for n in ast.walk(expr):
        if isinstance(n, ast.Attribute) and n.attr in ("shape", "ndim"):
            bases.add(id(n.value))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _SHAPE_CALLS:
            bases.add(id(n.func.value))
    if not bases:
        return False
    for n in ast.walk(expr):
        if isinstance(n, ast.Name) and id(n) not in bases and n.id not in _NOT_DATA:
            return False  # another value enters the computation
        if isinstance(n, ast.Call) and not (isinstance(n.func, ast.Attribute) and n.func.attr in _SHAPE_CALLS) \
                and not (isinstance(n.func, ast.Name) and n.func.id in ("len", "int")):
            return False
    return True


def _is_rank_read(n: ast.AST) -> bool:
    if isinstance(n, ast.Attribute) and n.attr == "ndim":
        return True
    if isinstance(n, ast.Call) and not n.args and isinstance(n.func, ast.Attribute) and n.func.attr == "dim":
        return True
    return (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "len" and len(n.args) == 1
            and isinstance(n.args[0], (ast.Attribute, ast.Call))
            and ast.unparse(n.args[0]).endswith((".shape", ".size()")))


def _reads_only_rank(expr: ast.AST, local_names: set[str], rank_names: frozenset | set = frozenset()) -> bool:
    """The test's data is the rank of tensors (``mask.dim() == 4``, ``x.ndim < 3``), beside type checks."""
    found = False

    def rank_read(n: ast.AST) -> bool:
        return _is_rank_read(n) or (isinstance(n, ast.Name) and n.id in rank_names)

    def visit(n: ast.AST) -> bool:
        nonlocal found
        if _only_type_checks(n):
            return True
        if rank_read(n):
            found = True
            return True
        if isinstance(n, ast.Name) and n.id in local_names:
            return False
        return all(visit(c) for c in ast.iter_child_nodes(n))

    return visit(expr) and found


_PLAIN_ANNOTATIONS = frozenset({"int", "float", "bool", "str"})


def _plain_annotation(annotation: ast.AST | None) -> bool:
    """``int``, ``bool``, ``Optional[bool]``: a Python value its caller fixes for the trace."""
    if isinstance(annotation, ast.Name):
        return annotation.id in _PLAIN_ANNOTATIONS
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Optional", "typing.Optional"):
        return _plain_annotation(annotation.slice)
    return False


# --------------------------------------------------------------- the events


@dataclass
class _Op:
    """One traced op, as seen from one user frame on its stack."""

    seq: int  # position in the graph
    node: Node
    line: int
    module_path: str
    # the frames between the op and this one ((file, line), op side first): ops of one
    # iteration that come from one call on ``line`` differ here, iterations do not
    inner: tuple = ()


def _model_frames(node: Node) -> list[tuple[str, int, str]]:
    """The op's stack inside the model: frames from the op out to the trace call, not beyond."""
    src = node.source
    if src is None or src.origin != "traced":
        return []
    frames = []
    for f in src.stack:
        if f[0].replace("\\", "/").endswith("torch/jit/_trace.py"):
            break  # the caller of torch.jit.trace is not the model
        frames.append(f)
    return frames


_PLUMBING_KINDS = frozenset({"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::TupleConstruct",
                             "prim::NumToTensor", "aten::Int", "prim::TupleUnpack", "prim::ListUnpack"})


def _collect(graph: Graph) -> dict[tuple[str, str, str], list[_Op]]:
    """(file, function, module path) -> ops produced on lines of that function, in order.

    Walking an op's stack outwards, every ``Module._call_impl`` frame is a
    module boundary: the frames beyond it run in the parent module.
    """
    events: dict[tuple[str, str, str], list[_Op]] = defaultdict(list)
    for seq, node in enumerate(graph.walk()):
        if node.kind in _PLUMBING_KINDS:
            continue
        path = node.module_path
        inner: tuple = ()
        for file, line, func in _model_frames(node):
            if is_torch_frame(file):
                if func == "_call_impl":
                    path = parent_module_path(path)
                continue
            events[(file, func, path)].append(_Op(seq, node, line, path, inner))
            inner = inner + ((file, line),)
    return events


# ---------------------------------------------------------------- detectors


def _branch_findings(fn: ast.FunctionDef, local: set[str], ranks: set[str], shapes: set[str], ops: list[_Op],
                     lines: list[str], file: str, path: str, method: str) -> list[Finding]:
    out = []
    op_lines = {o.line for o in ops}
    for stmt in ast.walk(fn):
        if not isinstance(stmt, (ast.If, ast.IfExp)):
            continue
        if _unreached(fn, stmt, op_lines):
            continue  # inside a branch the trace never entered: that outer `if` is the finding
        test = _src(stmt.test, lines)
        why = _depends_on_data(stmt.test, test, local, ranks, shapes)
        test_line = stmt.test.lineno
        test_ops = [o for o in ops if o.line == test_line and test_line != getattr(stmt.body, "lineno", -1)]
        if isinstance(stmt, ast.If):
            body, orelse = _span(stmt.body), _span(stmt.orelse)
        else:
            body, orelse = (stmt.body.lineno, stmt.body.lineno), (stmt.orelse.lineno, stmt.orelse.lineno)
        in_body = [o for o in ops if _in(body, o.line) and o.line != test_line]
        in_else = [o for o in ops if _in(orelse, o.line) and o.line != test_line]
        if why is None and not (test_ops and any(o.node.kind.startswith("aten::") for o in test_ops)):
            continue  # a configuration branch: tracing keeps it right
        if not test_ops and isinstance(stmt, ast.If) and _only_checks(stmt.body) and _only_checks(stmt.orelse):
            continue  # a check of Python values that did not fail: the graph lacks only the raise
        if in_body and in_else:
            continue  # both sides ran (a loop around it): nothing frozen
        end = getattr(stmt, "end_lineno", stmt.lineno)
        if not in_body and not in_else and not test_ops and not any(o.line > end for o in ops):
            continue  # nothing after it ran either: no sign the `if` was reached
        taken = "the if branch" if in_body else ("the else branch" if in_else else
                                                   "neither: the branch was skipped")
        kind = "python-state" if why == "python-state" else "frozen-branch"
        if why == "python-state":
            evidence = "the test reads self.training, a Python attribute: the trace keeps the mode it was made in"
            confidence = "high"
        elif test_ops:
            kinds = ", ".join(sorted({o.node.kind for o in test_ops}))
            evidence = f"the test computed tensors ({kinds}) and became a Python bool"
            confidence = "high"
        elif why == "rank":
            evidence = (f"the test reads the rank of a tensor ({test}): the trace keeps its example's ranks, "
                        "only a caller passing another rank would take the other side")
            confidence = "low"
        else:
            what = "tensor data" if why == "tensor data" else f"a {why}"
            evidence = f"the test reads {what} ({test})"
            confidence = "medium"
        if why != "python-state":
            evidence += ("; ops came from one side only" if (in_body or in_else)
                         else "; the code after it ran, the branch produced no ops")
        guard = _deciding_guard(stmt.test, bool(in_body), lines, local, ranks) if confidence == "medium" else None
        if guard:
            # ``if is_cross_attention and past is not None and is_updated:`` traced without a cache
            evidence += (f"; but {guard} is the same on every run and the trace took the side it decides "
                         "alone: the data may never have been read")
            confidence = "low"
        nodes = [o.node.id for o in (in_body or in_else or test_ops)][:20]
        out.append(Finding(kind, file, test_line, lines[test_line - 1].strip() if test_line <= len(lines) else None,
                           f"took {taken}", evidence, confidence, nodes, path, method))
    return out


def _loop_findings(fn: ast.FunctionDef, local: set[str], static: set[str], ops: list[_Op], lines: list[str],
                   file: str, path: str, method: str) -> list[Finding]:
    out = []
    for stmt in ast.walk(fn):
        if not isinstance(stmt, (ast.For, ast.While)):
            continue
        body = _span(stmt.body)
        in_body = [o for o in ops if _in(body, o.line)]
        if not in_body:
            continue
        if isinstance(stmt, ast.For):
            head = _src(stmt.iter, lines)
            if _static_iterable(stmt.iter, static) or not _names(stmt.iter) & local:
                continue  # a module list, a fixed count, a configuration list: the same every run
            if _fixed_length_iterable(stmt.iter, fn, _fixed_length_helpers(file)):
                continue  # a list a helper of this file builds one item per fixed iteration
            if _reads_only_rank(stmt.iter, local):
                # ``range(x.dim())``: the trace keeps its example's ranks
                why, confidence = f"the trip count comes from the rank of a tensor ({head})", "low"
            else:
                why = "the trip count comes from " + ("a shape" if _SHAPE_TEXT.search(head) else
                                                      "tensor data" if _SCALAR_TEXT.search(head) else
                                                      f"the Python value {head}")
                confidence = "high" if _SHAPE_TEXT.search(head) or _SCALAR_TEXT.search(head) else "medium"
        else:
            head = _src(stmt.test, lines)
            why = f"a while loop on {head}"
            confidence = "high"
        trips = _iterations(stmt, in_body)
        out.append(Finding("unrolled-loop", file, stmt.lineno,
                           lines[stmt.lineno - 1].strip() if stmt.lineno <= len(lines) else None,
                           f"unrolled {trips} time{'s' if trips != 1 else ''}",
                           f"{why}; the body's ops repeat {trips}× in the graph", confidence,
                           [o.node.id for o in in_body][:20], path, method))
    return out


def _iterations(loop: ast.For | ast.While, in_body: list[_Op]) -> int:
    """How many times the traced body ran.

    Within one iteration the body's ops move down its lines (a call or a
    comprehension keeps them on one line); each jump back up starts the next
    iteration, unless it stays inside a loop nested in the body. A body
    whose ops all sit on one line repeats its pattern of calls instead.
    """
    nested = [(n.lineno, getattr(n, "end_lineno", n.lineno)) for n in ast.walk(loop)
              if n is not loop and isinstance(n, (ast.For, ast.While, ast.AsyncFor))]
    # a statement over several lines runs its ops in any order of those lines: one line per statement
    statements = sorted(((n.lineno, getattr(n, "end_lineno", n.lineno)) for n in ast.walk(loop)
                         if n is not loop and isinstance(n, ast.stmt)), key=lambda sp: sp[1] - sp[0])

    def statement_line(line: int) -> int:
        return next((sp[0] for sp in statements if _in(sp, line)), line)

    lines = [statement_line(o.line) for o in in_body]
    trips = 1
    for prev, line in zip(lines, lines[1:]):
        if line < prev and not any(_in(span, line) and _in(span, prev) for span in nested):
            trips += 1
    if trips == 1 and len({o.line for o in in_body}) == 1:
        # the pattern of its computing ops; a line of shape reads alone (``x.shape[-2:]``: two
        # aten::size) is told apart from iterations by their constant arguments
        computing = [o for o in in_body if o.node.kind not in _SHAPE_READS]
        signature = ([(o.inner, o.node.kind) for o in computing] if computing else
                     [(o.inner, o.node.kind, _constant_inputs(o.node)) for o in in_body])
        n = len(signature)
        period = next(p for p in range(1, n + 1) if n % p == 0 and signature == signature[:p] * (n // p))
        trips = n // period
    return trips


_SHAPE_READS = frozenset({"aten::size", "aten::dim", "aten::len", "aten::numel", "prim::shape"})


def _constant_inputs(node: Node) -> tuple:
    """The op's constant arguments (``x.shape[-2]`` and ``x.shape[-1]`` are two ops, not two iterations)."""
    if node.handle is None:
        return ()
    out = []
    for v in node.handle.inputs():
        value = v.toIValue() if v.node().kind() == "prim::Constant" else None
        out.append(value if isinstance(value, (int, float, bool, str, type(None))) else type(value).__name__)
    return tuple(out)


def _scalar_findings(fn: ast.FunctionDef, local: set[str], ops: list[_Op], lines: list[str], file: str, path: str,
                     method: str, constants: list[Node]) -> list[Finding]:
    out = []
    ran = {o.line for o in ops}
    last = getattr(fn, "end_lineno", fn.lineno)
    # ``x.to(torch.int64) if torch.jit.is_tracing() else int(x)`` (Hugging Face's torch_int):
    # written for tracing, the trace takes the side its authors meant it to
    for_tracing = {id(n) for branch in ast.walk(fn) if isinstance(branch, (ast.If, ast.IfExp))
                   and "is_tracing" in ast.unparse(branch.test) for n in ast.walk(branch)}
    for stmt in ast.walk(fn):
        if not isinstance(stmt, ast.Call) or id(stmt) in for_tracing:
            continue
        name = stmt.func.attr if isinstance(stmt.func, ast.Attribute) else (
            stmt.func.id if isinstance(stmt.func, ast.Name) else "")
        if name not in ("item", "tolist", "int", "float", "bool", "len"):
            continue
        if name in ("int", "float", "bool", "len") and not stmt.args:
            continue
        # what is converted: ``float(-100.0)`` or ``int(self.n)`` hold no value of this run
        converted = stmt.args if name in ("int", "float", "bool", "len") else [stmt.func.value]
        if not any(isinstance(n, ast.Name) and n.id in local for a in converted for n in ast.walk(a)):
            continue
        line = stmt.lineno
        text = lines[line - 1].strip() if line <= len(lines) else ""
        # the frozen value: a constant on this or a later line of this function,
        # on the line itself or where the name it was assigned to is used
        target = re.match(r"\s*(\w+)\s*=", text)
        var = target.group(1) if target else None
        consts = []
        for n in constants:
            v = n.attrs.get("value")
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            elif not isinstance(v, (int, float)) or isinstance(v, bool) or v in (-1, 0, 1):
                continue
            src = n.source
            if src is None or src.file != file or not (line <= (src.line or 0) <= last):
                continue
            use = lines[src.line - 1] if src.line <= len(lines) else ""
            if src.line == line or (var and re.search(rf"\b{var}\b", use)):
                consts.append((n, v))
        if name == "len":
            arg = _src(stmt.args[0], lines)
            if not (line in ran or consts):
                continue
            value = f" = {consts[0][1]!r}" if consts else ""
            out.append(Finding("baked-shape", file, line, text, f"len({arg}){value} became a constant",
                               "len() of a tensor is a Python int to the tracer", "medium",
                               [c[0].id for c in consts][:5], path, method))
            continue
        if not consts and line not in ran:
            continue
        value = f" = {consts[0][1]!r}" if consts else ""
        out.append(Finding("baked-scalar", file, line, text, f"{_src(stmt, lines)}{value} became a constant",
                           "a tensor converted to a Python number is a constant in the trace"
                           + (f" (tensor constant at line {consts[0][0].source.line})" if consts else ""),
                           "high" if consts else "medium", [c[0].id for c in consts][:5], path, method))
    return out


def _device_findings(graph: Graph, method: str) -> list[Finding]:
    out = []
    for n in graph.walk():
        if n.kind != "prim::Constant":
            continue
        v = n.attrs.get("value")
        dev = None
        if isinstance(v, torch.device) and v.type == "cuda":
            dev = str(v)
        elif isinstance(v, torch.Tensor) and v.device.type == "cuda":
            dev = f"a tensor on {v.device}"
        if dev is None:
            continue
        src = n.source
        if src is None or not src.file:
            # the constant itself carries no line: its first consumer's line
            for m in graph.walk():
                if any(v in n.outputs for v in m.inputs) and m.source is not None and m.source.file:
                    src = m.source
                    break
        out.append(Finding("baked-device", src.file if src else None, src.line if src else None,
                           _line_text(src), f"device {dev}",
                           "device=x.device (or .to(x.device), .cuda()) was recorded as a constant: the archive "
                           "needs that GPU on every machine, map_location does not change it",
                           "high", [n.id], n.module_path, method))
    return out


def _line_text(src) -> str | None:
    if src is None or not src.file or not os.path.exists(src.file):
        return None
    _, lines = _parse(src.file)
    return lines[src.line - 1].strip() if src.line and src.line <= len(lines) else None


def _axis_arguments(node: Node) -> set[int]:
    """Positions of the op's ``dim`` arguments (``aten::slice(self, dim, start, end, step)``)."""
    try:
        args = torch._C.parse_schema(node.schema).arguments if node.schema else []
    except Exception:
        return set()
    return {i for i, a in enumerate(args) if a.name in ("dim", "dims")}


def _shape_findings(graph: Graph, method: str, example_dims: set[int]) -> list[Finding]:
    out = []
    seen = set()
    for n in graph.walk():
        if n.kind not in SHAPE_CONSUMERS:
            continue
        frames = _model_frames(n)
        if not frames or is_torch_frame(frames[0][0]):
            continue  # torch's own shape logic
        axes = _axis_arguments(n)
        for k, v in enumerate(n.inputs):
            if k in axes:
                continue  # which dimension, not how big: a rank, which a trace may keep
            p = graph.producer(v)
            vals = []
            if p is not None and p.kind == "prim::Constant" and isinstance(p.attrs.get("value"), int):
                vals = [p.attrs["value"]]
            elif p is not None and p.kind == "prim::ListConstruct":
                for i in p.inputs:
                    q = graph.producer(i)
                    if q is not None and q.kind == "prim::Constant" and isinstance(q.attrs.get("value"), int):
                        vals.append(q.attrs["value"])
            hits = [x for x in vals if x not in (-1, 0, 1) and x in example_dims]
            if not hits:
                continue
            src = n.source
            key = (src.file, src.line, tuple(hits))
            if key in seen:
                continue
            seen.add(key)
            text = _line_text(src)
            confidence = "high" if text and _SHAPE_TEXT.search(text) else "low"
            if confidence == "low" and text and all(re.search(rf"(?<![\w.]){x}(?![\w.])", text) for x in hits):
                continue  # the number is written on the line (``boxes[:, 3]``), not read from a shape
            out.append(Finding("baked-shape", src.file, src.line, text,
                               f"{', '.join(map(str, hits))} in {n.kind}",
                               f"a constant equal to a dimension of the example inputs feeds a shape argument "
                               f"of {n.kind}; another input size would not change it", confidence,
                               [n.id], n.module_path, method))
    return out


# ------------------------------------------------------------------ driver


def _weigh_training_mode(findings: list[Finding], module: Any) -> None:
    """A branch on ``self.training`` traced in eval mode froze what inference wants: low.
    Traced in training mode, dropout and batch statistics as in training are in the
    archive for good, which is rarely meant: high."""
    for f in findings:
        if f.kind != "python-state":
            continue
        mod = module
        try:
            for part in filter(None, f.module_path.split(".")):
                mod = getattr(mod, part)
            training = bool(mod.training)
        except Exception:
            training = bool(getattr(module, "training", False))  # a path lint could not follow: the model's mode
        if training:
            f.evidence = ("the test reads self.training and the model was traced in training mode: dropout and "
                          "batch statistics as in training are in the archive for good; trace after model.eval()")
            f.confidence = "high"
        else:
            f.evidence = ("the test reads self.training and the model was traced in eval mode: the archive "
                          "always runs as after model.eval() and cannot be trained")
            f.confidence = "low"


def lint_session(session: Any) -> LintReport:
    """Findings for every traced method of the session's archive (or of its exported program)."""
    if getattr(session, "format", "torchscript") == "exported":
        from engine.check.lint_exported import lint_exported

        return lint_exported(session)
    report = LintReport(methods=session.method_kinds())
    program = session.program
    for method, origin in report.methods.items():
        if origin == "scripted":
            report.notes.append(f"{method} is scripted: its control flow is in the archive, no branch was fixed by tracing")
            continue
        graph = program.root_graph(method, inlined=True)
        findings: list[Finding] = []
        dims: set[int] = set()
        for spec in session.archive.traced_inputs.get(method, []) or []:
            dims.update(getattr(spec, "shape", ()) or ())
        findings += _device_findings(graph, method)
        findings += _shape_findings(graph, method, dims)
        events = _collect(graph)
        constants = [n for n in graph.walk() if n.kind == "prim::Constant"]
        missing_files = set()
        # one analysis of a function serves all its module instances: (run-dependent names,
        # locals holding a rank, names bound by loops over static iterables)
        facts: dict[ast.AST, tuple[set[str], set[str], set[str]]] = {}
        for (file, func, path), ops in events.items():
            tree, lines = _parse(file) if os.path.exists(file) else (None, [])
            if tree is None:
                missing_files.add(file)
                findings += _stack_only_loops(file, func, path, ops, method)
                continue
            used = {o.line for o in ops}
            for fn in _functions(tree):
                if fn.name != func:
                    continue
                end = getattr(fn, "end_lineno", fn.lineno)
                if not any(fn.lineno <= l <= end for l in used):
                    continue
                if fn not in facts:
                    facts[fn] = (_local_names(fn, _literal_arguments(file).get(fn.name, set())), _rank_locals(fn),
                                 _shape_locals(fn), _static_loop_names(fn))
                local, ranks, shapes, static = facts[fn]
                findings += _branch_findings(fn, local, ranks, shapes, ops, lines, file, path, method)
                findings += _loop_findings(fn, local, static, ops, lines, file, path, method)
                findings += _scalar_findings(fn, local, ops, lines, file, path, method, constants)
        for f in sorted(missing_files):
            report.notes.append(f"{f} is not on disk: branches cannot be seen there, loops only from repeats")
        report.findings += _dedupe(findings)
    _weigh_training_mode(report.findings, session.archive.module)
    report.findings.sort(key=lambda f: (f.method, f.file or "", f.line or 0, f.module_path, f.kind))
    return report


def _stack_only_loops(file: str, func: str, path: str, ops: list[_Op], method: str) -> list[Finding]:
    """Without the source: a line whose ops are one pattern repeated is an unrolled loop body."""
    by_line: dict[int, list[_Op]] = defaultdict(list)
    for o in ops:
        by_line[o.line].append(o)
    out = []
    for line in sorted(by_line):
        seq = [o.node.kind for o in by_line[line]]
        k = seq.count(seq[0])
        if k < 2 or len(seq) % k or seq != seq[: len(seq) // k] * k:
            continue
        out.append(Finding("unrolled-loop", file, line, None, f"unrolled {k} times",
                           f"line {line} of {func} produced the same {len(seq) // k} op(s) {k}× "
                           "(the source file is not on disk: the loop's head is not known)", "low",
                           [o.node.id for o in by_line[line]][:20], path, method))
        break
    return out


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        key = (f.kind, f.file, f.line, f.module_path)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


# ----------------------------------------------------------- counterexamples


def _perturbations(session: Any) -> list[tuple[str, tuple]]:
    """Other inputs to try: sign flips, zeros, other sizes, other random draws."""
    from engine.session import clone_value

    base = session.inputs
    out: list[tuple[str, tuple]] = []

    def each(fn, label):
        try:
            out.append((label, tuple(fn(x) for x in clone_value(base))))
        except Exception:
            pass

    def map_tensors(f):
        def g(x):
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                return f(x)
            if isinstance(x, list):
                return [g(v) for v in x]
            if isinstance(x, tuple):
                return tuple(g(v) for v in x)
            return x
        return g

    each(map_tensors(lambda t: -t), "the inputs with their signs flipped")
    each(map_tensors(lambda t: t.abs() + 0.5), "positive inputs (|x| + 0.5)")
    each(map_tensors(lambda t: torch.zeros_like(t)), "zeros")
    each(map_tensors(lambda t: t * 10), "the inputs × 10")
    each(map_tensors(lambda t: torch.cat([t, t], 0) if t.dim() else t), "twice the batch (dim 0 doubled)")
    each(map_tensors(lambda t: t[: max(1, t.shape[0] - 1)] if t.dim() and t.shape[0] > 1 else t),
         "one fewer along dim 0")
    each(map_tensors(lambda t: torch.cat([t, t], -1) if t.dim() else t), "the last dim doubled")
    each(map_tensors(lambda t: t.unsqueeze(0)), "one more leading dim")
    each(map_tensors(lambda t: t[0] if t.dim() > 1 else t), "one dim fewer")
    for k in range(3):
        g = torch.Generator().manual_seed(1234 + k)
        each(map_tensors(lambda t, g=g: torch.randn(t.shape, generator=g, dtype=t.dtype)), f"random draw {k + 1}")
    base_lists = [x for x in base if isinstance(x, list)]
    if base_lists:
        each(lambda x: x[:-1] if isinstance(x, list) and len(x) > 1 else x, "a list one item shorter")
        each(lambda x: x + x[-1:] if isinstance(x, list) else x, "a list one item longer")
    return out


def counterexamples(session: Any, report: LintReport, eager_spec: str, eager_args: dict | None,
                    eager_weights: str | None, specs: list[str] | None, rtol: float, atol: float) -> None:
    """With the Python model: find inputs on which the archive and the Python disagree.

    Each perturbed input runs through the engine and the eager model (as
    ``tsdebug diff``); the first one that disagrees is attached to the
    findings, with the first divergent node.
    """
    if not report.findings:
        return
    if session.inputs is None:
        session.start(specs=specs)
    original = session.inputs
    found: tuple[str, Any] | None = None
    try:
        for label, args in _perturbations(session):
            try:
                session.inputs = args
                session.machine = None
                session.restart(args)
                result = session.diff(eager_spec, eager_args, eager_weights, rtol, atol)
            except ModelError as exc:
                # the archive fails where the Python may not: that is a disagreement too
                if _eager_runs(session, eager_spec, eager_args, eager_weights, args):
                    node = exc.node
                    found = (label, f"the archive raising at {node.kind} {node.id} while the Python ran"
                             if node is not None else "the archive raising while the Python ran")
                    break
                continue
            except Exception:
                continue  # this input does not fit the model (or the trace): try another
            if not result.report.outputs_close:
                first = result.report.first
                where = f"{first.record.node.kind} {first.record.node.id}" if first else "the outputs"
                found = (label, where)
                break
    finally:
        session.inputs = original
        session.restart(original)
    if found is None:
        report.notes.append("with --eager: no tried input made the archive and the Python disagree")
        return
    label, where = found
    shapes = ", ".join(_describe(x) for x in args)
    # saved, so that `tsdebug diff --inputs FILE` reproduces it
    import tempfile

    folder = os.path.join(tempfile.gettempdir(), "tsdebug")
    os.makedirs(folder, exist_ok=True)
    base = os.path.splitext(os.path.basename(session.path))[0]
    saved = os.path.join(folder, f"{base}-counterexample.pt")
    torch.save(tuple(args), saved)
    report.counterexample_file = saved
    report.reproduce = f"tsdebug diff {session.path} --eager {eager_spec} --inputs {saved}"
    for f in report.findings:
        f.counterexample = f"{label} ({shapes}), saved to {saved}; first divergence at {where}"
        f.first_divergence = where


def _eager_runs(session: Any, spec: str, kwargs: dict | None, weights: str | None, args: tuple) -> bool:
    from engine.check import eager as eager_mod
    from engine.session import clone_value

    try:
        model = eager_mod.build_eager(spec, kwargs)
        state = dict(session.archive.module.state_dict())
        if weights is None:
            eager_mod.load_weights(model, state, session.path)
        eager_mod.run_eager(model, clone_value(args), session.grad)
        return True
    except Exception:
        return False


def _describe(x: Any) -> str:
    from engine.run.values import short_text

    return short_text(x, 40)


def conversion_evidence(session: Any, report: LintReport, eager_spec: str, eager_args: dict | None,
                        eager_weights: str | None) -> None:
    """Rerun the Python, recording every tensor-to-Python conversion with its line.

    A finding on a line where the Python converts a tensor (``__bool__``,
    ``item``, ``__len__``, ``size``/``shape``…) is confirmed: its evidence
    says so and its confidence rises to high.
    """
    from engine.check import eager as eager_mod
    from engine.session import clone_value

    try:
        model = eager_mod.build_eager(eager_spec, eager_args)
        if eager_weights is None:
            eager_mod.load_weights(model, dict(session.archive.module.state_dict()), session.path)
        if session.inputs is None:
            session.start()
        seen = eager_mod.record_conversions(model, clone_value(session.inputs), session.grad)
    except Exception as exc:
        report.notes.append(f"recording the Python's conversions failed: {str(exc).splitlines()[0]}")
        return
    by_line: dict[tuple, list[str]] = defaultdict(list)
    for name, file, line in seen:
        if file and line and name not in by_line[(file, line)]:
            by_line[(file, line)].append(name)
    report.conversions = [{"conversion": n, "file": f, "line": ln} for (f, ln), names in by_line.items() for n in names]
    for f in report.findings:
        names = by_line.get((f.file, f.line))
        if names:
            f.evidence += f"; confirmed: the Python converts a tensor here ({', '.join(names)})"
            f.confidence = "high"


def trace_warnings(session: Any, report: LintReport, eager_spec: str, eager_args: dict | None,
                   eager_weights: str | None) -> None:
    """Retrace the Python model on the session's inputs and keep torch's TracerWarnings.

    Each warning names the line where a tensor became a Python value; lines
    not already reported become ``trace-warning`` findings.
    """
    import warnings

    from engine.check import eager as eager_mod
    from engine.session import clone_value

    try:
        model = eager_mod.build_eager(eager_spec, eager_args)
        if eager_weights is None:
            eager_mod.load_weights(model, dict(session.archive.module.state_dict()), session.path)
        model.eval()
        if session.inputs is None:
            session.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.jit.trace(model, clone_value(session.inputs), check_trace=False)
    except Exception as exc:
        report.notes.append(f"retracing the Python model failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return
    known = {(f.file, f.line) for f in report.findings}
    added = set()
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            continue
        key = (w.filename, w.lineno)
        if key in known or key in added or is_torch_frame(w.filename or ""):
            continue
        added.add(key)
        message = re.split(r"\.(?:\s|$)", str(w.message).strip(), maxsplit=1)[0]  # its first sentence
        _, lines = _parse(w.filename) if w.filename and os.path.exists(w.filename) else (None, [])
        text = lines[w.lineno - 1].strip() if lines and w.lineno <= len(lines) else None
        report.findings.append(Finding("trace-warning", w.filename, w.lineno, text, message,
                                       f"torch.jit.trace warned when retracing the Python: {str(w.message)[:200]}",
                                       "medium", [], "", session.method))
