"""Safe graph files: ``save`` writes nodes as versioned JSON, ``load`` rebuilds them.

Trust model
-----------
A graph file is *data*. Loading one can only build ops that this package ships
(``Op.builtin`` is true for them) through the same public machinery a user would call
(``placeholder``, ``constant``, ``apply(op_cls(**attrs), *inputs)``), so every shape
and dtype rule runs again on the file's contents. File content never causes an
import, a call to anything outside the op registry, or access to any file other than
the one being read; there is no pickle anywhere. Custom ops (``df.custom_op`` or an
``Op`` subclass of your own) are *code*: ``save`` refuses a graph that uses one,
naming the op, and ``load`` never builds one, even if an op of that name is
registered in the loading process. To ship a model with custom ops, ship the code
that defines them and save only the built-in part, or rebuild the graph in code.

Anything unexpected is refused with :class:`~dataflow.errors.LoadError` saying why:
a file that is not UTF-8 JSON, the wrong format name or an unknown version, unknown
or non-built-in ops, missing, extra or ill-typed fields, dangling, duplicate or
forward input ids (a forward reference is how a cycle would have to be written),
object, void, string or structured dtypes, negative or absurd shapes (more than
``MAX_DIMS`` dims or ``MAX_ELEMENTS`` elements), attr tuples longer than
``MAX_TUPLE_LEN``, array payloads whose size does not match their dtype and shape,
nesting deeper than ``MAX_JSON_DEPTH`` (checked by an iterative scan *before*
``json.loads`` runs, since ``json.loads`` recurses), files larger than ``max_bytes``
(checked with ``os.fstat`` before reading; only regular files are read), attrs that
an op's constructor or shape rule rejects, and rebuilt nodes whose shape or dtype
differ from the ones the file recorded.

Format (version 1)
------------------
One JSON object with exactly these fields::

    {"format": "dataflow.graph", "version": 1, "graph": "<graph name>",
     "nodes": [
       {"id": 0, "name": "x", "op": "placeholder", "inputs": [],
        "attrs": {"shape": ["tuple", [["none", null], ["int", 3]]],
                  "dtype": ["dtype", "<f8"]},
        "shape": [null, 3], "dtype": "<f8"},
       ...],
     "outputs": {"kind": "graph"}}

``nodes`` lists nodes in topological (creation) order; a node's ``inputs`` are ids of
nodes listed *before* it. ``shape`` and ``dtype`` are what the node had when saved
(``null`` is an unknown dim); ``load`` checks the rebuilt node against them. Node
names are preserved. ``outputs`` says what ``load`` returns:

- ``{"kind": "graph"}``: the whole (new) :class:`Graph`;
- ``{"kind": "node", "id": i}``: one node;
- ``{"kind": "list" | "tuple", "ids": [...]}``: a list or tuple of nodes;
- ``{"kind": "dict", "items": [[key, id], ...]}``: a dict of string keys to nodes.

Each attr value is a tagged pair ``[tag, payload]``:

==========  ===============================================================
tag         payload
==========  ===============================================================
``none``    ``null``
``bool``    ``true`` / ``false``
``int``     a JSON integer (at most 64 bits)
``float``   ``float.hex()`` text, exact and able to hold ``inf``/``nan``
``str``     a JSON string
``tuple``   a list of at most ``MAX_TUPLE_LEN`` tagged values (lists in attrs are
            saved as tuples)
``slice``   ``[start, stop, step]``, each an integer or ``null``
``dtype``   a dtype string such as ``"<f4"`` (see below)
``ndarray`` ``{"dtype": ..., "shape": [...], "data": base64}``
==========  ===============================================================

Dtypes are written little-endian (``"|b1"``, ``"<i8"``, ``"<f4"``, ``"<c16"``...) and
read back only from a fixed table of bool, integer, float and complex types, never
parsed by numpy. Array data is the raw little-endian bytes in C order, base64-encoded;
bools must be stored as bytes 0 and 1. Attr values nest at most ``MAX_ATTR_DEPTH``
levels; encoding and decoding are depth-bounded.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import reprlib
import stat
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import GraphError, LoadError
from .graph import Graph, Node, ancestors
from .op import REGISTRY, Op, apply
from .ops.core import constant, placeholder

__all__ = [
    "DEFAULT_MAX_BYTES", "FORMAT_NAME", "FORMAT_VERSION", "MAX_ATTR_DEPTH", "MAX_DIMS",
    "MAX_ELEMENTS", "MAX_JSON_DEPTH", "MAX_TUPLE_LEN", "load", "save",
]

FORMAT_NAME = "dataflow.graph"
FORMAT_VERSION = 1
#: Files larger than this are refused unless ``load(..., max_bytes=...)`` says otherwise.
DEFAULT_MAX_BYTES = 1 << 30
#: Deepest ``[``/``{`` nesting a file may have (the format itself needs about 10).
MAX_JSON_DEPTH = 64
#: Deepest nesting of tagged attr values (a tuple inside a tuple counts 2).
MAX_ATTR_DEPTH = 16
#: Most dims a shape may have (numpy's own limit is 32 or 64).
MAX_DIMS = 32
#: Most items an attr tuple may hold (axes, shapes, indices need at most 2 * MAX_DIMS).
MAX_TUPLE_LEN = 2 * MAX_DIMS
#: Most elements a shape may describe (product of its known dims, zeros counted as 1).
MAX_ELEMENTS = 1 << 31

_NODE_FIELDS = ("id", "name", "op", "inputs", "attrs", "shape", "dtype")
_NODE_FIELD_SET = frozenset(_NODE_FIELDS)
_TOP_FIELDS = ("format", "version", "graph", "nodes", "outputs")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1

# The only dtypes a file can name: little-endian spelling -> native numpy dtype.
_DTYPES: dict[str, np.dtype] = {
    np.dtype(t).newbyteorder("<").str: np.dtype(t)
    for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
              np.uint32, np.uint64, np.float16, np.float32, np.float64, np.complex64,
              np.complex128)
}


# -- saving -----------------------------------------------------------------------------

def save(graph_or_nodes: Graph | Node | Sequence[Node] | Mapping[str, Node],
         path: str | os.PathLike[str]) -> None:
    """Write a graph, or nodes and all their ancestors, to ``path`` as JSON.

    Versioned JSON, one node per line, never pickle: the file is data.

    Parameters
    ----------
    graph_or_nodes : Graph, Node, sequence of Node or mapping of str to Node
        A :class:`Graph` (every node is saved), a node, a list or tuple of nodes, or a
        dict of string keys to nodes; :func:`load` returns the same kind of thing.
    path : str or os.PathLike
        The file to write.

    Raises
    ------
    TypeError
        For a graph that uses a custom op (custom ops are code, not data) or an attr
        value this format cannot hold.
    ValueError
        For a shape beyond the limits that :func:`load` enforces.
    GraphError
        For nodes of different graphs.
    """
    nodes, outputs, graph_name = _collect(graph_or_nodes)
    index = {node.id: i for i, node in enumerate(nodes)}
    lines = []
    for i, node in enumerate(nodes):
        record = {
            "id": i,
            "name": node.name,
            "op": _saved_op_name(node),
            "inputs": [index[p.id] for p in node.inputs],
            "attrs": {k: _encode_attr(node, k, v) for k, v in node.op.attrs().items()},
            "shape": _saved_shape(node.shape, f"node {node.name!r}"),
            "dtype": _dtype_str(node.dtype, f"node {node.name!r}"),
        }
        lines.append(json.dumps(record, separators=(",", ":"), allow_nan=False))
    head = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "graph": graph_name},
                      allow_nan=False)
    tail = json.dumps(_encode_outputs(outputs, index), allow_nan=False)
    # One node per line keeps files readable and diffable.
    text = (head[:-1] + ', "nodes": [\n' + ",\n".join(lines) + '\n], "outputs": '
            + tail + "}\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _collect(obj: Any) -> tuple[list[Node], tuple[str, Any], str]:
    """(nodes to save in id order, ('graph'|'node'|'list'|'tuple'|'dict', outputs), name)."""
    if isinstance(obj, Graph):
        return list(obj.nodes), ("graph", None), obj.name
    if isinstance(obj, Node):
        kind, roots = "node", [obj]
    elif isinstance(obj, (list, tuple)):
        kind, roots = ("list" if isinstance(obj, list) else "tuple"), list(obj)
    elif isinstance(obj, Mapping):
        for key in obj:
            if not isinstance(key, str):
                raise TypeError(f"save: dict keys must be strings, got {key!r}")
        kind, roots = "dict", list(obj.values())
    else:
        raise TypeError("save: expected a Graph, a Node, a list/tuple of nodes or a dict of "
                        f"nodes, got {type(obj).__name__}")
    graph: Graph | None = None
    for node in roots:
        if not isinstance(node, Node):
            raise TypeError(f"save: expected nodes, got {type(node).__name__}")
        if graph is None:
            graph = node.graph
        elif node.graph is not graph:
            raise GraphError(f"save: nodes come from different graphs ({graph.name!r} and "
                             f"{node.graph.name!r})")
    nodes = ancestors(roots)
    outputs: Any = roots[0] if kind == "node" else (dict(obj) if kind == "dict" else roots)
    return nodes, (kind, outputs), graph.name if graph is not None else "graph"


def _encode_outputs(outputs: tuple[str, Any], index: dict[int, int]) -> dict[str, Any]:
    kind, value = outputs
    if kind == "graph":
        return {"kind": "graph"}
    if kind == "node":
        return {"kind": "node", "id": index[value.id]}
    if kind == "dict":
        return {"kind": "dict", "items": [[k, index[n.id]] for k, n in value.items()]}
    return {"kind": kind, "ids": [index[n.id] for n in value]}


def _saved_op_name(node: Node) -> str:
    op = node.op
    cls = type(op)
    if not cls.builtin:
        raise TypeError(
            f"cannot save node {node.name!r}: op {op.name!r} is a custom op; custom ops are "
            "code and graph files hold only built-in ops (rebuild this part in code)")
    if REGISTRY.get(op.name) is not cls:
        raise TypeError(f"cannot save node {node.name!r}: op {op.name!r} is not the "
                        "registered op of that name")
    return op.name


def _dtype_str(dtype: Any, where: str) -> str:
    dt = np.dtype(dtype)
    text = dt.newbyteorder("<").str if dt.kind in "biufc" else None
    if text not in _DTYPES:
        raise TypeError(f"cannot save {where}: dtype {dt} is not a bool, integer, float or "
                        "complex type that graph files can hold")
    return text


def _saved_shape(shape: tuple, where: str) -> list:
    """``shape`` as JSON, refused here if ``load`` would refuse it as absurd."""
    dims = [None if d is None else int(d) for d in shape]
    size = 1
    for d in dims:
        size *= 1 if d is None else max(d, 1)
    if len(dims) > MAX_DIMS or size > MAX_ELEMENTS:
        raise ValueError(f"cannot save {where}: shape {dims} is beyond what graph files hold "
                         f"({MAX_DIMS} dims, {MAX_ELEMENTS} elements)")
    return dims


def _encode_array(array: np.ndarray, where: str) -> dict[str, Any]:
    dtype = _dtype_str(array.dtype, where)
    shape = _saved_shape(array.shape, where)
    data = np.ascontiguousarray(array).astype(np.dtype(dtype), copy=False).tobytes()
    return {"dtype": dtype, "shape": shape,
            "data": base64.b64encode(data).decode("ascii")}


def _encode_attr(node: Node, attr: str, value: Any) -> list:
    where = f"attr {attr!r} of node {node.name!r} (op {node.op.name})"
    return _encode_value(value, where, 0)


def _encode_value(value: Any, where: str, depth: int) -> list:
    if depth > MAX_ATTR_DEPTH:
        raise TypeError(f"cannot save {where}: nested deeper than {MAX_ATTR_DEPTH} levels")
    if value is None:
        return ["none", None]
    if isinstance(value, (bool, np.bool_)):
        return ["bool", bool(value)]
    if isinstance(value, (int, np.integer)):
        number = int(value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise TypeError(f"cannot save {where}: integer {number} does not fit in 64 bits")
        return ["int", number]
    if isinstance(value, (float, np.float16, np.float32, np.float64)):
        return ["float", float(value).hex()]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, (tuple, list)):
        if len(value) > MAX_TUPLE_LEN:
            raise TypeError(f"cannot save {where}: a tuple of {len(value)} items, more than "
                            f"{MAX_TUPLE_LEN}")
        return ["tuple", [_encode_value(v, where, depth + 1) for v in value]]
    if isinstance(value, slice):
        parts = []
        for part in (value.start, value.stop, value.step):
            if part is not None and not (isinstance(part, (int, np.integer))
                                         and not isinstance(part, bool)):
                raise TypeError(f"cannot save {where}: slice bounds must be ints or None, "
                                f"got {part!r}")
            parts.append(None if part is None else int(part))
        return ["slice", parts]
    if isinstance(value, np.dtype):
        return ["dtype", _dtype_str(value, where)]
    if isinstance(value, np.ndarray):
        return ["ndarray", _encode_array(value, where)]
    raise TypeError(f"cannot save {where}: values of type {type(value).__name__} are not "
                    "supported by graph files")


# -- loading ----------------------------------------------------------------------------

def load(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """Read a file written by :func:`save` into a new graph.

    Loading builds only built-in ops from the registry and imports nothing: a graph
    file cannot run code. See the module docstring for the checks.

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.
    max_bytes : int, default 1 GiB
        The largest file accepted.

    Returns
    -------
    Graph, Node, list, tuple or dict of Node
        What was saved, in a new graph, with names preserved.

    Raises
    ------
    LoadError
        If the file is not a valid graph file, saying why.
    OSError
        If ``path`` cannot be opened or read (a missing file, no permission).
    """
    data = _read_bounded(path, max_bytes)
    document = _parse_json(data)
    return _build(document)


def _read_bounded(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO must not hang; the fstat below then refuses it.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LoadError(f"{os.fspath(path)!r} is not a regular file")
        if info.st_size > max_bytes:
            raise LoadError(f"file is {info.st_size} bytes, over the limit of {max_bytes} "
                            "(pass max_bytes= to load a larger file)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)  # the file may have grown since fstat
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise LoadError(f"file is over the limit of {max_bytes} bytes")
    return data


# A JSON string (removed before counting, so that brackets inside strings do not
# count), and runs of brackets. The unrolled pattern cannot backtrack, and its closing
# quote is optional: an unterminated string matches up to the end of the text instead
# of failing, so the scan never retries from each quote inside it and stays linear in
# the file's size (json.loads then reports the unterminated string).
_STRING_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_BRACKETS_RE = re.compile(r"[\[\]{}]+")
_SCAN_CHUNK = 1 << 20


def _check_nesting(text: str) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH, iteratively, before json.loads (which
    recurses once per level and would raise RecursionError on 100,000 brackets)."""
    brackets = "".join(_BRACKETS_RE.findall(_STRING_RE.sub("", text))).encode("ascii")
    depth = 0
    # The running depth is a cumulative sum of +1/-1 steps, taken a chunk at a time.
    for start in range(0, len(brackets), _SCAN_CHUNK):
        codes = np.frombuffer(brackets, np.uint8, offset=start,
                              count=min(_SCAN_CHUNK, len(brackets) - start))
        steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1)
        running = np.cumsum(steps) + depth
        if int(running.max()) > MAX_JSON_DEPTH:
            raise LoadError(f"JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        depth = int(running[-1])


def _no_constant(name: str) -> Any:
    raise LoadError(f"not valid JSON: {name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 20:
        raise LoadError(f"integer {text[:30]}... is too large")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise LoadError(f"duplicate key {duplicate[:80]!r} in a JSON object")
    return result


def _parse_json(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LoadError(f"not a graph file: not UTF-8 text ({exc})") from None
    _check_nesting(text)
    try:
        return json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int,
                          object_pairs_hook=_unique_keys)
    except LoadError:
        raise
    except (ValueError, RecursionError) as exc:
        raise LoadError(f"not a graph file: not valid JSON ({exc})") from None


def _fields(obj: Any, expected: Sequence[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise LoadError(f"{where} must be a JSON object, got {_json_type(obj)}")
    missing = [k for k in expected if k not in obj]
    extra = [k for k in obj if k not in expected]
    if missing:
        raise LoadError(f"{where} is missing field(s) {', '.join(map(repr, missing))}")
    if extra:
        raise LoadError(f"{where} has unexpected field(s) {', '.join(map(_short, extra[:5]))}")
    return obj


def _short(value: Any) -> str:
    """``repr`` of a value from a file, cut short for error messages."""
    return reprlib.repr(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect_int(value: Any, where: str) -> int:
    if not _is_int(value):
        raise LoadError(f"{where} must be an integer, got {_json_type(value)}")
    return value


def _expect_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise LoadError(f"{where} must be a string, got {_json_type(value)}")
    return value


def _expect_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise LoadError(f"{where} must be a list, got {_json_type(value)}")
    return value


def _check_header(document: Any) -> None:
    if not isinstance(document, dict):
        raise LoadError(f"not a graph file: the top level is {_json_type(document)}, "
                        "not an object")
    if document.get("format") != FORMAT_NAME:
        raise LoadError(f"not a graph file: format is {_short(document.get('format'))}, "
                        f"expected {FORMAT_NAME!r}")
    version = document.get("version")
    if not _is_int(version) or version != FORMAT_VERSION:
        raise LoadError(f"unsupported version {_short(version)} of {FORMAT_NAME!r} "
                        f"(this reader knows version {FORMAT_VERSION})")
    _fields(document, _TOP_FIELDS, "the top level")


def _decode_dtype(value: Any, where: str) -> np.dtype:
    text = _expect_str(value, where)
    dtype = _DTYPES.get(text)
    if dtype is None:
        raise LoadError(f"{where}: unsupported dtype {text[:40]!r} (only bool, integer, "
                        "float and complex dtypes, little-endian, such as '<f8')")
    return dtype


def _decode_shape(value: Any, where: str, *, unknown_ok: bool) -> tuple:
    dims = _expect_list(value, where)
    if len(dims) > MAX_DIMS:
        raise LoadError(f"{where} has {len(dims)} dims, more than {MAX_DIMS}")
    size = 1
    for d in dims:
        if d is None and unknown_ok:
            continue
        if not _is_int(d):
            raise LoadError(f"{where}: dims must be integers{' or null' if unknown_ok else ''},"
                            f" got {_json_type(d)}")
        if d < 0:
            raise LoadError(f"{where}: negative dim {d}")
        size *= max(d, 1)
        if size > MAX_ELEMENTS:
            raise LoadError(f"{where}: absurd shape, more than {MAX_ELEMENTS} elements")
    return tuple(dims)


def _decode_array(value: Any, where: str) -> np.ndarray:
    fields = _fields(value, ("dtype", "shape", "data"), f"{where} (ndarray)")
    dtype = _decode_dtype(fields["dtype"], f"{where} (ndarray dtype)")
    shape = _decode_shape(fields["shape"], f"{where} (ndarray shape)", unknown_ok=False)
    text = _expect_str(fields["data"], f"{where} (ndarray data)")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(text) != 4 * ((nbytes + 2) // 3):
        raise LoadError(f"{where}: payload of {len(text)} base64 characters does not match "
                        f"dtype {fields['dtype']} and shape {list(shape)} ({nbytes} bytes)")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise LoadError(f"{where}: invalid base64 payload ({exc})") from None
    if len(raw) != nbytes:
        raise LoadError(f"{where}: payload holds {len(raw)} bytes, dtype and shape need "
                        f"{nbytes}")
    little = dtype.newbyteorder("<")
    array = np.frombuffer(raw, dtype=little).reshape(shape)
    if dtype.kind == "b" and raw.translate(None, b"\x00\x01"):
        raise LoadError(f"{where}: bool payload holds bytes other than 0 and 1")
    return array.astype(dtype)  # native byte order, a fresh writable copy


def _decode_value(value: Any, where: str, depth: int = 0) -> Any:
    """A tagged attr value; depth-bounded recursion (at most MAX_ATTR_DEPTH levels)."""
    if depth > MAX_ATTR_DEPTH:
        raise LoadError(f"{where}: attr values nested deeper than {MAX_ATTR_DEPTH} levels")
    if not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str):
        raise LoadError(f"{where}: an attr value must be a [tag, payload] pair")
    tag, payload = value
    if tag == "none":
        if payload is not None:
            raise LoadError(f"{where}: 'none' takes a null payload")
        return None
    if tag == "bool":
        if not isinstance(payload, bool):
            raise LoadError(f"{where}: 'bool' takes true or false, got {_json_type(payload)}")
        return payload
    if tag == "int":
        number = _expect_int(payload, f"{where} ('int')")
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise LoadError(f"{where}: integer {number} does not fit in 64 bits")
        return number
    if tag == "float":
        text = _expect_str(payload, f"{where} ('float')")
        if len(text) > 40:
            raise LoadError(f"{where}: 'float' payload is too long")
        try:
            return float.fromhex(text)
        except (ValueError, OverflowError):
            raise LoadError(f"{where}: {text!r} is not a hexadecimal float") from None
    if tag == "str":
        return _expect_str(payload, f"{where} ('str')")
    if tag == "tuple":
        items = _expect_list(payload, f"{where} ('tuple')")
        if len(items) > MAX_TUPLE_LEN:
            # Axes, shapes and indices need at most 2 * MAX_DIMS items; longer tuples
            # would only feed shape rules that are quadratic in their length.
            raise LoadError(f"{where}: tuple of {len(items)} items, more than "
                            f"{MAX_TUPLE_LEN}")
        return tuple(_decode_value(v, where, depth + 1) for v in items)
    if tag == "slice":
        parts = _expect_list(payload, f"{where} ('slice')")
        if len(parts) != 3 or not all(p is None or _is_int(p) for p in parts):
            raise LoadError(f"{where}: 'slice' takes [start, stop, step] of integers or null")
        if not all(p is None or _INT64_MIN <= p <= _INT64_MAX for p in parts):
            raise LoadError(f"{where}: slice bound does not fit in 64 bits")
        return slice(*parts)
    if tag == "dtype":
        return _decode_dtype(payload, f"{where} ('dtype')")
    if tag == "ndarray":
        return _decode_array(payload, where)
    raise LoadError(f"{where}: unknown attr tag {tag[:40]!r}")


def _lookup_op(name: Any, where: str) -> type[Op]:
    name = _expect_str(name, f"{where} op")
    cls = REGISTRY.get(name)
    if cls is None:
        raise LoadError(f"{where}: unknown op {name[:80]!r}")
    if not cls.builtin:
        raise LoadError(f"{where}: op {name!r} is not a built-in op; custom ops are code "
                        "and are never loaded from graph files")
    return cls


def _build(document: Any) -> Any:
    _check_header(document)
    graph_name = _expect_str(document["graph"], "field 'graph'")
    records = _expect_list(document["nodes"], "field 'nodes'")
    # Every id first, so that a dangling id and a forward reference read differently.
    all_ids: set[int] = set()
    for position, record in enumerate(records):
        if type(record) is not dict or record.keys() != _NODE_FIELD_SET:
            _fields(record, _NODE_FIELDS, f"node #{position}")
        node_id = record["id"]
        if type(node_id) is not int:
            _expect_int(node_id, f"node #{position} id")
        if node_id in all_ids:
            raise LoadError(f"node #{position}: duplicate node id {node_id}")
        all_ids.add(node_id)

    graph = Graph(graph_name)
    built: dict[int, Node] = {}
    with graph:  # an op with no inputs joins the new graph, never another
        for position, record in enumerate(records):
            name = record["name"]
            if type(name) is not str:
                _expect_str(name, f"node #{position} name")
            node = _build_node(record, name, position, graph, all_ids, built)
            built[record["id"]] = node
    return _decode_outputs(document["outputs"], graph, built)


def _build_node(record: dict[str, Any], name: str, position: int, graph: Graph,
                all_ids: set[int], built: dict[int, Node]) -> Node:
    where = f"node {name[:80]!r} (#{position})"
    cls = _lookup_op(record["op"], where)
    inputs = []
    for parent in _expect_list(record["inputs"], f"{where} inputs"):
        node = built.get(parent) if type(parent) is int else None
        if node is None:
            parent = _expect_int(parent, f"{where} input id")
            if parent not in all_ids:
                raise LoadError(f"{where}: dangling input id {parent}")
            raise LoadError(f"{where}: input id {parent} is not defined before its use "
                            "(a forward reference or a cycle)")
        inputs.append(node)
    attrs_json = record["attrs"]
    if not isinstance(attrs_json, dict):
        raise LoadError(f"{where}: attrs must be an object, got {_json_type(attrs_json)}")
    if len(attrs_json) != len(cls.attr_names) or any(a not in attrs_json
                                                     for a in cls.attr_names):
        missing = [a for a in cls.attr_names if a not in attrs_json]
        extra = [a for a in attrs_json if a not in cls.attr_names]
        raise LoadError(f"{where}: op {cls.name} takes attrs {list(cls.attr_names)}, "
                        f"missing {missing}, unexpected {extra[:5]}")
    attrs = {a: _decode_value(attrs_json[a], f"{where} attr {a!r}") for a in cls.attr_names}
    if "dtype" in attrs and not isinstance(attrs["dtype"], np.dtype):
        # Ops hand this attr to np.dtype(); never let numpy parse text from a file.
        raise LoadError(f"{where}: attr 'dtype' must be a 'dtype' value")
    shape = _decode_shape(record["shape"], f"{where} shape", unknown_ok=True)
    dtype = _decode_dtype(record["dtype"], f"{where} dtype")
    node = _rebuild(cls, attrs, inputs, name, graph, where)
    if not _same_shape(node.shape, shape) or node.dtype != dtype:
        raise LoadError(
            f"{where}: rebuilt as shape {_short(list(node.shape))} dtype {node.dtype.str}, but "
            f"the file says shape {list(shape)} dtype {dtype.str}")
    return node


def _same_shape(rebuilt: tuple, saved: tuple) -> bool:
    """Whether a shape rule's result equals the file's shape. The rule ran on file data,
    so its dims are checked to be ints or None before they are compared."""
    if len(rebuilt) != len(saved):
        return False
    for a, b in zip(rebuilt, saved):
        if a is None or b is None:
            if a is not b:
                return False
        elif (not isinstance(a, (int, np.integer)) or isinstance(a, (bool, np.bool_))
              or int(a) != b):
            return False
    return True


def _rebuild(cls: type[Op], attrs: dict[str, Any], inputs: list[Node], name: str,
             graph: Graph, where: str) -> Node:
    """Build one node through the public op machinery, which re-runs every check."""
    if cls.name in ("constant", "placeholder") and inputs:
        raise LoadError(f"{where}: op {cls.name} takes no inputs, got {len(inputs)}")
    try:
        if cls.name == "constant":
            return constant(attrs["value"], name, graph=graph)
        if cls.name == "placeholder":
            return placeholder(name, attrs["shape"], attrs["dtype"], graph=graph)
        return apply(cls(**attrs), *inputs, name=name)
    except LoadError:
        raise
    except Exception as exc:  # any refusal by a constructor or shape rule: bad data
        raise LoadError(f"{where}: op {cls.name} refused its attrs or inputs: "
                        f"{type(exc).__name__}: {exc}") from exc


def _node_ref(value: Any, built: dict[int, Node], where: str) -> Node:
    node_id = _expect_int(value, where)
    node = built.get(node_id)
    if node is None:
        raise LoadError(f"{where}: dangling node id {node_id}")
    return node


def _decode_outputs(outputs: Any, graph: Graph, built: dict[int, Node]) -> Any:
    if not isinstance(outputs, dict):
        raise LoadError(f"field 'outputs' must be an object, got {_json_type(outputs)}")
    kind = outputs.get("kind")
    if kind == "graph":
        _fields(outputs, ("kind",), "field 'outputs'")
        return graph
    if kind == "node":
        _fields(outputs, ("kind", "id"), "field 'outputs'")
        return _node_ref(outputs["id"], built, "outputs id")
    if kind in ("list", "tuple"):
        _fields(outputs, ("kind", "ids"), "field 'outputs'")
        ids = _expect_list(outputs["ids"], "outputs ids")
        nodes = [_node_ref(i, built, "outputs ids") for i in ids]
        return nodes if kind == "list" else tuple(nodes)
    if kind == "dict":
        _fields(outputs, ("kind", "items"), "field 'outputs'")
        result: dict[str, Node] = {}
        for item in _expect_list(outputs["items"], "outputs items"):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise LoadError("outputs items must be [key, id] pairs with string keys")
            if item[0] in result:
                raise LoadError(f"outputs items: duplicate key {item[0][:80]!r}")
            result[item[0]] = _node_ref(item[1], built, "outputs items")
        return result
    raise LoadError(f"outputs kind must be 'graph', 'node', 'list', 'tuple' or 'dict', "
                    f"got {str(kind)[:40]!r}")
