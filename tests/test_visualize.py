"""Graph drawings (graphviz and the layered matplotlib layout), role colours, and the
Jupyter views of graphs, nodes and profiles."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import dataflow as df
import scheduler
from dataflow import visualize
from dataflow.cli import main as cli_main
from dataflow.models import build_mlp

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def mlp():
    model = build_mlp((784, 512, 512, 10))
    assert len(model.graph) >= 60  # forward + gradient nodes
    return model


def overlapping(boxes: list[tuple[str, float, float, float, float]]) -> list[tuple[str, str]]:
    """Pairs of (name, left, top, right, bottom) boxes whose interiors intersect."""
    pairs = []
    for (a, l1, t1, r1, b1), (b, l2, t2, r2, b2) in itertools.combinations(boxes, 2):
        if min(r1, r2) > max(l1, l2) and min(b1, b2) > max(t1, t2):
            pairs.append((a, b))
    return pairs


def inside(inner: tuple[float, ...], outer: tuple[float, ...], slack: float = 0.5) -> bool:
    l1, t1, r1, b1 = inner
    l2, t2, r2, b2 = outer
    return l1 >= l2 - slack and t1 >= t2 - slack and r1 <= r2 + slack and b1 <= b2 + slack


# -- roles ----------------------------------------------------------------------------------

def test_roles_forward_gradient_fed(mlp):
    role = visualize.node_role
    for p in mlp.params + [mlp.x, mlp.labels]:
        assert role(p) == "fed"
    assert role(mlp.loss) == "forward" and role(mlp.logits) == "forward"
    for g in mlp.grads:
        assert role(g) == "gradient"
    assert role(mlp.loss, fed_ids=[mlp.loss.id]) == "fed"
    counts = {r: sum(role(n) == r for n in mlp.graph) for r in ("forward", "gradient", "fed")}
    assert counts["fed"] == 8 and counts["forward"] >= 10 and counts["gradient"] >= 30


def test_gradient_marking_ends_with_the_gradients_call():
    with df.Graph() as g:
        x = df.placeholder("x", (3,))
        y = df.sum(df.tanh(x))
        (gx,) = df.gradients(y, [x])
        after = gx * 2.0  # built by the user, after the call
    assert g.is_gradient(gx) and not g.is_gradient(y) and not g.is_gradient(after)


def test_names_under_a_grad_scope_are_gradients():
    # what survives a saved file: names, not the process's record of gradients calls
    with df.Graph():
        a = df.constant(np.ones(2), name="grad/w")
        b = df.constant(np.ones(2), name="gradw")
    assert visualize.node_role(a) == "gradient" and visualize.node_role(b) == "forward"


# -- the layered layout ---------------------------------------------------------------------

def test_layered_layout_of_the_mlp_has_no_overlapping_labels(mlp):
    nodes = mlp.graph.nodes
    layout = visualize.layered_layout(nodes, title="mlp")
    assert sorted(b.node.id for b in layout.boxes) == [n.id for n in nodes]
    boxes = [(b.node.name, *b.bounds) for b in layout.boxes]
    assert overlapping(boxes) == []
    # every node sits below its inputs
    layer_top = {b.node.id: b.bounds[1] for b in layout.boxes}
    for node in nodes:
        for parent in node.inputs:
            assert layer_top[parent.id] < layer_top[node.id]
    # an edge crossing a layer passes through a free slot, never through a box
    for points in layout.edges:
        for x, y in points[1:-1]:
            assert not any(left < x < right and top < y < bottom
                           for _, left, top, right, bottom in boxes), (x, y)

    # The text as matplotlib renders it fits its box, and no two texts overlap.
    fig = visualize.draw_layered(layout)
    renderer = fig.canvas.get_renderer()
    scale = 72 / fig.dpi
    height = layout.height
    texts = [t for t in fig.axes[0].texts if t.get_gid() == "label"]
    assert len(texts) == len(nodes)
    by_label = {b.label: b for b in layout.boxes}
    rendered = []
    for text in texts:
        e = text.get_window_extent(renderer)  # pixels, y up
        bounds = (e.x0 * scale, height - e.y1 * scale, e.x1 * scale, height - e.y0 * scale)
        box = by_label[text.get_text()]
        assert inside(bounds, box.bounds), box.node.name
        rendered.append((box.node.name, *bounds))
    assert overlapping(rendered) == []


def test_layered_drawing_colours_nodes_by_role(mlp):
    layout = visualize.layered_layout(mlp.graph.nodes)
    fig = visualize.draw_layered(layout)
    from matplotlib.colors import to_hex

    fills = [to_hex(p.get_facecolor()) for p in fig.axes[0].patches
             if type(p).__name__ == "FancyBboxPatch"]
    want = [visualize.ROLE_COLOURS[b.role][0] for b in layout.boxes]
    assert fills[:len(want)] == want  # boxes first, then the three legend keys
    assert fills[len(want):] == [visualize.ROLE_COLOURS[r][0]
                                 for r in ("forward", "gradient", "fed")]


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_visualize_layered_writes_the_file(mlp, tmp_path, suffix):
    path = mlp.graph.visualize(tmp_path / f"g.{suffix}", layout="layered")
    data = (tmp_path / f"g.{suffix}").read_bytes()
    assert path == str(tmp_path / f"g.{suffix}")
    if suffix == "png":
        assert data.startswith(b"\x89PNG")
    else:
        text = data.decode()
        nodes = mlp.graph.nodes
        forward = next(n.name for n in nodes if n.op.name == "matmul")
        gradient = next(n.name for n in nodes if n.name.startswith("grad"))
        assert "<svg" in text and forward in text and gradient in text  # text, not paths


def test_auto_layout_is_layered_without_dot(monkeypatch):
    monkeypatch.setattr(visualize.shutil, "which", lambda name: None)
    assert not visualize.has_graphviz()
    assert visualize._choose("auto") == "layered"
    with pytest.raises(RuntimeError, match="dot program"):
        visualize._choose("graphviz")


def test_visualize_rejects_bad_arguments(mlp, tmp_path):
    with pytest.raises(ValueError, match="layout"):
        mlp.graph.visualize(tmp_path / "g.svg", layout="circo")
    with pytest.raises(ValueError, match="'txt'"):
        mlp.graph.visualize(tmp_path / "g.txt", layout="layered")


# -- graphviz -------------------------------------------------------------------------------

needs_dot = pytest.mark.skipif(not visualize.has_graphviz(),
                               reason="needs the dot program and the graphviz package")


@needs_dot
def test_graphviz_layout_of_the_mlp_has_no_overlapping_labels(mlp):
    nodes = mlp.graph.nodes
    layout = json.loads(visualize._graphviz_pipe(visualize.dot_source(nodes), "json"))
    objects = [o for o in layout["objects"] if o["name"].startswith("n")]
    assert sorted(int(o["name"][1:]) for o in objects) == [n.id for n in nodes]
    boxes, texts = [], []
    for o in objects:
        x, y = map(float, o["pos"].split(","))
        w, h = float(o["width"]) * 72, float(o["height"]) * 72  # inches -> points
        box = (o["name"], x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        boxes.append(box)
        for op in o["_ldraw_"]:
            if op["op"] == "T":  # one text line: baseline point, width, alignment
                tx, ty = op["pt"]
                size = float(o["fontsize"])
                line = (o["name"], tx - op["width"] / 2, ty - 0.3 * size, tx + op["width"] / 2,
                        ty + 0.9 * size)
                assert inside(line[1:], box[1:], slack=1.0), o["name"]
                texts.append(line)
    assert overlapping(boxes) == []
    assert [(a, b) for a, b in overlapping(texts) if a != b] == []  # lines of one box may touch
    roles = {n.id: visualize.node_role(n) for n in nodes}
    for o in objects:
        assert o["fillcolor"] == visualize.ROLE_COLOURS[roles[int(o["name"][1:])]][0]


@needs_dot
@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_visualize_with_graphviz(mlp, tmp_path, suffix):
    mlp.graph.visualize(tmp_path / f"g.{suffix}", layout="graphviz")
    data = (tmp_path / f"g.{suffix}").read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == "png" else b"<svg" in data


def test_dot_source_escapes_names():
    with df.Graph("q\"uote") as g:
        df.constant(np.ones(2), name='a"b\\c')
    text = visualize.dot_source(g.nodes, title=g.name)
    assert 'a\\"b\\\\c' in text and 'digraph "q\\"uote"' in text


# -- the command line -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["svg", "png"])
def test_cli_show_draws_the_gradient_graph(mlp, tmp_path, fmt, capsys):
    graph_file = tmp_path / "mlp.json"
    df.save(mlp.graph, graph_file)
    out = tmp_path / f"mlp.{fmt}"
    assert cli_main(["show", str(graph_file), "--format", fmt, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.stat().st_size > 1000


def test_cli_show_refuses_an_output_of_another_format(mlp, tmp_path, capsys):
    graph_file = tmp_path / "mlp.json"
    df.save(mlp.graph, graph_file)
    assert cli_main(["show", str(graph_file), "--format", "png",
                     "--out", str(tmp_path / "x.svg")]) == 2
    assert ".png" in capsys.readouterr().err


# -- notebooks ------------------------------------------------------------------------------

def test_small_graph_renders_as_a_drawing():
    with df.Graph("small") as g:
        x = df.placeholder("x", (3,))
        total = df.sum(df.tanh(x))
    page = g._repr_html_()
    assert "<svg" in page and total.name in page and "<?xml" not in page


def test_large_graph_renders_as_a_summary():
    with df.Graph("big") as g:
        y = df.placeholder("x", (3,))
        for _ in range(visualize.MAX_DRAWN_NODES):
            y = df.tanh(y)
    page = g._repr_html_()
    assert "<svg" not in page
    assert f"{len(g)} nodes" in page and "too many to draw" in page
    assert "<td>tanh</td><td>120</td>" in page


def test_node_renders_its_ancestors_only():
    with df.Graph():
        x = df.placeholder("x", (3,))
        left = df.exp(x)
        right = df.sin(x)
    page = left._repr_html_()
    assert "<svg" in page and "2 nodes" in page
    assert left.name in page and right.name not in page


def test_profiler_renders_its_last_run():
    prof = scheduler.Profiler()
    assert "no finished run" in prof._repr_html_()
    with df.Graph():
        x = df.placeholder("x", (4, 4))
        out = df.sum(df.tanh(x @ x))
    scheduler.run(out, {x: np.ones((4, 4))}, executor="inline", callbacks=[prof])
    page = prof._repr_html_()
    assert "<svg" in page and "Run profile" in page and "<?xml" not in page


def test_large_profile_renders_as_key_figures(monkeypatch):
    from scheduler import profiler

    prof = scheduler.Profiler()
    with df.Graph():
        x = df.placeholder("x", (4, 4))
        out = df.sum(df.tanh(x @ x))
    scheduler.run(out, {x: np.ones((4, 4))}, executor="inline", callbacks=[prof])
    monkeypatch.setattr(profiler, "MAX_DRAWN_RECORDS", 1)
    page = prof._repr_html_()
    assert "<svg" not in page and "Too many nodes" in page and "critical path" in page


def test_many_long_edges_are_drawn_straight(monkeypatch):
    # a huge graph must not reserve a slot per layer for every long edge
    with df.Graph():
        x = df.placeholder("x", (2,))
        y = x
        for _ in range(12):
            y = df.tanh(y) + x  # x feeds every layer: long edges
    nodes = y.graph.nodes
    routed = visualize.layered_layout(nodes)
    assert max(len(points) for points in routed.edges) > 2
    monkeypatch.setattr(visualize, "MAX_EDGE_SLOTS", 5)
    straight = visualize.layered_layout(nodes)
    assert max(len(points) for points in straight.edges) == 2
    boxes = [(b.node.name, *b.bounds) for b in straight.boxes]
    assert overlapping(boxes) == []
