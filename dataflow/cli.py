"""The ``dataflow`` command line: the demo, running/profiling/showing saved graphs, and
the benchmark suite. Mistakes in user input print one line and exit with status 2."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

EXECUTORS = ("inline", "threads", "asyncio", "processes", "dask")


class UsageError(Exception):
    """A mistake in what the user asked for; reported as one line, no traceback."""


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is reported like every other user error: one
    ``dataflow: error:`` line on stderr and status 2 (argparse's own report is a usage
    block plus a line naming the subcommand). Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        _report(message)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dataflow: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's contract: one line, nonzero status
        if not _is_user_error(exc):
            raise
        _report(_describe(exc))
        return 2


def _report(message: str) -> None:
    # One line, whatever the message: a multi-line exception text is folded.
    print("dataflow: error: " + " ".join(str(message).split()), file=sys.stderr)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"  # not "[Errno 2] No such file ..."
    message = str(exc) or type(exc).__name__
    notes = getattr(exc, "__notes__", None)  # a node's error names the node in a note
    if isinstance(notes, list) and notes:
        message += " (" + "; ".join(map(str, notes)) + ")"
    return message


def _is_user_error(exc: BaseException) -> bool:
    from scheduler import SchedulerError

    from .errors import DataflowError

    # ImportError: an optional extra that a chosen option needs is not installed.
    return isinstance(exc, (UsageError, DataflowError, SchedulerError, OSError, ValueError,
                            KeyError, TypeError, ImportError))


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="dataflow",
        description="Static-graph dataflow engine: run, profile and inspect graphs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="train an MLP on the bundled digits and profile a step",
                          description="Train a tanh MLP on scikit-learn's bundled digits with "
                          "SGD through the engine, print the test accuracy and write a profile "
                          "of one training step.")
    demo.add_argument("--out", default="profile-out",
                      help="folder for the profile (default: %(default)s)")
    demo.add_argument("--epochs", type=_positive_int, default=30)
    demo.add_argument("--hidden", type=_positive_int, default=64)
    _executor_args(demo)
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser("run", help="run a saved graph", description="Run a saved graph "
                         "with feeds from .npy files and save the fetched values to an .npz file.")
    _graph_args(run)
    run.add_argument("--out", default="results.npz", help="output .npz (default: %(default)s)")
    run.set_defaults(func=_cmd_run)

    prof = sub.add_parser("profile", help="run a saved graph and write its profile",
                          description="Run a saved graph under the profiler and write a Chrome "
                          "trace, a Gantt chart and a summary to a folder.")
    _graph_args(prof)
    prof.add_argument("--out", default="profile-out", help="output folder (default: %(default)s)")
    prof.add_argument("--repeat", type=_non_negative_int, default=2,
                      help="runs before the profiled one, to warm the cost model "
                      "(default: %(default)s)")
    prof.set_defaults(func=_cmd_profile)

    show = sub.add_parser("show", help="describe a saved graph",
                          description="Print a node/op summary of a saved graph, or its DOT text, "
                          "or draw it as SVG/PNG.")
    show.add_argument("graph", help="graph file written by dataflow.save")
    show.add_argument("--format", choices=("summary", "dot", "svg", "png"), default="summary")
    show.add_argument("--out",
                      help="output file for dot/svg/png (default: standard output for dot, "
                      "graph.svg or graph.png)")
    show.set_defaults(func=_cmd_show)

    bench = sub.add_parser("bench", help="run the benchmark suite against the anchors",
                           description="Run the benchmark suite (the anchors need the 'bench' "
                           "extra) and print one table of ratios.")
    bench.add_argument("sections", nargs="*", help="sections to run (default: all)")
    bench.set_defaults(func=_cmd_bench)

    doctor = sub.add_parser("doctor", help="report the machine's BLAS kernels and known "
                            "slowdowns", description="Report the BLAS library, the kernel "
                            "architecture it runs and its threads, the CPU's vector "
                            "extensions, the cores and the variables steering them; flag "
                            "known slowdowns (an older kernel forced by a variable, measured "
                            "by a quick probe in a subprocess; oversubscription). It changes "
                            "nothing.")
    doctor.add_argument("--no-probe", action="store_true",
                        help="skip the matmul probe (no subprocesses, no measured gain)")
    doctor.set_defaults(func=_cmd_doctor)
    return parser


def _executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", default="threads", choices=EXECUTORS)
    p.add_argument("--workers", type=_positive_int, default=None)


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _graph_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("graph", help="graph file written by dataflow.save")
    p.add_argument("--feed", action="append", default=[], metavar="NAME=FILE.npy",
                   help="value of placeholder NAME (repeatable)")
    p.add_argument("--fetch", action="append", default=[], metavar="KEY",
                   help="what to compute: a key the outputs were saved under, or a node "
                   "name (repeatable; default: the saved outputs, or for a saved graph "
                   "the nodes nothing consumes); the .npz stores each value under it")
    _executor_args(p)


# -- commands ------------------------------------------------------------------------------

def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, hidden=args.hidden, executor=args.executor,
             workers=args.workers, show_progress=not args.no_progress)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import scheduler

    graph, fetches, feeds = _load_request(args)
    for key in fetches:  # before the run, not after it
        _check_npz_key(key)
    with scheduler.Engine(args.executor, args.workers) as engine:
        values = engine.run(fetches, feeds)
    out = Path(args.out)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")  # what np.savez would write
    write_npz(out, values)
    for key, value in values.items():
        print(f"{key}: shape {np.shape(value)} dtype {np.asarray(value).dtype}")
    print(f"wrote {out}")
    return 0


def write_npz(path: str | Path, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` to an ``.npz`` file that ``np.load`` reads back under the same
    keys, whatever they are. (``np.savez(path, **arrays)`` takes the keys as keyword
    arguments: a key ``file`` or ``allow_pickle`` would be lost or clash.)"""
    import zipfile

    for key in arrays:
        _check_npz_key(key)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            with archive.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def _check_npz_key(key: str) -> None:
    # A zip member name ends at a NUL: "a\0b" would be stored as "a" (and could
    # overwrite another key).
    if "\0" in key:
        raise UsageError(f"cannot store {key!r} in an .npz file: the name holds a NUL "
                         "character; fetch it under a key of a saved dict instead")


