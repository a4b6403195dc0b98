"""Errors raised by the symbolic layer, each naming the op, node or file at fault."""


class DataflowError(Exception):
    """Base class of the symbolic layer's errors."""


class GraphError(DataflowError, ValueError):
    """Nodes of different graphs were mixed, or a graph was misused."""


class ShapeError(DataflowError, ValueError):
    """Static shape or dtype inference found operands that cannot go together."""


class GradientError(DataflowError, TypeError):
    """A gradient was requested through an op that has no bprop, or was ill-posed."""


class LoadError(DataflowError, ValueError):
    """A graph file was refused; the message says why."""


class UnknownNameError(GraphError, KeyError):
    """A graph has no node of the name asked for (``g["name"]``). A ``KeyError`` too, as
    a mapping's lookup raises; its message reads as written, not quoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
