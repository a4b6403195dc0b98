"""Pictures of graphs: drawings in files (``Graph.visualize``, ``dataflow show``) and
views in Jupyter (``Graph``/``Node`` ``_repr_html_``).

Two layouts, one look:

- ``"graphviz"``: the DOT text of :func:`dot_source`, laid out by graphviz's ``dot``
  program through the ``graphviz`` package (``pip install 'dataflow-graph-engine[viz]'`` and the
  ``dot`` program from your system's package manager);
- ``"layered"``: a layered drawing made with matplotlib alone (:func:`layered_layout`,
  :func:`draw_layered`), used when ``dot`` is not installed. Nodes are put in layers by
  topological generation (a node sits one layer below its deepest input); an edge that
  spans several layers passes through a reserved slot in each layer it crosses; each
  layer is ordered by the barycentre of its neighbours to limit crossings; every label
  box is measured with matplotlib's own text renderer and boxes are spaced so that
  none overlaps another.

Nodes are coloured by role, as TensorBoard colours its graphs: forward nodes blue,
gradient nodes (built by :func:`dataflow.gradients`, or named under a ``grad/``
scope) orange, fed nodes (placeholders, and any node passed as ``fed``) green.
"""

from __future__ import annotations

import html
import importlib.util
import io
import os
import shutil
from collections import Counter
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .graph import Node, _dot_escape
from .shapes import fmt

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MAX_DRAWN_NODES", "ROLE_COLOURS", "Box", "LayeredLayout", "dot_source",
           "draw_layered", "has_graphviz", "layered_layout", "node_role", "notebook_html",
           "render", "svg"]

FORWARD, GRADIENT, FED = "forward", "gradient", "fed"
#: (fill, border) colour of each role
ROLE_COLOURS: dict[str, tuple[str, str]] = {
    FORWARD: ("#d6e6f5", "#2f6fad"),
    GRADIENT: ("#fde3c8", "#c8671b"),
    FED: ("#dcefd6", "#3d8a33"),
}
#: notebooks draw graphs of up to this many nodes and summarise larger ones
MAX_DRAWN_NODES = 120
GRADIENT_SCOPES = ("grad", "gradients")

FONT_SIZE = 8.0  # points
FONT_FAMILY = "DejaVu Sans"  # bundled with matplotlib: the same metrics everywhere
PAD_X, PAD_Y = 5.0, 3.0  # inside a box, points
GAP_X, GAP_Y = 14.0, 26.0  # between boxes in a layer, between layers
SLOT_WIDTH = 6.0  # the room an edge takes where it crosses a layer
MARGIN = 12.0
#: an edge spanning several layers reserves a slot in each; beyond this many slots in
#: all (a huge graph with many long edges) edges are drawn straight instead
MAX_EDGE_SLOTS = 20000
LEGEND_HEIGHT = 22.0


def node_role(node: Node, fed_ids: Container[int] = ()) -> str:
    """``"fed"``, ``"gradient"`` or ``"forward"``: what the node is in its graph.

    Parameters
    ----------
    node : Node
        The node to classify.
    fed_ids : container of int, optional
        Ids of nodes that are fed in the run being pictured (placeholders always are).

    Returns
    -------
    str
        ``"fed"`` for placeholders and fed nodes; ``"gradient"`` for nodes built by
        :func:`dataflow.gradients` in this process, or whose name lies under a
        ``grad/`` (or ``gradients/``) scope, which is what survives a saved file;
        ``"forward"`` otherwise.
    """
    if node.op.name == "placeholder" or node.id in fed_ids:
        return FED
    if node.graph.is_gradient(node) or node.name.split("/", 1)[0] in GRADIENT_SCOPES:
        return GRADIENT
    return FORWARD


def node_label(node: Node) -> str:
    """The two-line label of a node: its name, then its op, shape and dtype."""
    return f"{node.name}\n{node.op.name} {fmt(node.shape)} {node.dtype}"


def has_graphviz() -> bool:
    """Whether graphviz's layout is available: the ``dot`` program and the ``graphviz``
    Python package."""
    return shutil.which("dot") is not None and importlib.util.find_spec("graphviz") is not None


def _roles(nodes: Sequence[Node], fed: Iterable[Node]) -> dict[int, str]:
    fed_ids = {n.id for n in fed}
    return {n.id: node_role(n, fed_ids) for n in nodes}