def _cmd_profile(args: argparse.Namespace) -> int:
    import scheduler

    graph, fetches, feeds = _load_request(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prof = scheduler.Profiler()
    with scheduler.Engine(args.executor, args.workers) as engine:
        for _ in range(max(args.repeat, 0)):
            engine.run(fetches, feeds)
        engine.run(fetches, feeds, callbacks=[prof])
    prof.to_chrome_trace(out / "trace.json")
    summary = prof.summary()
    (out / "summary.txt").write_text(summary)
    written = [out / "trace.json", out / "summary.txt"]
    try:
        prof.plot_gantt(out / "gantt.png")
        written.insert(1, out / "gantt.png")
    except ImportError:
        print("no Gantt chart: it needs matplotlib "
              "(pip install 'dataflow-graph-engine[profile]')",
              file=sys.stderr)
    print(summary)
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    graph = _load_graph(args.graph)
    if args.format == "summary":
        print(graph_summary(graph))
    elif args.format == "dot":
        text = graph.to_dot()
        if args.out:
            Path(args.out).write_text(text)
            print(f"wrote {args.out}")
        else:
            print(text, end="")
    else:
        out = args.out or f"graph.{args.format}"
        if os.path.splitext(out)[1].lower() != f".{args.format}":
            raise UsageError(f"--out {out} does not end in .{args.format}")
        try:
            # graphviz's layout when the dot program is installed, else the layered one
            graph.visualize(out)
        except ImportError as exc:
            raise UsageError(f"drawing a graph needs graphviz or matplotlib ({exc}): "
                             "pip install 'dataflow-graph-engine[viz]'") from None
        print(f"wrote {out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.__main__ import main as bench_main
    from .bench.suite import SECTIONS

    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        raise UsageError(f"unknown benchmark section(s) {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(SECTIONS)}")
    return bench_main(list(args.sections))


def _cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import main as doctor_main

    return doctor_main(probe=not args.no_probe)


# -- helpers ----------------------------------------------------------------------------

def _load_graph(path: str) -> Any:
    return _load_outputs(path)[0]


def _load_outputs(path: str) -> tuple[Any, dict[str, Any]]:
    """The graph in the file, and the outputs it was saved with, by key: the keys of a
    saved dict, else the nodes' names (none for a whole saved graph)."""
    from .errors import LoadError
    from .graph import Graph, Node
    from .serialization import load

    try:
        loaded = load(path)
    except LoadError as exc:
        raise UsageError(f"cannot load graph file {path}: {exc}") from None
    if isinstance(loaded, Graph):
        return loaded, {}
    if isinstance(loaded, dict):
        outputs = dict(loaded)
    else:
        nodes = [loaded] if isinstance(loaded, Node) else list(loaded)
        outputs = {node.name: node for node in nodes}
    if not outputs:
        raise UsageError(f"{path}: the file holds no nodes")
    return next(iter(outputs.values())).graph, outputs


def _load_request(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict]:
    """The graph, the fetches by output key, and the feeds of a run or profile command.
    ``--fetch KEY`` is a key the outputs were saved under (``df.save({"loss": ...})``),
    else a node name; without ``--fetch``, the saved outputs (for a whole graph, the
    nodes nothing consumes)."""
    graph, outputs = _load_outputs(args.graph)
    feeds = {}
    for item in args.feed:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--feed expects NAME=FILE.npy, got {item!r}")
        node = _node_named(graph, name)
        if node in feeds:
            raise UsageError(f"--feed {name} given more than once")
        feeds[node] = read_npy_feed(name, file)
    if args.fetch:
        fetches: dict[str, Any] = {}
        for key in args.fetch:
            if key in fetches:
                raise UsageError(f"--fetch {key} given more than once")
            fetches[key] = outputs[key] if key in outputs else _node_named(graph, key)
    elif outputs:
        fetches = outputs
    else:
        fetches = {n.name: n for n in graph.nodes if not graph.consumers(n)}
    return graph, fetches, feeds


def read_npy_feed(name: str, file: str) -> np.ndarray:
    """The array in the ``.npy`` file ``file``, fed to placeholder ``name``. Only a
    regular file is read (a FIFO or a device would block or never end), and a header
    whose shape needs more bytes than the file holds is refused before any memory is
    allocated for it."""
    import stat

    where = f"cannot read feed {name!r} from {file!r}"
    try:
        # O_NONBLOCK: opening a FIFO must not hang; the fstat below then refuses it.
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise UsageError(f"{where}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        size = info.st_size
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{where}: not a regular file")
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            needed = math.prod(int(d) for d in shape) * dtype.itemsize
            held = size - f.tell()
            if dtype.hasobject:
                raise UsageError(f"{where}: the array holds Python objects; feeds must be "
                                 "numeric")
            if needed > held:
                raise UsageError(f"{where}: its header says shape {tuple(shape)} dtype "
                                 f"{dtype} ({needed} bytes), but the file holds {held} bytes")
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        except UsageError:
            raise
        except (OSError, ValueError, TypeError, MemoryError, EOFError) as exc:
            raise UsageError(f"{where}: {exc}") from None


def _node_named(graph: Any, name: str) -> Any:
    from .errors import GraphError

    try:
        return graph.node_by_name(name)
    except GraphError:
        raise UsageError(f"the graph has no node named {name!r}") from None


def graph_summary(graph: Any) -> str:
    from collections import Counter

    from .shapes import fmt

    nodes = graph.nodes
    ops = Counter(n.op.name for n in nodes)
    lines = [f"graph {graph.name!r}: {len(nodes)} nodes, "
             f"{sum(len(n.inputs) for n in nodes)} edges"]
    placeholders = [n for n in nodes if n.op.name == "placeholder"]
    outputs = [n for n in nodes if not graph.consumers(n)]
    lines.append("placeholders: " + (", ".join(f"{n.name} {fmt(n.shape)} {n.dtype}"
                                               for n in placeholders) or "none"))
    lines.append("outputs: " + ", ".join(f"{n.name} {fmt(n.shape)} {n.dtype}" for n in outputs[:20])
                 + (f" and {len(outputs) - 20} more" if len(outputs) > 20 else ""))
    lines.append("ops:")
    width = max((len(k) for k in ops), default=0)
    for op, count in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {op.ljust(width)}  {count}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
