"""The op library. Every public function here builds nodes; see ``dataflow.op`` for
how an op is defined and how to write your own."""

from .core import (
    Constant,
    Placeholder,
    add_n,
    cast,
    const_value,
    constant,
    full_like,
    ones_like,
    placeholder,
    stop_gradient,
    zeros_like,
)
from .elementwise import (
    abs,
    add,
    cos,
    divide,
    equal,
    exp,
    greater,
    greater_equal,
    less,
    less_equal,
    log,
    maximum,
    minimum,
    multiply,
    negative,
    not_equal,
    power,
    sign,
    sin,
    sqrt,
    square,
    subtract,
    tanh,
    where,
)
from .linalg import matmul
from .nn import log_softmax, logsumexp, one_hot, relu, sigmoid, softmax, softmax_cross_entropy
from .reductions import max, mean, min, sum
from .shape_ops import (
    broadcast_as,
    broadcast_to,
    concatenate,
    expand_dims,
    getitem,
    reshape,
    reshape_as,
    stack,
    sum_to,
    swapaxes,
    transpose,
)

__all__ = [
    "Constant", "Placeholder", "abs", "add", "add_n", "broadcast_as", "broadcast_to", "cast",
    "concatenate", "const_value", "constant", "cos", "divide", "equal", "exp", "expand_dims",
    "full_like", "getitem", "greater", "greater_equal", "less", "less_equal", "log",
    "log_softmax", "logsumexp", "matmul", "max", "maximum", "mean", "min", "minimum",
    "multiply", "negative", "not_equal", "one_hot", "ones_like", "placeholder", "power",
    "relu", "reshape", "reshape_as", "sigmoid", "sign", "sin", "softmax",
    "softmax_cross_entropy", "sqrt", "square", "stack", "stop_gradient", "subtract", "sum",
    "sum_to", "swapaxes", "tanh", "transpose", "where", "zeros_like",
]