def _edges(nodes: Sequence[Node]) -> list[tuple[Node, Node]]:
    """Distinct (parent, child) pairs between the given nodes, in child-id order."""
    members = {n.id for n in nodes}
    edges: list[tuple[Node, Node]] = []
    for node in nodes:
        for parent in dict.fromkeys(node.inputs):  # x * x draws one edge
            if parent.id in members:
                edges.append((parent, node))
    return edges


# -- graphviz -----------------------------------------------------------------------------

def dot_source(nodes: Sequence[Node], *, fed: Iterable[Node] = (), title: str | None = None,
               legend: bool = True) -> str:
    """Graphviz DOT text for ``nodes``: rounded boxes filled by role, top to bottom.

    Parameters
    ----------
    nodes : sequence of Node
        The nodes to draw (edges are drawn between them only), in id order.
    fed : iterable of Node, optional
        Nodes to colour as fed besides the placeholders.
    title : str, optional
        The DOT graph's name.
    legend : bool, default True
        Put a colour key under the drawing.

    Returns
    -------
    str
        DOT text; node ``n<id>`` is the node with that id.
    """
    nodes = sorted(nodes, key=lambda n: n.id)
    roles = _roles(nodes, fed)
    lines = [f'digraph "{_dot_escape(title or "graph")}" {{', "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fontname="DejaVu Sans", '
             "fontsize=10, penwidth=1.2];",
             '  edge [color="#777777", arrowsize=0.6];']
    if legend:
        cells = "".join(
            f'<td bgcolor="{ROLE_COLOURS[r][0]}" color="{ROLE_COLOURS[r][1]}">{r}</td>'
            for r in (FORWARD, GRADIENT, FED))
        lines.append(f'  label=<<table border="0" cellspacing="4"><tr>{cells}</tr></table>>;')
    for node in nodes:
        fill, border = ROLE_COLOURS[roles[node.id]]
        label = "\\n".join(_dot_escape(line) for line in node_label(node).split("\n"))
        lines.append(f'  n{node.id} [label="{label}", fillcolor="{fill}", color="{border}"];')
    for parent, child in _edges(nodes):
        lines.append(f"  n{parent.id} -> n{child.id};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _graphviz_pipe(source: str, format: str) -> bytes:
    import graphviz

    return graphviz.Source(source).pipe(format=format)


# -- the layered layout ---------------------------------------------------------------------

@dataclass
class Box:
    """A label box of the layered layout, in points; ``(x, y)`` is its centre and ``y``
    grows downwards."""

    node: Node
    label: str
    role: str
    x: float
    y: float
    width: float
    height: float

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)``."""
        return (self.x - self.width / 2, self.y - self.height / 2,
                self.x + self.width / 2, self.y + self.height / 2)


@dataclass
class LayeredLayout:
    """Where :func:`layered_layout` put every box and edge, in points (``y`` down)."""

    boxes: list[Box]
    #: one polyline per edge, from the bottom of the parent to the top of the child
    edges: list[list[tuple[float, float]]]
    width: float
    height: float
    layers: int
    font_size: float = FONT_SIZE
    title: str | None = None


def _measure(labels: Sequence[str], font_size: float) -> list[tuple[float, float]]:
    """(width, height) in points of each label as matplotlib renders it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(dpi=72)  # 1 pixel = 1 point
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    sizes = []
    for label in labels:
        text = fig.text(0, 0, label, fontsize=font_size, family=FONT_FAMILY,
                        ha="center", va="center", multialignment="center")
        extent = text.get_window_extent(renderer)
        sizes.append((extent.width, extent.height))
        text.remove()
    return sizes


