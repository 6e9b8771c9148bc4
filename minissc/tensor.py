"""Reverse-mode automatic differentiation over NumPy arrays.

A `Tensor` wraps one array. Every operation is a `Function` (see `minissc.functional`):
`Function.apply` runs its `forward` on plain arrays and, when a gradient is needed,
records a `Node` (the function, its `Context` and where its inputs came from) on the output.
`Tensor.backward` sorts the recorded graph topologically, without recursion, and runs
each node's `backward` once, summing the gradients of a value used more than once.

The graph links nodes to the nodes that made their inputs (and to leaf tensors), never to
intermediate tensors: an intermediate array lives only as long as the caller holds its
tensor or a `Context` saved it for backward. (A graph of tensors would keep every layer's
output until the end of backward, e.g. a Shift-Net's widest tensor, which no backward needs.)

Semantics (the same as PyTorch's):
- only leaf tensors with ``requires_grad=True`` keep a ``.grad``; it accumulates over
  calls to ``backward`` until reset (``Module.zero_grad`` or ``t.grad = None``);
- ``backward`` frees the graph's saved arrays; a second ``backward`` through the same
  graph raises ``RuntimeError`` unless the first one passed ``retain_graph=True``;
- inside ``with no_grad():`` nothing is recorded.
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np

from minissc.kernels.norm import add_arrays

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Context manager in which operations record no graph (inference, optimiser steps)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(data, dtype=None, name="data") -> np.ndarray:
    """Return `data` as a float32/float64 array; Python numbers and lists become float32.

    Arrays keep their dtype when it is float32 or float64; any other array dtype is refused
    (a silent cast from integers hides bugs such as passing labels where images belong).
    """
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: dtype must be float32 or float64, got {dtype}")
        return np.asarray(data, dtype=dtype)
    if isinstance(data, np.ndarray) or np.isscalar(data) and isinstance(data, np.generic):
        array = np.asarray(data)
        if array.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} has dtype {array.dtype}; minissc computes in float32 or float64: "
                f"convert it first, e.g. .astype(np.float32)")
        return array
    array = np.asarray(data)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name}: cannot make a float tensor from {type(data).__name__} "
                        f"of dtype {array.dtype}")
    return array.astype(np.float32)


class Tensor:
    """An array with an optional gradient.

    >>> x = Tensor([[1.0, 2.0]], requires_grad=True)
    >>> (x * x).sum().backward()
    >>> x.grad
    array([[2., 4.]], dtype=float32)
    """

    __array_priority__ = 1000  # so that `ndarray * Tensor` calls Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        self.data: np.ndarray = as_float_array(data, dtype)
        self.requires_grad = bool(requires_grad)
        self.grad: np.ndarray | None = None
        self._node: Node | None = None  # set by Function.apply on non-leaf tensors

    # -- array-like properties -------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._node is None)

    def __len__(self):
        return len(self.data)

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> Tensor:
        return Tensor(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, prefix='Tensor(')}{grad})"

    # -- arithmetic (defined in functional.py, bound here for operator syntax) ---------------
    def __add__(self, other):
        return _functional().add(self, other)

    def __radd__(self, other):
        return _functional().add(other, self)

    def __sub__(self, other):
        return _functional().add(self, _functional().mul(other, -1.0))

    def __rsub__(self, other):
        return _functional().add(other, _functional().mul(self, -1.0))

    def __neg__(self):
        return _functional().mul(self, -1.0)

    def __mul__(self, other):
        return _functional().mul(self, other)

    def __rmul__(self, other):
        return _functional().mul(other, self)

    def sum(self):
        return _functional().sum(self)

    def mean(self):
        return _functional().mul(_functional().sum(self), 1.0 / max(self.size, 1))

    def reshape(self, *shape):
        return _functional().reshape(self, shape[0] if len(shape) == 1 else shape)

    # -- reverse mode ------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) * grad into the ``.grad`` of every leaf that requires it.

        `grad` defaults to 1 for a tensor with one element and is required otherwise.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() called on a tensor that does not require grad "
                               "(was it computed under no_grad(), or from inputs without "
                               "requires_grad=True?)")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a tensor with one "
                                   f"element; this one has shape {self.shape}: pass grad=")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"grad has shape {grad.shape}, expected {self.shape}")

        root = self if self._node is None else self._node
        grads = {id(root): grad}
        del grad  # the root's gradient is now referenced by `grads` only (see _leaf_grad)
        for vertex in _topological_order(root):  # consumers before what they consumed
            grad_out = grads.pop(id(vertex), None)
            if grad_out is None:
                continue
            if isinstance(vertex, Tensor):  # a leaf
                first = vertex.grad is None
                vertex.grad = _leaf_grad(grad_out) if first else add_arrays(vertex.grad, grad_out)
            else:
                _backward_node(vertex, grad_out, grads, retain_graph)


def _backward_node(node, grad_out, grads: dict, retain_graph: bool) -> None:
    """Run one node's backward and add its input gradients into `grads` (by id of input)."""
    if node.ctx is None:
        raise RuntimeError("backward() through a graph a second time: its saved arrays "
                           "were freed by the first backward(); pass retain_graph=True "
                           "to the first call if you need two")
    input_grads = node.function.backward(node.ctx, grad_out)
    if not isinstance(input_grads, tuple):
        input_grads = (input_grads,)
    for parent, parent_grad in zip(node.inputs, input_grads):
        if parent is None or parent_grad is None:
            continue
        key = id(parent)
        grads[key] = parent_grad if key not in grads else add_arrays(grads[key], parent_grad)
    if not retain_graph:
        node.ctx = None


