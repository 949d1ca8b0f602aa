"""tsdebug's own layered layout, in character cells: the terminal view, and SVG without Graphviz.

Each cluster is laid out on its own, inside out, as a small layered drawing
of its items (boxes and the clusters directly inside it):

- items get ranks by the longest path of the edges between them (program
  order is a topological order, so one pass), inputs at the top, the output
  at the bottom; an item nothing feeds sits just above its first consumer;
- items of a rank are ordered by the barycentre of what feeds them, and
  placed under the ports they are fed from;
- between two ranks a channel holds the horizontal part of each edge, one
  track per overlapping segment; an edge that skips ranks runs down a lane
  to the right of the ranks it passes; an edge into or out of a cluster
  crosses its border at a port (entry ports to the right of the title).

So boxes never overlap, every box is inside its clusters' frames, no edge
runs through a box or a title, and what is laid out once is only coloured
afterwards: shapes on edges and node states are drawn into free cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tsdebug.render.scene import SBox, SCluster, Scene

TOP, BOTTOM, BORDER = "^top", "^bottom", "^border"
GAP = 2  # columns between items of a rank


@dataclass
class GBox:
    id: str
    x: int
    y: int
    w: int
    h: int
    lines: list[str]
    kind: str
    category: str = ""


@dataclass
class GFrame:
    id: str
    label: str
    kind: str
    x: int
    y: int
    w: int
    h: int


@dataclass
class GLabel:
    """Where an edge's shape may be written: at (x, y), to the right, as far as the row is free."""

    x: int
    y: int
    tail: str
    value: int


@dataclass
class GridLayout:
    width: int
    height: int
    compact: bool
    boxes: dict[str, GBox] = field(default_factory=dict)
    frames: list[GFrame] = field(default_factory=list)
    # edge segments: (x0, y0, x1, y1, control), horizontal or vertical, in cells
    segments: list[tuple[int, int, int, int, bool]] = field(default_factory=list)
    arrows: list[tuple[int, int]] = field(default_factory=list)
    labels: list[GLabel] = field(default_factory=list)


@dataclass
class _Net:
    key: tuple
    src: str  # item id or TOP
    targets: set = field(default_factory=set)  # item ids, BOTTOM, BORDER
    control: bool = False
    label_value: int | None = None  # the value to label it with, when its tail is a box of this cluster


@dataclass
class _Part:
    w: int
    h: int
    entry: dict = field(default_factory=dict)  # net key -> column of its port on the top border
    exit: dict = field(default_factory=dict)  # net key -> column on the bottom border
    boxes: list[GBox] = field(default_factory=list)
    frames: list[GFrame] = field(default_factory=list)
    segments: list[tuple[int, int, int, int, bool]] = field(default_factory=list)
    arrows: list[tuple[int, int]] = field(default_factory=list)
    labels: list[GLabel] = field(default_factory=list)


def box_size(box: SBox, compact: bool) -> tuple[int, int]:
    if compact:
        return len(box.lines[0]) + 2, 1
    return max(len(s) for s in box.lines) + 4, len(box.lines) + 2