def layered_layout(nodes: Sequence[Node], *, fed: Iterable[Node] = (),
                   font_size: float = FONT_SIZE, title: str | None = None) -> LayeredLayout:
    """Lay ``nodes`` out in layers with no two label boxes overlapping.

    Parameters
    ----------
    nodes : sequence of Node
        The nodes to draw (edges are drawn between them only).
    fed : iterable of Node, optional
        Nodes to colour as fed besides the placeholders.
    font_size : float, default 8
        Label font size in points; boxes are measured at this size.
    title : str, optional
        A title drawn above the legend.

    Returns
    -------
    LayeredLayout
        The boxes (measured labels plus padding), the edge polylines and the extent.

    Notes
    -----
    A node's layer is its topological generation (one more than its deepest input's),
    then, walking back from the outputs, each node moves down to just above its nearest
    consumer, so that leaves sit beside the node that uses them. An edge that spans
    ``k`` layers gets a slot in each of the ``k - 1`` layers between, so no edge runs
    through a box. The order within a
    layer comes from alternating barycentre sweeps (downwards by parents, upwards by
    children); x positions then move each box towards its neighbours' mean, and a
    left-to-right pass keeps at least ``GAP_X`` points between neighbours in a layer,
    while layers are ``GAP_Y`` points apart below their tallest box.
    """
    nodes = sorted(nodes, key=lambda n: n.id)
    roles = _roles(nodes, fed)
    labels = [node_label(n) for n in nodes]
    sizes = _measure(labels, font_size)

    # Vertices: 0..len(nodes)-1 are the nodes, later ones are edge slots.
    index = {n.id: i for i, n in enumerate(nodes)}
    layer: list[int] = []
    for node in nodes:  # id order is topological
        layer.append(1 + max((layer[index[p.id]] for p in node.inputs if p.id in index),
                             default=-1))
    # Then, from the last node back, move each node down to just above its nearest
    # consumer: leaves and the bprop's helpers (a transposed weight, a constant) sit by
    # the node that uses them instead of on top with a long edge down.
    consumers: list[list[int]] = [[] for _ in nodes]
    for parent, child in _edges(nodes):
        consumers[index[parent.id]].append(index[child.id])
    for i in range(len(nodes) - 1, -1, -1):
        if consumers[i]:
            layer[i] = min(layer[c] for c in consumers[i]) - 1
    width = [w + 2 * PAD_X for w, _ in sizes]
    height = [h + 2 * PAD_Y for _, h in sizes]
    succ: list[list[int]] = [[] for _ in nodes]
    pred: list[list[int]] = [[] for _ in nodes]
    chains: list[list[int]] = []  # vertex chain of each edge, parent to child
    edges = _edges(nodes)
    route = sum(layer[index[c.id]] - layer[index[p.id]] - 1 for p, c in edges) <= MAX_EDGE_SLOTS
    for parent, child in edges:
        chain = [index[parent.id]]
        spanned = range(layer[index[parent.id]] + 1, layer[index[child.id]]) if route else ()
        for k in spanned:
            slot = len(layer)
            layer.append(k)
            width.append(SLOT_WIDTH)
            height.append(0.0)
            succ.append([])
            pred.append([])
            chain.append(slot)
        chain.append(index[child.id])
        for a, b in zip(chain, chain[1:]):
            succ[a].append(b)
            pred[b].append(a)
        chains.append(chain)

    depth = max(layer, default=-1) + 1
    rows: list[list[int]] = [[] for _ in range(depth)]
    for v in range(len(layer)):
        rows[layer[v]].append(v)

    # Crossing reduction: barycentre sweeps, stable and deterministic.
    order = [0] * len(layer)

    def renumber(row: list[int]) -> None:
        for i, v in enumerate(row):
            order[v] = i

    for row in rows:
        renumber(row)
    for _ in range(4):
        for k in range(1, depth):
            rows[k].sort(key=lambda v: _barycentre(v, pred, order))
            renumber(rows[k])
        for k in range(depth - 2, -1, -1):
            rows[k].sort(key=lambda v: _barycentre(v, succ, order))
            renumber(rows[k])

    # x positions: pack, then pull towards neighbours while keeping the gaps.
    x = [0.0] * len(layer)
    for row in rows:
        _place(row, [0.0] * len(row), width, x)
    for sweep in range(6):
        ks = range(1, depth) if sweep % 2 == 0 else range(depth - 2, -1, -1)
        neighbours = pred if sweep % 2 == 0 else succ
        for k in ks:
            row = rows[k]
            want = [sum(x[u] for u in neighbours[v]) / len(neighbours[v]) if neighbours[v]
                    else x[v] for v in row]
            _place(row, want, width, x)
    left = min((x[v] - width[v] / 2 for v in range(len(layer))), default=0.0)
    right = max((x[v] + width[v] / 2 for v in range(len(layer))), default=0.0)

    # y positions: layers top to bottom, under the title and legend band.
    top = MARGIN + LEGEND_HEIGHT + (font_size * 2 if title else 0.0)
    y = [0.0] * len(layer)
    for row in rows:
        tallest = max((height[v] for v in row), default=0.0)
        for v in row:
            y[v] = top + tallest / 2
        top += tallest + GAP_Y
    shift = MARGIN - left
    boxes = [Box(n, labels[i], roles[n.id], x[i] + shift, y[i], width[i], height[i])
             for i, n in enumerate(nodes)]
    polylines = []
    for chain in chains:
        a, b = chain[0], chain[-1]
        points = [(x[a] + shift, y[a] + height[a] / 2)]
        points += [(x[v] + shift, y[v]) for v in chain[1:-1]]
        points.append((x[b] + shift, y[b] - height[b] / 2))
        polylines.append(points)
    legend_width = 3 * 70.0
    total_width = max(right - left, legend_width) + 2 * MARGIN
    total_height = top - GAP_Y + MARGIN if rows else top + MARGIN
    return LayeredLayout(boxes, polylines, total_width, total_height, depth, font_size, title)


