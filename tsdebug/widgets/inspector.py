"""The inspector: the selected node, its schema and source, and its values.

Tensors show shape, dtype, device, statistics, NaN/Inf counts, a numpy
preview and a histogram; containers list their items (``x`` expands large
ones).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from rich.console import Group
from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static

from engine.sources import display_path
from engine.ir import Node
from engine.view import describe, input_params, symbolic_note, unmangle, user_source
from engine.run.timeline import StepRecord
from engine.run.values import Dropped, histogram, preview, short_text, summarize

SPARK = "▁▂▃▄▅▆▇█"
COLLAPSED_ITEMS = 8
EXPANDED_ITEMS = 256
#: The node's line wraps to at most this many lines at the top of the pane.
TITLE_LINES = 3


def sparkline(counts: list[int]) -> str:
    top = max(counts) or 1
    return "".join(SPARK[min(len(SPARK) - 1, int(c / top * (len(SPARK) - 1) + (0.999 if c else 0)))] for c in counts)


def stats_lines(indent: str, stats: str, style: str, width: int = 0) -> list[Text]:
    """The statistics under a tensor, broken between figures (and indented) where the pane is narrow."""
    if not width or len(indent) + len(stats) <= width:
        return [Text(indent + stats, style=style)]
    out, cur = [], ""
    for part in stats.split("  "):
        if cur and len(indent) + len(cur) + 2 + len(part) > width:
            out.append(Text(indent + cur, style=style))
            cur = part
        else:
            cur = f"{cur}  {part}" if cur else part
    if cur:
        out.append(Text(indent + cur, style=style))
    return out


def value_lines(name: str, value: Any, expanded: bool, indent: str = "  ", width: int = 0) -> list[Text]:
    """Lines describing one value: a header, then items or statistics (``width``: the pane's, 0 if unknown)."""
    lines: list[Text] = []
    head = Text(indent)
    head.append(f"{name} ", style="#87afd7")
    if isinstance(value, Dropped):
        summary = summarize(value.summary)
        head.append(summary.short(), style="#5fd787")
        head.append(f"  (summary only: {value.reason})", style="italic #8a8a8a")
        lines.append(head)
        if summary.tensor is not None and summary.tensor.stats_line():
            lines.extend(stats_lines(indent + "  ", summary.tensor.stats_line(), "#d0d0d0", width))
        return lines
    if isinstance(value, torch.Tensor):
        ts = summarize(value).tensor
        head.append(ts.short(), style="#5fd787")
        if ts.device != "cpu":
            head.append(f" on {ts.device}")
        if ts.requires_grad:
            head.append(" requires_grad", style="#8a8a8a")
        lines.append(head)
        stats = ts.stats_line()
        if stats:
            style = "bold red" if (ts.nan or ts.inf) else "#d0d0d0"
            lines.extend(stats_lines(indent + "  ", stats, style, width))
        return lines
    if isinstance(value, (list, tuple)) and len(value) <= COLLAPSED_ITEMS \
            and all(isinstance(x, (bool, int, float)) or x is None for x in value):
        head.append(short_text(value, 80))  # ``kernel_size = %4 [2, 2]``: one line
        lines.append(head)
        return lines
    if isinstance(value, (list, tuple, dict)):
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        kind = type(value).__name__
        head.append(f"{kind} of {len(items)}", style="#5fd787")
        lines.append(head)
        limit = EXPANDED_ITEMS if expanded else COLLAPSED_ITEMS
        for key, item in items[:limit]:
            label = f"[{key!r}]" if isinstance(value, dict) else f"[{key}]"
            if isinstance(item, (torch.Tensor, Dropped)):
                lines.extend(value_lines(label, item, expanded, indent + "  ", width))
            else:
                t = Text(indent + "  ", no_wrap=True)
                t.append(label + " ", style="#87afd7")
                t.append(short_text(item, 60))
                lines.append(t)
        if len(items) > limit:
            lines.append(Text(f"{indent}  … {len(items) - limit} more (x expands)", style="italic #8a8a8a"))
        return lines
    head.append(short_text(value, 80))
    lines.append(head)
    return lines


class Inspector(VerticalScroll, can_focus=True):
    """Details of one node and the values it read and wrote."""

    BINDINGS = [Binding("x", "toggle_expand", "expand values", show=False)]

    expanded: reactive[bool] = reactive(False)
    #: Step times vary run to run; snapshot tests turn them off.
    show_times = True
    #: Supplied by the app: the graph a node belongs to (for naming its arguments).
    graph_of: Any = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._text = Static("", markup=False, expand=True)
        self._shown: tuple = (None, None, None, "")
        self.plain = ""  # what the pane shows, as plain text

    def compose(self):
        yield self._text

    def show(self, node: Node | None, record: StepRecord | None, live: list | None = None,
             note: str = "", reference: Any = None) -> None:
        """``record``: the node's step (or None if not run); ``live``: current output values;
        ``reference``: the eager comparison of this node (an ``engine.check.diff.NodeDiff``)."""
        self._shown = (node, record, live, note)
        self._reference = reference
        self._redraw()

    def watch_expanded(self) -> None:
        self._redraw()

    def action_toggle_expand(self) -> None:
        self.expanded = not self.expanded

    def _redraw(self) -> None:
        node, record, live, note = self._shown
        if node is None:
            self.plain = "No node selected."
            self._text.update(Text(self.plain, style="italic"))
            return
        parts: list[Any] = []
        graph = self.graph_of(node) if self.graph_of is not None else None
        program = getattr(getattr(self.app, "session", None), "program", None)
        title = Text(no_wrap=False)
        try:
            said = describe(node, graph, program)
        except Exception:  # an unusual node: its IR label is still right
            said = node.label()
        room = max(self.scrollable_content_region.width - 4, 20) * TITLE_LINES if self.size.width else 0
        if room and len(said) > room:
            said = said[: room - 1] + "…"  # every argument is listed under inputs, by name
        title.append(said, style="bold")
        parts.append(title)
        parts.append(Text(f"{node.kind}   {unmangle(node.id)}", style="#8a8a8a"))
        path = (record.module_path if record is not None else "") or node.module_path
        if path:
            parts.append(Text(f"module  {path}", style="#af87d7"))
        loc = user_source(node, program)
        if loc is not None and loc.file:
            src = Text("source  ", style="")
            narrow = 0 < self.size.width < 60
            src.append(loc.short() if narrow else f"{display_path(loc.file)}:{loc.line}", style="#87afd7")
            src.append(f"  ({loc.origin})", style="#8a8a8a")
            parts.append(src)
        # schema, callee and attributes: below the values (the title already names the arguments)
        details: list[Text] = []
        if node.schema:
            details.append(Text(f"schema  {node.schema}", style="#8a8a8a"))
        if node.callee:
            details.append(Text(f"calls   {unmangle(node.callee)}", style="#d7af5f"))
        shown_attrs = {k: v for k, v in node.attrs.items() if k not in ("value",) or node.kind == "prim::Constant"}
        if node.kind in ("prim::CallMethod", "prim::GetAttr", "prim::SetAttr"):
            shown_attrs.pop("name", None)  # the title says it
        for k, v in shown_attrs.items():
            details.append(Text(f"attr    {k} = {short_text(v, 60)}", no_wrap=True))
        if note:
            parts.append(Text(note, style="bold red" if record is None or record.status != "next" else "#d7af5f"))
        if record is not None and record.status == "next":
            parts.append(Text(f"\nnext to run, in {' › '.join(record.path)}", style="#8a8a8a"))
        elif record is not None:
            ms = f"  {record.time_ns / 1e6:.3f} ms" if self.show_times else ""
            status = {"done": "", "entered": " (running inside)", "error": " (raised)"}.get(record.status, "")
            parts.append(Text(f"\nstep #{record.index}{ms}{status}  in {' › '.join(record.path)}",
                              style="#8a8a8a"))
            if record.error:
                parts.append(Text(record.error, style="bold red"))
        inputs = record.inputs if record is not None else None
        outputs = record.outputs if record is not None else None
        if outputs is None and live is not None:
            outputs = live
        try:
            params = input_params(node, graph, program)
        except Exception:  # names are a help; the values are what matter
            params = []
        parts.extend(self._value_section("inputs", node.inputs, inputs, "", params))
        parts.extend(self._value_section("outputs", node.outputs, outputs, "  (not run yet)"))
        symbolic = symbolic_note(node, program)
        if symbolic:
            parts.append(Text(f"  exported as {symbolic}", style="#8a8a8a"))
        ref = getattr(self, "_reference", None)
        if ref is not None:
            mt = ref.metrics
            verdict = "agrees" if mt.close else "DIFFERS"
            parts.append(Text(f"eager reference ({verdict})", style="bold underline" + ("" if mt.close else " red")))
            parts.append(Text(f"  {ref.eager.name} at {ref.eager.where}  (module {ref.eager.module_path or 'root'})",
                              style="#87afd7"))
            parts.append(Text(f"  max abs {mt.max_abs:.3g}  max rel {mt.max_rel:.3g}  mean abs {mt.mean_abs:.3g}  "
                              f"cosine {'-' if mt.cosine is None else f'{mt.cosine:.6f}'}  NaN mismatches {mt.nan_mismatch}"
                              + ("" if mt.shape_ok else "  SHAPES DIFFER"), style="#d0d0d0" if mt.close else "red"))
            if ref.eager.outputs:
                parts.extend(value_lines("eager", ref.eager.outputs[0], self.expanded))
        # the tensor shown in detail: the first output, else the first input with more than one element
        focus = _first_tensor(node.outputs, outputs, 0) or _first_tensor(node.inputs, inputs, 2)
        if focus is not None:
            name, t = focus
            parts.extend(self._tensor_detail(name, t))
        if details:
            parts.append(Text(""))
            parts.extend(details)
        self.plain = "\n".join(p.plain for p in parts if isinstance(p, Text))
        self._text.update(Group(*parts))

    def _value_section(self, title: str, defs: Any, values: list | None, unknown: str,
                       params: list[str] | None = None) -> list:
        """``title`` and one entry per value (by the op's parameter name, where it has one); names and types
        alone when nothing was recorded."""
        lines: list = [Text(title, style="bold underline")]
        for i, v in enumerate(defs):
            name = f"%{v.name}"
            if params and i < len(params) and params[i] and params[i] != name:
                name = f"{params[i]} = %{v.name}"
            if values is None:
                lines.append(Text(f"  {name}  : {unmangle(v.type)}{unknown}", style="#8a8a8a", no_wrap=True))
            else:
                lines.extend(value_lines(name, values[i] if i < len(values) else None, self.expanded,
                                         width=self.scrollable_content_region.width))
        return lines

    def _tensor_detail(self, name: str, t: torch.Tensor) -> list[Any]:
        """The histogram first (it is short, and seen without scrolling), then the preview, each row cut
        to the pane's width rather than wrapped."""
        out: list[Any] = []
        width = max(self.scrollable_content_region.width, 20) if self.size.width else 78
        hist = histogram(t, bins=max(min(width - 10, 48), 10))
        if hist is not None:
            out.extend(histogram_lines(name, *hist, width=width))
        out.append(Text(f"{name} preview", style="bold underline"))
        try:
            # numpy never breaks a row (a wrapped row reads as two); fewer corner items where narrow,
            # and what still does not fit is cut at the pane's edge
            for edge in (3, 2, 1):
                text = preview(t, edgeitems=edge, linewidth=100_000)
                if max((len(r) for r in text.splitlines()), default=0) <= width:
                    break
            for row in text.splitlines():
                out.append(Text(row if len(row) <= width else row[: width - 1] + "…", no_wrap=True))
        except Exception as exc:  # an exotic layout numpy cannot show
            out.append(Text(f"(no preview: {exc})", style="#8a8a8a"))
        if hist is None:
            out.append(Text("no finite values to draw a histogram of", style="#8a8a8a"))
        return out


def histogram_lines(name: str, counts: list[int], lo: float, hi: float, width: int = 80) -> list[Text]:
    """A sparkline of the finite values with its range and the tallest bin's count under it."""
    n = sum(counts)
    ranked = sorted(counts, reverse=True)
    # one bin far above the rest (the zeros after a ReLU) would flatten every other bar
    log = len(ranked) > 1 and ranked[1] > 0 and ranked[0] > 10 * ranked[1]
    head = Text(f"\n{name} histogram", style="bold underline")
    head.append(f"  {n} finite value{'s' if n != 1 else ''}, {len(counts)} bins" + (", log scale" if log else ""),
                style="#8a8a8a")
    drawn = [math.log1p(c) for c in counts] if log else counts
    bar = Text(sparkline(drawn), style="#5fafd7", no_wrap=True, overflow="ellipsis")
    peak = max(counts) if counts else 0
    at = counts.index(peak) if counts else 0
    step = (hi - lo) / len(counts) if counts else 0.0
    left, right = f"{lo:.4g}", f"{hi:.4g}"
    axis = Text(left.ljust(max(len(counts) - len(right), len(left) + 1)) + right, style="#8a8a8a", no_wrap=True,
                overflow="ellipsis")
    peak_line = Text(f"tallest bin {peak} at {lo + at * step:.4g}…{lo + (at + 1) * step:.4g}; "
                     f"empty bins {sum(1 for c in counts if c == 0)}", style="#8a8a8a", no_wrap=True,
                     overflow="ellipsis")
    return [head, bar, axis, peak_line]


def _first_tensor(defs: Any, values: list | None, min_numel: int) -> tuple[str, torch.Tensor] | None:
    for v, val in zip(defs, values or ()):
        if isinstance(val, torch.Tensor) and val.numel() >= min_numel:
            return f"%{v.name}", val
    return None
