"""Regression tests for the classic autograd bugs, on the elementwise ops only."""
import gc
import weakref

import numpy as np
import pytest

from minissc import Tensor, no_grad
from minissc import functional as F
from minissc.gradcheck import gradcheck
from minissc.kernels import ssc as ssc_kernels


def leaf(values, dtype=np.float64):
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


def test_value_used_twice_accumulates():
    a = leaf([1.0, -2.0, 3.0])
    (a + a).backward(np.ones(3))
    np.testing.assert_array_equal(a.grad, [2.0, 2.0, 2.0])


def test_square_through_mul_of_the_same_tensor():
    a = leaf([1.0, -2.0, 3.0])
    (a * a).sum().backward()
    np.testing.assert_array_equal(a.grad, 2 * a.data)


def test_diamond_graph():
    a = leaf([0.5, 2.0])
    b = a * 3.0
    c = a + 1.0
    (b * c).sum().backward()  # d/da (3a (a + 1)) = 6a + 3
    np.testing.assert_allclose(a.grad, 6 * a.data + 3)


def test_ten_thousand_node_chain_needs_no_recursion():
    a = leaf([1.0])
    x = a
    for _ in range(10_000):
        x = x * 1.0001
    x.backward(np.ones(1))
    np.testing.assert_allclose(a.grad, [1.0001 ** 10_000], rtol=1e-9)


def test_no_grad_records_nothing():
    a = leaf([1.0, 2.0])
    with no_grad():
        b = a * 2.0 + a
    assert not b.requires_grad and b.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        b.sum().backward()
    c = a * 2.0  # recording is back on after the block
    assert c.requires_grad


def test_the_graph_does_not_keep_an_intermediate_array_no_backward_saved():
    """Shift saves nothing, so once the caller drops the shifted tensor, reference counting
    alone frees its array (the cyclic collector is off meanwhile, so a reference cycle fails
    here every time, not only when no collection happens to run), and backward still reaches
    the leaf.

    The shift kernel is compiled first, on other arrays: a Numba compile leaves reference
    cycles that keep the compiling call's frames, and so its arrays, alive until the
    collector runs (`gc.get_referrers` showed the frames of `shift_forward` and
    `Function.apply` holding them). With a cold Numba cache that made this test fail
    whenever no collection ran in between (once in CI, once in a clean-clone run); it says
    nothing about the graph.
    """
    F.shift(Tensor(np.zeros((1, 9, 2, 2), dtype=np.float32)), 3, 9)  # compile, see above
    x = Tensor(np.arange(2 * 9 * 4 * 4, dtype=np.float32).reshape(2, 9, 4, 4), requires_grad=True)
    gc.collect()
    gc.disable()
    try:
        middle = F.shift(x, 3, 9)
        middle_array = weakref.ref(middle.data)
        out = F.shift(middle, 3, 9)
        del middle
        assert middle_array() is None
    finally:
        gc.enable()
    upstream = np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
    out.backward(upstream)
    inverse_shift = ssc_kernels.shift_backward_reference
    np.testing.assert_array_equal(x.grad, inverse_shift(inverse_shift(upstream, 3, 9), 3, 9))


def test_second_backward_through_a_freed_graph_raises():
    a = leaf([1.0, 2.0])
    loss = (a * a).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_second_backward_with_retain_graph_accumulates():
    a = leaf([1.0, 2.0])
    loss = (a * a).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_array_equal(a.grad, 2 * 2 * a.data)


def test_a_leaf_keeps_a_fresh_gradient_without_copying_it(monkeypatch):
    """The gradient a backward has just computed becomes the leaf's .grad itself. (Its id is
    recorded, not the array: a reference kept here would rightly make backward copy it. A
    copy is made while the original is alive, so it cannot reuse the original's id.)"""
    returned = []
    original = ssc_kernels.ssc_backward

    def recording(*args, **kwargs):
        grads = original(*args, **kwargs)
        returned.append(id(grads[0]))
        return grads

    monkeypatch.setattr(ssc_kernels, "ssc_backward", recording)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 9, 4, 4)), requires_grad=True)
    weight = Tensor(np.ones((9, 9)))
    F.ssc_conv2d(x, weight, 3).backward(np.ones((2, 9, 4, 4)))
    assert id(x.grad) == returned[0]


def test_leaf_grads_never_share_memory_with_other_arrays():
    """Where the gradient array can be reached otherwise, the leaf gets a copy: the caller's
    array given to backward, one array handed to two inputs (Add's backward), a view, and an
    array a retained graph still saves."""
    upstream = np.ones(3)
    a = leaf([1.0, 2.0, 3.0])
    a.backward(upstream)  # the root is the leaf: upstream itself reaches it
    assert not np.shares_memory(a.grad, upstream)

    b, c = leaf([1.0, 2.0, 3.0]), leaf([4.0, 5.0, 6.0])
    (b + c).backward(upstream)
    assert not np.shares_memory(b.grad, c.grad) and not np.shares_memory(b.grad, upstream)

    d = leaf([[1.0, 2.0], [3.0, 4.0]])
    d.reshape((4,)).backward(np.arange(4.0))  # Reshape's backward returns a view
    assert d.grad.flags.owndata
    d.grad += 1  # an optimiser updating .grad in place touches nothing else
    np.testing.assert_array_equal(d.grad, [[1.0, 2.0], [3.0, 4.0]])

    e = leaf([1.0, -2.0])
    y = e * e
    y.backward(np.ones(2), retain_graph=True)
    y.backward(np.ones(2))
    np.testing.assert_array_equal(e.grad, 4 * e.data)


def test_leaf_grads_accumulate_over_separate_passes_until_reset():
    a = leaf([3.0])
    (a * 2.0).sum().backward()
    (a * 5.0).sum().backward()
    np.testing.assert_array_equal(a.grad, [7.0])
    a.grad = None
    (a * 5.0).sum().backward()
    np.testing.assert_array_equal(a.grad, [5.0])


def test_backward_of_a_non_scalar_needs_a_gradient():
    a = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match="grad="):
        (a * 2.0).backward()
    with pytest.raises(ValueError, match="shape"):
        (a * 2.0).backward(np.ones(3))


def test_only_inputs_that_require_grad_get_one():
    a, b = leaf([1.0]), Tensor(np.array([2.0]))
    (a * b).sum().backward()
    assert b.grad is None
    np.testing.assert_array_equal(a.grad, [2.0])


def test_broadcast_add_and_mul_gradients():
    a = leaf(np.random.default_rng(0).standard_normal((2, 3, 4)))
    b = leaf(np.random.default_rng(1).standard_normal((3, 1)))
    gradcheck(lambda a, b: a * b + b, a, b)


def test_integer_data_is_refused_with_a_clear_message():
    with pytest.raises(TypeError, match="int64"):
        Tensor(np.arange(3))
    assert Tensor(np.arange(3), dtype=np.float32).dtype == np.float32
    assert Tensor([1, 2]).dtype == np.float32
