"""Finite-difference gradient checks (CS231n style) for any function of tensors.

The check compares the hand-derived gradient of the scalar ``L = sum(f(inputs) * R)`` with
central differences, ``(L(x + eps e_i) - L(x - eps e_i)) / (2 eps)``, for a random upstream
gradient R. A random R matters: for batch norm, ``sum(f(x))`` does not depend on x at all,
so checking it alone could never fail. Work in float64, where eps = 1e-6 gives about
1e-9 relative accuracy on smooth functions.
"""
from __future__ import annotations

import numpy as np

from minissc.tensor import Tensor, no_grad


def numerical_gradient(loss, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar function ``loss()`` w.r.t. `array`.

    `array` is perturbed in place, one element at a time, and restored.
    """
    grad = np.zeros(array.shape, array.dtype)
    for index in np.ndindex(array.shape):  # indexes `array` itself, whatever its memory layout
        original = array[index]
        array[index] = original + eps
        loss_plus = loss()
        array[index] = original - eps
        loss_minus = loss()
        array[index] = original
        grad[index] = (loss_plus - loss_minus) / (2 * eps)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """max |a - n| / max(max |a|, max |n|, 1e-12): 0 when equal, ~1 when unrelated."""
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), 1e-12)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def gradient_errors(fn, *inputs: Tensor, seed: int = 0, eps: float = 1e-6) -> list[float]:
    """Relative error of the analytic against the numerical gradient, one per input.

    `fn(*inputs)` must return a Tensor; the inputs that require grad are checked (others get
    ``nan``). Gradient accumulations already on the inputs are cleared first.
    """
    for t in inputs:
        if t.requires_grad and t.dtype != np.float64:
            raise TypeError(f"gradient checks need float64 inputs, got {t.dtype}")
        t.grad = None
    out = fn(*inputs)
    upstream = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(upstream)

    def loss():
        with no_grad():
            return float((fn(*inputs).data * upstream).sum())

    errors = []
    for t in inputs:
        if not t.requires_grad:
            errors.append(float("nan"))
            continue
        analytic = np.zeros_like(t.data) if t.grad is None else t.grad
        errors.append(relative_error(analytic, numerical_gradient(loss, t.data, eps)))
    return errors


def gradcheck(fn, *inputs: Tensor, tolerance: float = 1e-6, seed: int = 0) -> None:
    """Raise AssertionError if any input's gradient differs from finite differences."""
    for index, error in enumerate(gradient_errors(fn, *inputs, seed=seed)):
        if error > tolerance:
            raise AssertionError(f"gradient of input {index} is off: relative error "
                                 f"{error:.3g} > {tolerance:g}")
