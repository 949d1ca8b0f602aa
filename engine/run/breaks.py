"""The breakpoint list the UI edits: one line of text per breakpoint, read against the program.

``add`` reads what the user typed in the breakpoints screen (``B``):

* ``aten::relu`` (or ``relu``): every node of that op kind; a kind the
  program does not have is refused, with the closest kinds it has
  (a traced conv is ``aten::_convolution``, not ``aten::conv2d``);
* ``model.py:12`` (a path, its ending, or ``:12`` for any file): every node
  whose source is that line, in every graph of the program;
* ``NODE_ID``: that node;
* ``... if EXPR``: the node or line breakpoint stops only where ``EXPR``
  (an expression of ``engine.run.evaluate``) is true; ``if EXPR`` alone
  puts the condition on the node given as ``selected``;
* ``nan``: stop after an output holds NaN or Inf.

The same text again removes what it set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import TsdebugError
from engine.ir import Graph, Node
from engine.run.evaluate import Condition, EvalError, value_names_in
from engine.run.machine import Breakpoints
from engine.sources import is_user_file
from engine.run.reach import nodes_at_line, op_kinds, program_graphs, resolve_kind


class BreakpointError(TsdebugError):
    """What was typed does not name a breakpoint this program can have."""


@dataclass(frozen=True)
class Entry:
    """One line of the breakpoint list: ``key`` removes it."""

    key: str
    text: str


class BreakpointBook:
    """The session's breakpoints, edited by text; the program's graphs and kinds are read once."""

    def __init__(self, breakpoints: Breakpoints, program: Any, method: str = "forward", inlined: bool = False):
        self.breakpoints = breakpoints
        self.program = program
        self.method = method
        self.inlined = inlined
        self._graphs: list[Graph] | None = None
        self._kinds: dict[str, int] | None = None
        self._graph_of: dict[str, Graph] = {}
        self._converted = 0

    @property
    def graphs(self) -> list[Graph]:
        # again when a run converted graphs the walk could not resolve (an interface's callee)
        converted = len(self.program.cached_graphs())
        if self._graphs is None or converted != self._converted:
            self._graphs = program_graphs(self.program, self.method, self.inlined)
            self._converted = len(self.program.cached_graphs())
            self._kinds = None
            self._graph_of = {}
        return self._graphs

    @property
    def kinds(self) -> dict[str, int]:
        graphs = self.graphs
        if self._kinds is None:
            self._kinds = op_kinds(graphs)
        return self._kinds

    def example_kind(self) -> str:
        """An op kind this program has, for the prompt's example: its commonest op that is not plumbing."""
        ops = [k for k in sorted(self.kinds, key=lambda k: -self.kinds[k]) if not k.startswith("prim::")]
        return ops[0] if ops else next(iter(self.kinds), "aten::add")

    def example_line(self, node: Node | None = None) -> str:
        """A source line of this program in the user's own files (``file.py:12``): the node's own,
        else the first node's that has one; any line at all when no node comes from a user file."""
        candidates = ([node] if node is not None else []) + [n for g in self.graphs for n in g.walk()]
        fallback = ""
        for n in candidates:
            loc = n.source if n.kind != "prim::Constant" else None
            if loc is None or not loc.file or not loc.line:
                continue
            text = f"{loc.file.replace(chr(92), '/').rsplit('/', 1)[-1]}:{loc.line}"
            if is_user_file(loc.file):
                return text
            fallback = fallback or text
        return fallback or "model.py:12"

    def graph_of(self, node_id: str) -> Graph | None:
        graphs = self.graphs
        if not self._graph_of:
            for g in graphs:
                for n in g.walk():
                    self._graph_of[n.id] = g
        return self._graph_of.get(node_id)

    def _condition(self, text: str, graph: Graph | None) -> Condition:
        cond = Condition(text, value_names_in(graph) if graph is not None else None)
        if graph is not None:
            names = value_names_in(graph)
            for name, _ in cond.expression.references:
                if name not in names:
                    raise BreakpointError(f"%{name}: {graph.short_name} has no value of that name")
        return cond

    def add(self, text: str, selected: Node | None = None) -> str:
        """Set (or, the same again, remove) the breakpoint ``text`` names; returns what was done, in one line."""
        text = text.strip()
        bp = self.breakpoints
        if not text:
            raise BreakpointError("type an op kind, FILE:LINE, a node id, 'if EXPR' or 'nan'")
        where, _, cond_text = text.partition(" if ")
        where = where.strip()
        if text.startswith("if ") or text == "if":
            where, cond_text = "", text[2:].strip()
        cond_text = cond_text.strip()
        try:
            if where.lower() in ("nan", "inf", "nan/inf"):
                if cond_text:
                    raise BreakpointError("the NaN/Inf breakpoint takes no condition")
                bp.nan_inf = not bp.nan_inf
                return f"break when an output holds NaN or Inf: {'on' if bp.nan_inf else 'off'}"
            if not where:
                if selected is None:
                    raise BreakpointError("select a node first: 'if EXPR' puts the condition on the selected node")
                if not cond_text:
                    bp.nodes[selected.id] = None
                    return f"breakpoint on {selected.kind} {selected.id}, unconditional"
                bp.nodes[selected.id] = self._condition(cond_text, self.graph_of(selected.id))
                return f"breakpoint on {selected.kind} {selected.id} if {cond_text}"
            if "::" in where or (self.graph_of(where) is None and ":" not in where and "/" not in where):
                if cond_text:
                    raise BreakpointError("a kind breakpoint takes no condition: put it on a node or a line")
                found, close = resolve_kind(where, self.kinds)
                if not found:
                    hint = f"; closest it has: {', '.join(close)}" if close else ""
                    raise BreakpointError(f"this program has no {where} node{hint}")
                on = not all(k in bp.kinds for k in found)
                for k in found:
                    if on:
                        bp.kinds.add(k)
                    else:
                        bp.kinds.discard(k)
                count = sum(self.kinds[k] for k in found)
                return f"break on every {', '.join(found)} ({count} nodes): {'on' if on else 'off'}"
            node_graph = self.graph_of(where)
            if node_graph is not None:
                node = node_graph.node(where)
                if where in bp.nodes and not cond_text:
                    bp.toggle_node(where)
                    return f"breakpoint removed from {node.kind} {where}"
                bp.nodes[where] = self._condition(cond_text, node_graph) if cond_text else None
                return f"breakpoint on {node.kind} {where}" + (f" if {cond_text}" if cond_text else "")
            if where in bp.lines and not cond_text:
                bp.remove_line(where)
                return f"breakpoints on {where} removed"
            if "/" in where and ":" not in where:
                raise BreakpointError(f"no node {where} in this program (the inspector shows a node's id)")
            nodes, error = nodes_at_line(self.graphs, where)
            if error:
                raise BreakpointError(error)
            if not nodes:
                raise BreakpointError(f"no node of this program comes from {where}"
                                      f" (a line with an op on it, e.g. {self.example_line(selected)})")
            # one condition per graph: value names are the graph's own
            conditions: dict[int, Condition] = {}
            for n in nodes:
                g = self.graph_of(n.id)
                if cond_text and id(g) not in conditions:
                    conditions[id(g)] = self._condition(cond_text, g)
            bp.set_line(where, [n.id for n in nodes])
            if cond_text:
                for n in nodes:
                    bp.nodes[n.id] = conditions[id(self.graph_of(n.id))]
            graphs = {id(self.graph_of(n.id)) for n in nodes}
            return (f"breakpoints on {where}: {len(nodes)} node(s) in {len(graphs)} graph(s)"
                    + (f" if {cond_text}" if cond_text else ""))
        except EvalError as exc:
            raise BreakpointError(exc.message) from None

    def entries(self) -> list[Entry]:
        """Every breakpoint, one line each, in the order: lines, nodes, kinds, NaN/Inf, code predicates."""
        bp = self.breakpoints
        out: list[Entry] = []
        in_lines = set()
        for where, ids in bp.lines.items():
            in_lines.update(ids)
            cond = next((bp.nodes.get(i) for i in ids if bp.nodes.get(i) is not None), None)
            out.append(Entry(f"line:{where}", f"line {where}: {len(ids)} node(s)" + (f" if {cond}" if cond else "")))
        for node_id, cond in bp.nodes.items():
            if node_id in in_lines:
                continue
            g = self.graph_of(node_id)
            kind = g.node(node_id).kind if g is not None else "node"
            out.append(Entry(f"node:{node_id}", f"{kind} {node_id}" + (f" if {cond}" if cond is not None else "")))
        for kind in sorted(bp.kinds):
            out.append(Entry(f"kind:{kind}", f"every {kind}"))
        if bp.nan_inf:
            out.append(Entry("nan", "an output holds NaN or Inf"))
        for k, _ in enumerate(bp.predicates):
            out.append(Entry(f"predicate:{k}", f"a predicate set from code (#{k})"))
        return out

    def remove(self, key: str) -> str:
        """Delete the breakpoint of an ``Entry``; returns what was done."""
        bp = self.breakpoints
        what, _, name = key.partition(":")
        if what == "line":
            bp.remove_line(name)
            return f"breakpoints on {name} removed"
        if what == "node":
            bp.nodes.pop(name, None)
            return f"breakpoint on {name} removed"
        if what == "kind":
            bp.kinds.discard(name)
            return f"break on every {name}: off"
        if what == "nan":
            bp.nan_inf = False
            return "break on NaN/Inf: off"
        if what == "predicate" and name.isdigit() and int(name) < len(bp.predicates):
            del bp.predicates[int(name)]
            return "predicate removed"
        return "nothing to remove"
