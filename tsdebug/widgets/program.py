"""The program pane: the nodes of one graph in execution order.

A Line API widget: only the rows on screen are rendered, so a graph of tens
of thousands of nodes opens and scrolls at once.  ``If``/``Loop`` blocks are
nested and can be folded; each row shows what the node produced once run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from engine.ir import Graph, Node
from engine.view import describe, is_plumbing, outputs_text, user_source

BLOCK_NAMES = {"prim::If": ("then", "else"), "prim::Loop": ("body",)}


@dataclass(frozen=True)
class Row:
    """One line: a node, the header of a block inside an If/Loop, or of a module's run of nodes."""

    node: Node | None
    depth: int
    header: str | None = None
    owner: Node | None = None  # for block headers: the If/Loop they belong to
    group: str | None = None  # for module headers: the fold key of the group


@dataclass(frozen=True)
class RowState:
    """What the machine knows about a node, as the row shows it."""

    executed: int = 0
    output: str = ""
    breakpoint: bool = False
    current: bool = False
    error: bool = False
    path: str = ""
    diverged: bool = False  # differs from the eager reference (``e``)


def build_rows(graph: Graph, folded: set[str], show_plumbing: bool = False) -> list[Row]:
    """Rows in execution order.  In an inlined graph each run of nodes from one
    module gets a header (``▾ layer1.0.conv1``) that folds the run.  TorchScript's
    plumbing (``engine.view.is_plumbing``) has no row unless ``show_plumbing``."""
    rows: list[Row] = []

    def walk(nodes, depth):
        group_path = None
        group_key = None
        for node in nodes:
            if node.kind == "prim::Constant":
                continue  # constants run on the way; they are not stops
            if not show_plumbing and is_plumbing(node, graph):
                continue
            if graph.inlined and node.module_path != group_path:
                group_path = node.module_path
                group_key = f"mod:{node.id}"
                if group_path:
                    mark = "▸" if group_key in folded else "▾"
                    rows.append(Row(None, depth, header=f"{mark} {group_path}", group=group_key, owner=node))
                else:
                    group_key = None
            if group_key is not None and group_key in folded:
                continue
            rows.append(Row(node, depth + (1 if group_key else 0)))
            if node.blocks and node.id not in folded:
                names = BLOCK_NAMES.get(node.kind, ())
                for j, block in enumerate(node.blocks):
                    if not any(n.kind != "prim::Constant" and (show_plumbing or not is_plumbing(n, graph))
                               for n in block.nodes):
                        continue  # nothing to show: an empty else, a branch that only sets a break flag
                    name = names[j] if j < len(names) else f"block {j}"
                    d = depth + (1 if group_key else 0)
                    rows.append(Row(None, d + 1, header=f"{name}:", owner=node))
                    walk(block.nodes, d + 2)

    walk(graph.body.nodes, 0)
    return rows