class GridBuilder:
    def __init__(self, scene: Scene, compact: bool = False, max_label: int = 40):
        self.scene = scene
        self.compact = compact
        self.max_label = max_label
        self.parent: dict[str, str] = {}
        self._parents(scene.root)
        # edges that concern each cluster: a tail or head inside it, or the cluster as head
        self.touching: dict[str, list] = {}
        for e in scene.edges:
            seen: set[str] = set()
            for end in (e.tail, e.head):
                c = end if end in scene.clusters else self.parent.get(end)
                while c is not None:
                    if c not in seen:
                        seen.add(c)
                        self.touching.setdefault(c, []).append(e)
                    c = self.parent.get(c)

    def _parents(self, c: SCluster) -> None:
        for it in c.items:
            self.parent[it.id] = c.id
            if isinstance(it, SCluster):
                self._parents(it)

    def _label(self, box: SBox) -> list[str]:
        return [s if len(s) <= self.max_label else s[: self.max_label - 1] + "…" for s in box.lines]

    def child_of(self, cid: str, item: str) -> str | None:
        cur = item
        while cur is not None:
            p = self.parent.get(cur)
            if p == cid:
                return cur
            cur = p
        return None

    # ------------------------------------------------------------------ one cluster

    def part(self, c: SCluster) -> _Part:
        compact = self.compact
        is_root = c.kind == "root"
        left = 0 if is_root else 2
        ids = [it.id for it in c.items]
        index = {i: k for k, i in enumerate(ids)}
        boxes = {it.id: it for it in c.items if isinstance(it, SBox)}
        parts: dict[str, _Part] = {}
        size: dict[str, tuple[int, int]] = {}
        lines: dict[str, list[str]] = {}
        for it in c.items:
            if isinstance(it, SCluster):
                p = self.part(it)
                parts[it.id] = p
                size[it.id] = (p.w, p.h)
            else:
                lines[it.id] = self._label(it)
                size[it.id] = (len(lines[it.id][0]) + 2, 1) if compact else \
                    (max(len(s) for s in lines[it.id]) + 4, len(lines[it.id]) + 2)

        # ---- the nets of this cluster
        nets: dict[tuple, _Net] = {}
        for e in self.touching.get(c.id, ()):
            key = (e.tail, ("ctl", e.head) if e.control else e.value)
            ti = self.child_of(c.id, e.tail)
            hi = BORDER if e.head == c.id else self.child_of(c.id, e.head)
            if ti is None and hi is None or (ti is not None and ti == hi):
                continue
            src = ti if ti is not None else TOP
            dst = hi if hi is not None else BOTTOM
            if src == TOP and dst in (BOTTOM, BORDER) and dst == BOTTOM:
                continue
            net = nets.get(key)
            if net is None:
                net = nets[key] = _Net(key, src, control=e.control)
                if not e.control and src in boxes and src == e.tail and e.value is not None:
                    net.label_value = e.value
            net.targets.add(dst)

        # ---- ranks
        preds: dict[str, set[str]] = {i: set() for i in ids}
        succs: dict[str, set[str]] = {i: set() for i in ids}
        fed_from_top: set[str] = set()
        for net in nets.values():
            for d in net.targets:
                if d in index:
                    if net.src == TOP:
                        fed_from_top.add(d)
                    elif index[d] > index[net.src]:
                        preds[d].add(net.src)
                        succs[net.src].add(d)
        rank: dict[str, int] = {}
        for i in ids:
            rank[i] = max((rank[p] + 1 for p in preds[i]), default=0)
        if is_root and "output" in rank:
            rank["output"] = max((r for i, r in rank.items() if i != "output"), default=-1) + 1
        for i in reversed(ids):
            if not preds[i] and succs[i] and i not in fed_from_top and not i.startswith("in:"):
                rank[i] = max(0, min(rank[s] for s in succs[i]) - 1)
        nranks = max(rank.values(), default=-1) + 1
        rows: list[list[str]] = [[] for _ in range(nranks)]
        for i in ids:
            rows[rank[i]].append(i)
        pos = {i: k for row in rows for k, i in enumerate(row)}
        for _sweep in range(2):
            for r in range(1, nranks):
                rows[r].sort(key=lambda i: (sum(pos[p] for p in preds[i]) / len(preds[i]) if preds[i] else pos[i]))
                for k, i in enumerate(rows[r]):
                    pos[i] = k

        # ---- ports inside items
        def in_off(item: str, key: tuple) -> int:
            if item in parts:
                return parts[item].entry.get(key, size[item][0] // 2)
            return size[item][0] // 2

        def out_off(item: str, key: tuple) -> int:
            if item in parts:
                return parts[item].exit.get(key, size[item][0] // 2)
            return size[item][0] // 2

        in_nets: dict[str, list[_Net]] = {i: [] for i in ids}
        for net in nets.values():
            for d in net.targets:
                if d in in_nets:
                    in_nets[d].append(net)

        # ---- x: under the ports that feed each item
        x0: dict[str, int] = {}
        for r in range(nranks):
            prev_end = None
            for i in rows[r]:
                w = size[i][0]
                want = [x0[n.src] + out_off(n.src, n.key) - in_off(i, n.key)
                        for n in in_nets[i] if n.src != TOP and n.src in x0]
                x = round(sum(want) / len(want)) if want else (prev_end + GAP if prev_end is not None else 0)
                if prev_end is not None:
                    x = max(x, prev_end + GAP)
                x0[i] = x
                prev_end = x + w
        if x0:
            shift = left - min(x0.values())
            for i in x0:
                x0[i] += shift

        def out_col(net: _Net) -> int:
            return x0[net.src] + out_off(net.src, net.key)

        def in_col(item: str, key: tuple) -> int:
            return x0[item] + in_off(item, key)

        title_end = 0 if is_root else len(c.label) + 5  # "╭─ label ─": the first column free of it
        if not is_root:
            # an entry straight down into the first rank, right of the title: move the content right
            # rather than bend the edge
            firsts = [in_col(d, n.key) for n in nets.values() if n.src == TOP
                      for d in n.targets if d in index and rank[d] == 0]
            if firsts and min(firsts) <= title_end and title_end + 1 - min(firsts) <= 12:
                delta = title_end + 1 - min(firsts)
                for i in x0:
                    x0[i] += delta

        # ---- lanes for nets that skip ranks
        def src_rank(net: _Net) -> int:
            return -1 if net.src == TOP else rank[net.src]

        def tgt_rank(d: str) -> int:
            return nranks if d == BOTTOM else rank[d]

        lanes: dict[tuple, tuple[int, int, int]] = {}  # key -> (column, first channel, last channel)
        used: list[tuple[int, int, int]] = []
        want_lanes = []
        for net in nets.values():
            rs = src_rank(net)
            far = [tgt_rank(d) for d in net.targets if d != BORDER and tgt_rank(d) > rs + 1]
            if far:
                want_lanes.append((max(far) - rs, rs, max(far), net))
        for _span, rs, rl, net in sorted(want_lanes, key=lambda t: (t[0], t[1])):
            base = max((x0[i] + size[i][0] for r in range(rs + 1, rl) for i in rows[r]), default=left) + 1
            if net.src == TOP:
                base = max(base, title_end + 1)
            col = base
            while any(abs(col - u) < 2 and not (rl - 1 < a or b < rs) for u, a, b in used):
                col += 1
            used.append((col, rs, rl - 1))
            lanes[net.key] = (col, rs, rl - 1)

        # ---- ports on this cluster's borders
        entry: dict[tuple, int] = {}
        exit_: dict[tuple, int] = {}
        taken_top: set[int] = set()
        taken_bottom: set[int] = set()
        for net in nets.values():
            if net.src != TOP:
                continue
            if net.key in lanes:
                p = lanes[net.key][0]
            else:
                near = [in_col(d, net.key) for d in net.targets if d in index]
                content_w = max((x0[i] + size[i][0] for i in ids), default=left)
                p = round(sum(near) / len(near)) if near else max((content_w + left) // 2, left)
                p = max(p, title_end + 1)
            while p in taken_top or p - 1 in taken_top or p + 1 in taken_top:
                p += 2
            taken_top.add(p)
            entry[net.key] = p
        for net in nets.values():
            if BOTTOM not in net.targets:
                continue
            p = lanes[net.key][0] if net.key in lanes else out_col(net)
            while p in taken_bottom or p - 1 in taken_bottom or p + 1 in taken_bottom:
                p += 2
            taken_bottom.add(p)
            exit_[net.key] = p

        def src_col(net: _Net) -> int:
            return entry[net.key] if net.src == TOP else out_col(net)

        # ---- channels: one horizontal segment per net and channel, packed into tracks
        # channel ch lies between rank ch and ch + 1 (-1: below the top border; nranks - 1: above the bottom)
        hseg: dict[tuple[int, tuple], tuple[int, int]] = {}  # (channel, key) -> (left, right)
        branches: dict[tuple[int, tuple], list] = {}  # (channel, key) -> target columns entering rank ch + 1
        trunk: dict[tuple[int, tuple], int] = {}  # the column the net comes down in, in that channel
        for net in nets.values():
            rs = src_rank(net)
            lane = lanes.get(net.key)
            last = lane[2] if lane else rs
            for ch in range(rs, last + 1):
                vcol = src_col(net) if ch == rs else lane[0]
                cols = []
                for d in net.targets:
                    if d in index and rank[d] == ch + 1:
                        cols.append(in_col(d, net.key))
                    elif d == BOTTOM and ch == nranks - 1:
                        cols.append(exit_[net.key])
                if ch == rs and lane and lane[2] >= ch:
                    cols.append(lane[0])
                if not cols and ch != rs:
                    continue
                trunk[(ch, net.key)] = vcol
                branches[(ch, net.key)] = cols
                lo, hi = min(cols + [vcol]), max(cols + [vcol])
                if lo < hi:
                    hseg[(ch, net.key)] = (lo, hi)
        tracks: dict[tuple[int, tuple], int] = {}
        ntracks: dict[int, int] = {}
        # nets that all go into one port (the inputs of a cat, a stack, an add) share a track: a bus
        # that merges into the arrow; every other net has a track of its own
        groups: dict[tuple, list] = {}
        for (ch, key), (lo, hi) in hseg.items():
            cols = branches[(ch, key)]
            lane = lanes.get(key)
            sink = len(cols) == 1 and not (lane and ch < lane[2] and cols[0] == lane[0])
            gkey = (ch, "sink", cols[0]) if sink else (ch, "net", key)
            g = groups.setdefault(gkey, [lo, hi, []])
            g[0], g[1] = min(g[0], lo), max(g[1], hi)
            g[2].append(key)
        by_channel: dict[int, list] = {}
        for gkey, (lo, hi, keys) in groups.items():
            by_channel.setdefault(gkey[0], []).append(((lo, hi), keys))
        for ch, segs in by_channel.items():
            ends: list[int] = []
            for (lo, hi), keys in sorted(segs, key=lambda t: (t[0][0], t[0][1])):
                for t, end in enumerate(ends):
                    if lo > end + 1:
                        ends[t] = hi
                        break
                else:
                    t = len(ends)
                    ends.append(hi)
                for key in keys:
                    tracks[(ch, key)] = t
            ntracks[ch] = len(ends)

        def channel_rows(ch: int) -> int:
            used_here = any(k[0] == ch for k in trunk)
            t = ntracks.get(ch, 0)
            if ch == -1:
                if not used_here:
                    return 0
                return t + 1
            if ch == nranks - 1 and not is_root:
                if not used_here:
                    return 0
                return (0 if compact else 1) + t
            if ch == nranks - 1:
                return 0
            if t == 0:
                return 1
            return (0 if compact else 1) + t + 1

        # ---- y
        y = 0 if is_root else 1
        ch_top: dict[int, int] = {}
        ch_top[-1] = y
        y += channel_rows(-1)
        rank_top: list[int] = []
        for r in range(nranks):
            rank_top.append(y)
            y += max(size[i][1] for i in rows[r])
            ch_top[r] = y
            y += channel_rows(r)
        height = y + (0 if is_root else 1)

        def track_y(ch: int, key: tuple) -> int | None:
            t = tracks.get((ch, key))
            if t is None:
                return None
            lead = 0 if (compact or ch == -1) else 1
            return ch_top[ch] + lead + t

        def arrow_y(ch: int) -> int:
            return ch_top[ch] + channel_rows(ch) - 1

        # ---- width
        width = max([x0[i] + size[i][0] for i in ids] + [left]) + (0 if is_root else 2)
        for col, _a, _b in used:
            width = max(width, col + (1 if is_root else 3))
        for p in list(entry.values()) + list(exit_.values()):
            width = max(width, p + (1 if is_root else 3))
        if not is_root:
            width = max(width, title_end + 2)

        out = _Part(width, height, entry, exit_)

        # ---- items
        for i in ids:
            xi, yi = x0[i], rank_top[rank[i]]
            if i in parts:
                p = parts[i]
                out.boxes.extend(GBox(b.id, b.x + xi, b.y + yi, b.w, b.h, b.lines, b.kind, b.category)
                                 for b in p.boxes)
                out.frames.extend(GFrame(f.id, f.label, f.kind, f.x + xi, f.y + yi, f.w, f.h) for f in p.frames)
                out.segments.extend((a + xi, b + yi, cc + xi, d + yi, ctl) for a, b, cc, d, ctl in p.segments)
                out.arrows.extend((a + xi, b + yi) for a, b in p.arrows)
                out.labels.extend(GLabel(lb.x + xi, lb.y + yi, lb.tail, lb.value) for lb in p.labels)
            else:
                w, h = size[i]
                out.boxes.append(GBox(i, xi, yi, w, h, lines[i], boxes[i].kind, boxes[i].category))
        if not is_root:
            out.frames.insert(0, GFrame(c.id, c.label, c.kind, 0, 0, width, height))

        # ---- edges
        def seg(xa: int, ya: int, xb: int, yb: int, ctl: bool) -> None:
            if (xa, ya) != (xb, yb) or True:
                out.segments.append((xa, ya, xb, yb, ctl))

        for net in nets.values():
            rs = src_rank(net)
            ctl = net.control
            lane = lanes.get(net.key)
            if net.src == TOP:
                start_y = 0
            else:  # from below a box; from a cluster's bottom border, where its own exit ends
                # (a compact box has no border: its edges start on its own row, drawn over, so that the
                # cell below it joins upwards)
                start_y = rank_top[rank[net.src]] + size[net.src][1] - (1 if net.src in parts or compact else 0)
            first = (rs, net.key)
            vcol = src_col(net)
            if net.label_value is not None and net.src != TOP:
                out.labels.append(GLabel(vcol + 2, start_y + (1 if compact else 0), net.key[0], net.label_value))
            if first not in trunk:  # only a border target (an If's edge to its own block)
                continue
            chans = [ch for ch in range(rs, (lane[2] if lane else rs) + 1) if (ch, net.key) in trunk]
            prev_y = start_y
            for ch in chans:
                col = trunk[(ch, net.key)]
                hy = track_y(ch, net.key)
                ay = arrow_y(ch)
                if ch == nranks - 1 and not is_root:
                    ay = height - 1  # down through the bottom border
                if hy is not None:
                    seg(col, prev_y, col, hy, ctl)
                    lo, hi = hseg[(ch, net.key)]
                    seg(lo, hy, hi, hy, ctl)
                    turn = hy
                else:
                    turn = prev_y
                for tcol in branches[(ch, net.key)]:
                    if lane and tcol == lane[0] and ch == rs and ch < lane[2]:
                        continue  # the lane itself goes on below
                    target = next((d for d in net.targets if d in index and rank[d] == ch + 1
                                   and in_col(d, net.key) == tcol), None)
                    # into a cluster: on to its top border, where the cluster's own part goes on
                    end = ay + 1 if target is not None and target in parts else ay
                    seg(tcol, turn, tcol, end, ctl)
                    if target is not None and target in boxes:
                        out.arrows.append((tcol, end))
                if lane and ch < lane[2]:
                    nxt = next((c2 for c2 in chans if c2 > ch), None)
                    if nxt is None:
                        break
                    ny = track_y(nxt, net.key)
                    if ny is None:
                        ny = arrow_y(nxt) if not (nxt == nranks - 1 and not is_root) else height - 1
                    seg(lane[0], turn, lane[0], ny, ctl)
                    prev_y = ny
        return out

    def build(self) -> GridLayout:
        p = self.part(self.scene.root)
        out = GridLayout(p.w, p.h, self.compact)
        out.boxes = {b.id: b for b in p.boxes}
        out.frames = p.frames
        out.segments = [s for s in p.segments if (s[0], s[1]) != (s[2], s[3]) or True]
        out.arrows = p.arrows
        out.labels = p.labels
        return out


def grid_layout(scene: Scene, compact: bool = False) -> GridLayout:
    """Lay ``scene`` out in character cells (``compact``: one-row boxes without borders)."""
    return GridBuilder(scene, compact).build()