def _barycentre(v: int, neighbours: list[list[int]], order: list[int]) -> float:
    around = neighbours[v]
    if not around:
        return float(order[v])
    return sum(order[u] for u in around) / len(around)


def _place(row: list[int], want: list[float], width: list[float], x: list[float]) -> None:
    """Put the row's vertices as near ``want`` as their order and the gaps allow."""
    placed: list[float] = []
    for i, v in enumerate(row):
        pos = want[i]
        if i:
            u = row[i - 1]
            pos = max(pos, placed[-1] + (width[u] + width[v]) / 2 + GAP_X)
        placed.append(pos)
    if not placed:
        return
    # Pushing right only drifts the row; shift it back so it is centred on its targets
    # on average (a uniform shift keeps every gap).
    drift = sum(p - w for p, w in zip(placed, want)) / len(placed)
    for v, pos in zip(row, placed):
        x[v] = pos - drift


def draw_layered(layout: LayeredLayout, *, dpi: float = 100.0) -> Figure:
    """A matplotlib figure of ``layout`` (1 data unit = 1 point, so the text drawn is
    exactly the size that was measured). Uses no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    # Keep the image within what the Agg renderer can hold.
    dpi = min(dpi, 30000 * 72 / max(layout.width, layout.height, 1.0))
    fig = Figure(figsize=(layout.width / 72, layout.height / 72), dpi=dpi)
    FigureCanvasAgg(fig)  # off-screen canvas: measuring and saving need no pyplot
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, layout.width)
    ax.set_ylim(layout.height, 0)
    ax.set_axis_off()
    for points in layout.edges:
        xs, ys = zip(*points)
        if len(points) > 2:
            ax.plot(xs[:-1], ys[:-1], color="#888888", lw=0.7, zorder=1)
        ax.add_patch(FancyArrowPatch(points[-2], points[-1], arrowstyle="-|>",
                                     mutation_scale=7, color="#888888", lw=0.7,
                                     shrinkA=0, shrinkB=0, zorder=1))
    for box in layout.boxes:
        fill, border = ROLE_COLOURS[box.role]
        left, top, _, _ = box.bounds
        ax.add_patch(FancyBboxPatch((left, top), box.width, box.height,
                                    boxstyle="round,pad=0,rounding_size=3", fc=fill, ec=border,
                                    lw=0.9, zorder=2))
        ax.text(box.x, box.y, box.label, fontsize=layout.font_size, family=FONT_FAMILY,
                ha="center", va="center", multialignment="center", zorder=3, gid="label")
    y = MARGIN
    if layout.title:
        ax.text(MARGIN, y, layout.title, fontsize=layout.font_size * 1.3, family=FONT_FAMILY,
                ha="left", va="top", weight="bold")
        y += layout.font_size * 2
    for i, role in enumerate((FORWARD, GRADIENT, FED)):
        fill, border = ROLE_COLOURS[role]
        ax.add_patch(FancyBboxPatch((MARGIN + 70 * i, y), 60, 14,
                                    boxstyle="round,pad=0,rounding_size=3", fc=fill, ec=border,
                                    lw=0.9))
        ax.text(MARGIN + 70 * i + 30, y + 7, role, fontsize=layout.font_size,
                family=FONT_FAMILY, ha="center", va="center")
    return fig


# -- front doors ----------------------------------------------------------------------------

LAYOUTS = ("auto", "graphviz", "layered")


def _choose(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "auto":
        return "graphviz" if has_graphviz() else "layered"
    if layout == "graphviz" and not has_graphviz():
        raise RuntimeError("the graphviz layout needs the dot program and the graphviz "
                           "package (pip install 'dataflow-graph-engine[viz]'); "
                           "use layout='layered'")
    return layout


def render(nodes: Sequence[Node], path: str | os.PathLike, *, fed: Iterable[Node] = (),
           layout: str = "auto", title: str | None = None) -> str:
    """Draw ``nodes`` to ``path``; the format comes from its suffix (svg, png, pdf).

    Parameters
    ----------
    nodes : sequence of Node
        The nodes to draw.
    path : str or os.PathLike
        The file to write.
    fed : iterable of Node, optional
        Nodes to colour as fed besides the placeholders.
    layout : {"auto", "graphviz", "layered"}, default "auto"
        ``"auto"`` uses graphviz when the ``dot`` program is installed.
    title : str, optional
        A title for the drawing.

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    format = os.path.splitext(path)[1].lstrip(".").lower() or "svg"
    if format not in ("svg", "png", "pdf"):
        raise ValueError(f"cannot draw a graph as {format!r}: use .svg, .png or .pdf")
    nodes = list(nodes)
    fed = list(fed)
    if _choose(layout) == "graphviz":
        data = _graphviz_pipe(dot_source(nodes, fed=fed, title=title), format)
        with open(path, "wb") as f:
            f.write(data)
        return path
    fig = draw_layered(layered_layout(nodes, fed=fed, title=title))
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(path, format=format)
    return path


