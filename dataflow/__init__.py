"""dataflow: build a static graph of numpy ops, add its gradients as more nodes of the
same graph (symbol-to-symbol back-propagation), and run it with ``scheduler``::

    import dataflow as df, scheduler
    with df.Graph():
        x = df.placeholder("x", (None, 3))
        w = df.constant(np.ones((3, 2)))
        loss = df.sum(df.tanh(x @ w))
        (gw,) = df.gradients(loss, [w])
    print(scheduler.run([loss, gw], {x: np.ones((4, 3))}))
"""

from . import (
    lowering,  # noqa: F401 - loaded with the package, not inside a first run's timing
    models,
)
from .checking import check_grads
from .checkpointing import after
from .errors import (
    DataflowError,
    GradientError,
    GraphError,
    LoadError,
    ShapeError,
    UnknownNameError,
)
from .gradients import grad, gradients, hessian_vector_product, jacobian
from .graph import (
    Graph,
    Node,
    get_consumers,
    get_default_graph,
    get_inputs,
    get_operation,
    reset_default_graph,
)
from .op import REGISTRY, Op, apply, custom_op
from .ops import *  # noqa: F403 - the op library is the package's vocabulary
from .ops import __all__ as _ops_all
from .rewrite import simplify
from .serialization import load, save

__all__ = [
    "DataflowError", "GradientError", "Graph", "GraphError", "LoadError", "Node", "Op",
    "REGISTRY", "ShapeError", "apply", "check_grads", "custom_op", "get_consumers",
    "get_default_graph", "get_inputs", "get_operation", "grad", "gradients",
    "hessian_vector_product", "jacobian", "load", "models", "reset_default_graph", "save",
    "simplify", "after", "UnknownNameError", *_ops_all,
]