# sys.getrefcount of an array referenced only by `Tensor.backward`'s grad_out: that variable,
# _leaf_grad's parameter and getrefcount's own argument.
_ONLY_BACKWARD_REFERENCES = 3


def _leaf_grad(grad: np.ndarray) -> np.ndarray:
    """The array a leaf keeps as its first .grad: `grad` itself when nothing else can reach its
    memory, else a copy. A gradient that a Function's backward has just computed is a fresh
    array that nothing else references, and copying it (as .grad once always did) cost a pass
    over the leaf's size: a 576->576 8x8 SSC layer's forward + backward with a leaf input
    took 9.1 ms with the copy and 7.6 ms without (one run each). It must be copied when it
    is a view (owndata False: it shares a base), or when anything else holds it: the caller's
    array given to backward(grad), an array a backward returned for two inputs (e.g. Add's),
    one a Context still saves (retain_graph), or a buffer a kernel keeps. Each of these adds
    a reference, which sys.getrefcount counts.
    """
    if grad.flags.owndata and sys.getrefcount(grad) <= _ONLY_BACKWARD_REFERENCES:
        return grad
    return grad.copy()


def _topological_order(root) -> list:
    """The nodes and leaf tensors of the graph below `root`, each after all its consumers.

    Iterative depth-first search (a 10,000-op chain must not hit Python's recursion limit).
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        vertex, children_done = stack.pop()
        if children_done:
            order.append(vertex)
            continue
        if id(vertex) in visited:
            continue
        visited.add(id(vertex))
        stack.append((vertex, True))
        if isinstance(vertex, Node):
            for parent in vertex.inputs:
                if parent is not None and id(parent) not in visited:
                    stack.append((parent, False))
    return order[::-1]


class Context:
    """What a `Function.forward` keeps for its `backward`: saved arrays and plain attributes."""

    def __init__(self, needs_input_grad: tuple[bool, ...]):
        self.needs_input_grad = needs_input_grad
        self.saved_arrays: tuple = ()

    def save_for_backward(self, *arrays) -> None:
        self.saved_arrays = arrays


class Node:
    """A recorded application of a `Function`: what `backward` needs to call it.

    inputs[i] is where the gradient of forward's i-th input goes: the `Node` that computed
    it, the leaf `Tensor` itself, or None when it needs no gradient.
    """

    __slots__ = ("function", "ctx", "inputs")

    def __init__(self, function, ctx, inputs):
        self.function, self.ctx, self.inputs = function, ctx, inputs


class Function:
    """An operation with a hand-written backward pass.

    Subclasses define two static methods on plain arrays:

    - ``forward(ctx, *arrays, **params) -> array``: the result; saves what backward needs
      with ``ctx.save_for_backward(...)`` (or plain attributes such as ``ctx.stride``);
    - ``backward(ctx, grad_out) -> gradient or tuple of gradients``: one per positional
      input of ``forward``, ``None`` where no gradient is needed
      (``ctx.needs_input_grad[i]`` says which).

    ``apply(*inputs, **params)`` takes tensors (or arrays, or ``None`` for optional inputs)
    and returns a tensor wired into the graph.
    """

    @classmethod
    def apply(cls, *inputs, **params) -> Tensor:
        tensors = tuple(None if t is None else t if isinstance(t, Tensor) else Tensor(t)
                        for t in inputs)
        needs = tuple(t is not None and t.requires_grad for t in tensors)
        record = _grad_enabled and any(needs)
        ctx = Context(needs)
        out = cls.forward(ctx, *(None if t is None else t.data for t in tensors), **params)
        result = Tensor(out, requires_grad=record)
        if record:
            result._node = Node(cls, ctx, tuple(_gradient_target(t) for t in tensors))
        return result


def _gradient_target(tensor: Tensor | None):
    """Where a gradient for `tensor` goes: its node, the tensor if it is a leaf, or None."""
    if tensor is None or not tensor.requires_grad:
        return None
    return tensor if tensor._node is None else tensor._node


def _functional():
    from minissc import functional  # functional imports this module; bind lazily
    return functional
