"""Which names and tests of a function depend on the run, and which a trace keeps right.

``self.flag`` and configuration are the same on every run; arguments and
locals computed from tensors, shapes or lists are not.  Everything here reads
the ``ast`` of the user's function only.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from functools import lru_cache
from typing import Callable

from engine.check.lint.source import _called_name, _functions, _in, _literal_arguments, _parse, _span, _src

_SHAPE_TEXT = re.compile(r"\.(size|shape|dim|ndim|numel|nelement)\b|\blen\(")


_SCALAR_TEXT = re.compile(r"\.item\(\)|\.tolist\(\)|\b(int|float|bool)\(")


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
    static = _static_loop_names(fn)
    fixed_before = set(plain)
    grown: set[str] = set()
    while True:
        plain = set(fixed_before)
        changed = True
        while changed:
            changed = False
            for name, values in simple.items():
                if name not in plain and name not in grown and all(_fixed_value(v, plain, names) for v in values):
                    plain.add(name)
                    changed = True
        # ``keep = []`` then ``keep.append(b)`` in ``for b in boxes:``: a list whose length the run decides
        more = {n for n in _grown_at_run_time(fn, plain & set(simple), plain | static, names)} - grown
        if not more:
            return names - plain - static
        grown |= more


_LIST_MUTATORS = frozenset({"append", "extend", "insert", "pop", "remove", "clear"})


def _grown_at_run_time(fn: ast.FunctionDef, candidates: set[str], fixed: set[str], names: set[str]) -> set[str]:
    """The ``candidates`` (lists set from constants) that grow or shrink (``append``, ``pop`` …)
    under a ``while``, or a ``for``/``if``/comprehension whose iterable or test reads what is
    not ``fixed``: their length is the run's, not the same on every run."""
    out: set[str] = set()

    def visit(node: ast.AST, run_dependent: bool) -> None:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _LIST_MUTATORS \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in candidates and run_dependent:
            out.add(node.func.value.id)
        for field_name, child in ast.iter_fields(node):
            for c in (child if isinstance(child, list) else [child]):
                if not isinstance(c, ast.AST):
                    continue
                inner = run_dependent
                if isinstance(node, ast.While) and field_name in ("body", "orelse"):
                    inner = True
                elif isinstance(node, ast.For) and field_name in ("body", "orelse"):
                    inner = run_dependent or not _fixed_value(node.iter, fixed, names) \
                        and not _static_iterable(node.iter, fixed)
                elif isinstance(node, (ast.If, ast.IfExp)) and field_name in ("body", "orelse"):
                    inner = run_dependent or not _fixed_value(node.test, fixed, names)
                visit(c, inner)

    visit(fn, False)
    return out


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