class ProgramView(ScrollView, can_focus=True):
    """Nodes of a graph; the machine's next node is marked with ▶."""

    BINDINGS = [
        Binding("up,k", "move(-1)", "up", show=False),
        Binding("down,j", "move(1)", "down", show=False),
        Binding("pageup", "move(-20)", "page up", show=False),
        Binding("pagedown", "move(20)", "page down", show=False),
        Binding("home", "jump(0)", "first", show=False),
        Binding("end", "jump(-1)", "last", show=False),
        Binding("enter", "activate", "show value", show=False),
        Binding("f", "fold", "fold block", show=False),
        Binding("M", "toggle_paths", "module paths", show=False),
        Binding("F", "toggle_plumbing", "show TorchScript's plumbing", show=False),
    ]

    selected: reactive[int] = reactive(0)
    show_paths: reactive[bool] = reactive(True)
    #: attribute reads, lists of constants, break flags: folded unless P shows them
    show_plumbing: reactive[bool] = reactive(False)

    class NodeSelected(Message):
        """The cursor row moved to a node."""

        def __init__(self, node: Node | None, activated: bool = False) -> None:
            super().__init__()
            self.node = node
            self.activated = activated

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.graph: Graph | None = None
        self.rows: list[Row] = []
        self.folded: set[str] = set()
        self._row_of: dict[str, int] = {}
        self._described: dict[str, str] = {}  # node id -> its text (engine.view.describe), per graph
        # Supplied by the app: the machine's knowledge of a node.
        self.state_of: Callable[[Node], RowState] = lambda node: RowState()

    # ----------------------------------------------------------------- data

    def show_graph(self, graph: Graph | None, select: str | None = None) -> None:
        if graph is not self.graph or not self.rows:
            # rows are built once per graph (and per fold): O(nodes)
            self.graph = graph
            self.folded = set()
            self._described = {}
            self._rebuild()
        if select is not None:
            self.select_node(select)
        self.refresh()

    def _rebuild(self) -> None:
        self.rows = build_rows(self.graph, self.folded, self.show_plumbing) if self.graph is not None else []
        self._row_of = {r.node.id: i for i, r in enumerate(self.rows) if r.node is not None}
        self.virtual_size = Size(self.scrollable_content_region.width or 80, len(self.rows))
        self.selected = min(self.selected, max(len(self.rows) - 1, 0))

    def select_node(self, node_id: str) -> bool:
        i = self._row_of.get(node_id)
        if i is None and self.graph is not None:
            # inside a folded block: unfold its owners
            node = self.graph.find(node_id)
            if node is None:
                return False
            self.folded = {f for f in self.folded if not node_id.startswith(f + "/") and not f.startswith("mod:")}
            self._rebuild()
            i = self._row_of.get(node_id)
            if i is None:
                i = self._row_after(node)
            if i is None:
                return False
        self.selected = i
        self.scroll_to_selected()
        return True

    def _row_after(self, node: Node) -> int | None:
        """The row of the first shown node after ``node`` (a folded plumbing node has no row of its own)."""
        seen = False
        for n in self.graph.walk():
            if n is node:
                seen = True
            elif seen and n.id in self._row_of:
                return self._row_of[n.id]
        return None

    def describe(self, node: Node) -> str:
        text = self._described.get(node.id)
        if text is None:
            try:
                text = describe(node, self.graph, getattr(getattr(self.app, "session", None), "program", None))
            except Exception:  # an unusual node: its IR label is still right
                text = node.label()
            self._described[node.id] = text
        return text

    @property
    def selected_node(self) -> Node | None:
        if 0 <= self.selected < len(self.rows):
            row = self.rows[self.selected]
            return row.node or row.owner
        return None

    def scroll_to_selected(self) -> None:
        height = max(self.size.height, 1)
        top = int(self.scroll_y)
        if self.selected < top + 1 or self.selected >= top + height - 1:
            self.scroll_to(y=max(self.selected - height // 3, 0), animate=False)

    def refresh_rows(self) -> None:
        self.refresh()

    # -------------------------------------------------------------- actions

    def action_move(self, delta: int) -> None:
        if self.rows:
            self.selected = max(0, min(len(self.rows) - 1, self.selected + delta))
            self.scroll_to_selected()

    def action_jump(self, where: int) -> None:
        if self.rows:
            self.selected = where if where >= 0 else len(self.rows) - 1
            self.scroll_to_selected()

    def action_activate(self) -> None:
        self.post_message(self.NodeSelected(self.selected_node, activated=True))

    def _group_of(self, index: int) -> str | None:
        """The module group a row belongs to: the nearest module header above it at a lower depth."""
        row = self.rows[index]
        if row.group:
            return row.group
        for i in range(index - 1, -1, -1):
            r = self.rows[i]
            if r.group and r.depth < row.depth:
                return r.group
            if r.group is None and r.node is not None and r.depth < row.depth - 1:
                break
        return None

    def action_fold(self) -> None:
        if not self.rows:
            return
        group = self._group_of(self.selected) if self.graph is not None and self.graph.inlined else None
        row = self.rows[self.selected]
        if group is not None and (row.group or not (row.node and row.node.blocks)):
            # fold or unfold the module's run of nodes
            if group in self.folded:
                self.folded.discard(group)
            else:
                self.folded.add(group)
            self._rebuild()
            header = next((i for i, r in enumerate(self.rows) if r.group == group), 0)
            self.selected = header
            self.scroll_to_selected()
            self.refresh()
            return
        node = self.selected_node
        if node is None:
            return
        # fold the nearest If/Loop: the selected one or the one around it
        target = node if node.blocks else None
        if target is None and self.graph is not None:
            parts = node.id.split("/")
            for k in range(len(parts) - 2, 0, -1):
                if parts[k].startswith("b"):
                    target = self.graph.find("/".join(parts[:k]))
                    break
        if target is None:
            self.app.bell()
            return
        if target.id in self.folded:
            self.folded.discard(target.id)
        else:
            self.folded.add(target.id)
        self._rebuild()
        self.select_node(target.id)
        self.refresh()

    def action_toggle_paths(self) -> None:
        self.show_paths = not self.show_paths

    def action_toggle_plumbing(self) -> None:
        self.show_plumbing = not self.show_plumbing

    def watch_show_plumbing(self) -> None:
        node = self.selected_node
        self._rebuild()
        if node is not None:
            self.select_node(node.id)
        self.refresh()
        self.app.notify(f"TorchScript's plumbing (attribute reads, constant lists, break flags): "
                        f"{'shown, and n stops at it' if self.show_plumbing else 'folded'}", timeout=3)

    def watch_selected(self, old: int, new: int) -> None:
        self.refresh()
        self.post_message(self.NodeSelected(self.selected_node))

    def watch_show_paths(self) -> None:
        self.refresh()

    def on_resize(self) -> None:
        self.virtual_size = Size(self.scrollable_content_region.width, len(self.rows))

    def nearest_source(self, node: Node):
        """The source line of ``node``, or of the first node after it that has one
        (attribute reads and list plumbing carry none)."""
        program = getattr(getattr(self.app, "session", None), "program", None)
        src = user_source(node, program)
        if src is not None and src.file:
            return src
        start = self._row_of.get(node.id)
        if start is None:
            return None
        for row in self.rows[start + 1 : start + 40]:
            if row.node is not None and row.node.source is not None and row.node.source.file:
                return user_source(row.node, program)
        return None

    def on_click(self, event) -> None:
        y = int(self.scroll_y) + event.y
        if 0 <= y < len(self.rows):
            self.selected = y
            if event.chain >= 2:
                self.action_activate()

    # ------------------------------------------------------------ rendering

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.scrollable_content_region.width
        base = self.rich_style
        if index >= len(self.rows):
            return Strip.blank(width, base)
        text = self.render_row(self.rows[index], width, index == self.selected)
        segments = list(text.render(self.app.console))
        # the widget's own colours under the row's
        segments = list(Segment.apply_style(segments, base))
        return Strip(segments).crop_extend(scroll_x, scroll_x + width, base)

    def render_row(self, row: Row, width: int, selected: bool) -> Text:
        if row.node is None and row.group is not None:
            text = Text("   " + "  " * row.depth + (row.header or ""), style="bold #af87d7", no_wrap=True)
        elif row.node is None:
            text = Text("   " + "  " * row.depth + (row.header or ""), style="italic #8a8a8a", no_wrap=True)
        else:
            state = self.state_of(row.node)
            text = self._node_text(row, state, width)
        if selected:
            text.stylize(Style(reverse=True) if self.has_focus else Style(bgcolor="#3a3a3a"))
        return text

    def _node_text(self, row: Row, state: RowState, width: int) -> Text:
        node = row.node
        gutter = Text()
        gutter.append("●" if state.breakpoint else " ", style="bold red")
        if state.current:
            gutter.append("▶", style="bold yellow")
        elif state.diverged:
            gutter.append("≠", style="bold red")
        elif state.error:
            gutter.append("✗", style="bold red")
        elif state.executed:
            gutter.append("·", style="green")
        else:
            gutter.append(" ")
        gutter.append(" ")
        body = Text(no_wrap=True, overflow="ellipsis")
        body.append("  " * row.depth)
        text = self.describe(node)
        kind_style = "bold yellow" if state.current else ("bold" if node.blocks or node.callee else "")
        outs = outputs_text(node, self.graph)
        if outs and text.startswith(outs + " = "):
            body.append(outs, style="#87afd7")
            body.append(" = ")
            text = text[len(outs) + 3:]
        call, arrow, result = text.partition(" → ")
        head, paren, rest = call.partition("(")
        body.append(head, style=kind_style)
        if paren:
            body.append(paren + rest, style="#8a8a8a")
        if arrow:
            body.append(arrow, style="#8a8a8a")
            body.append(result, style="#87afd7")
        if state.executed > 1:
            body.append(f" ×{state.executed}", style="#8a8a8a")
        right = Text(no_wrap=True)
        out = state.output
        path = state.path or node.module_path
        show_path = self.show_paths and path and width >= 72
        if out:
            right.append(out[:28], style="#5fd787" if not state.error else "red")
        if show_path:
            right.append("  " + (path if len(path) <= 26 else "…" + path[-25:]), style="#af87d7")
        avail = width - gutter.cell_len - right.cell_len - 1
        if avail < 12:
            right = Text()
            avail = width - gutter.cell_len
        body.truncate(max(avail, 1), overflow="ellipsis", pad=True)
        line = Text(no_wrap=True)
        line.append_text(gutter)
        line.append_text(body)
        if right.cell_len:
            line.append(" ")
            line.append_text(right)
        return line