def svg(nodes: Sequence[Node], *, fed: Iterable[Node] = (), layout: str = "auto",
        title: str | None = None) -> str:
    """The drawing of ``nodes`` as SVG text (see :func:`render`)."""
    nodes = list(nodes)
    fed = list(fed)
    if _choose(layout) == "graphviz":
        return _graphviz_pipe(dot_source(nodes, fed=fed, title=title), "svg").decode()
    import matplotlib

    fig = draw_layered(layered_layout(nodes, fed=fed, title=title))
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg")
    return buffer.getvalue()


def notebook_html(nodes: Sequence[Node], *, title: str) -> str:
    """HTML for Jupyter: a drawing when there are at most :data:`MAX_DRAWN_NODES` nodes
    and a way to draw them, else a summary (counts by role and by op, inputs, outputs)."""
    nodes = sorted(nodes, key=lambda n: n.id)
    head = f"<b>{html.escape(title)}</b>: {len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    drawable = has_graphviz() or importlib.util.find_spec("matplotlib") is not None
    if nodes and len(nodes) <= MAX_DRAWN_NODES and drawable:
        picture = svg(nodes)
        picture = picture[picture.find("<svg"):]  # drop the XML prolog inside HTML
        return f"<div>{head}<div style='overflow:auto;max-height:600px'>{picture}</div></div>"
    return f"<div>{head}{_summary_html(nodes)}</div>"


def _summary_html(nodes: Sequence[Node]) -> str:
    roles = Counter(_roles(nodes, ()).values())
    ops = Counter(n.op.name for n in nodes)
    used = {p.id for n in nodes for p in n.inputs}
    inputs = [n for n in nodes if n.op.name == "placeholder"]
    outputs = [n for n in nodes if n.id not in used]

    def names(group: list[Node]) -> str:
        shown = ", ".join(html.escape(f"{n.name} {fmt(n.shape)}") for n in group[:10])
        return shown + (f" and {len(group) - 10} more" if len(group) > 10 else "")

    role_text = ", ".join(f"{roles.get(r, 0)} {r}" for r in (FORWARD, GRADIENT, FED))
    rows = "".join(f"<tr><td>{html.escape(op)}</td><td>{count}</td></tr>"
                   for op, count in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))[:15])
    more = f"<p>and {len(ops) - 15} more ops</p>" if len(ops) > 15 else ""
    return (f"<p>{role_text}; too many to draw here: "
            "<code>visualize(\"graph.svg\")</code> draws them all.</p>"
            f"<p>inputs: {names(inputs) or 'none'}<br>outputs: {names(outputs)}</p>"
            f"<table><tr><th>op</th><th>nodes</th></tr>{rows}</table>{more}")
