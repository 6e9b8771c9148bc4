# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 3: deriving the backward passes
#
# minissc has no automatic differentiation of kernels: every operation is a `Function` whose
# `backward` was derived by hand (the docstrings in `minissc/functional.py` and
# `minissc/kernels/` carry the equations). This tutorial derives the five that an SSC-Net
# spends its time in, then checks each against finite differences with `minissc.gradcheck`.
#
# Notation: g = dL/dy is the upstream gradient (same shape as the output y), and a backward
# pass returns dL/d(input) for every input. Shapes are NCHW.
#
# ## 1. Shift
#
#     y[n, j, a, b] = x[n, j, a + dy_j, b + dx_j]        (0 when that pixel is outside)
#
# Each input pixel is copied to at most one output pixel, so
#
#     dL/dx[n, j, a, b] = sum_(a', b') g[n, j, a', b'] * [a = a' + dy_j and b = b' + dx_j]
#                       = g[n, j, a - dy_j, b - dx_j]      (0 when outside)
#
# The backward of a shift is the shift by the negated offsets (the transpose of a partial
# permutation matrix). Pixels that fell off the edge in the forward pass get gradient 0.
#
# ## 2. Group point-wise convolution (weight W of shape (O, G), stride s)
#
#     y[n, o, Y, X] = sum_i W[o, i] * x[n, q(o)*G + i, Y*s, X*s],     q(o) = o // (O / groups)
#
# (q(o) is the group of output o; g stays the upstream gradient.)
#
# y is linear in W and in x, so each partial derivative is "the other factor":
#
#     dW[o, i]                     = sum_(n, Y, X) g[n, o, Y, X] * x[n, q(o)*G + i, Y*s, X*s]
#     dx[n, q*G + i, Y*s, X*s]     = sum_(o in group q) W[o, i] * g[n, o, Y, X]
#
# and dx = 0 at the pixels the stride skips. Per group and pixel these are a matrix product
# with W transposed, and one with x transposed.
#
# ## 3. The fused SSC convolution
#
# y = pointwise(shift(x)). With z = shift(x) the chain rule gives dz from step 2 and then
# dx = shift^T(dz) from step 1. Composing the two index maps, with c = q(o)*G + i:
#
#     dW[o, i] = sum_(n, Y, X) g[n, o, Y, X] * x[n, c, Y*s + dy_i, X*s + dx_i]
#     dx[n, c, Y*s + dy_i, X*s + dx_i] += W[o, i] * g[n, o, Y, X]     (for every o of the group)
#
# dropping the terms whose input pixel lies in the zero padding. The fused kernel scatters
# straight into dx and never builds dz or the shifted copy z.
#
# ## 4. Batch norm, training mode
#
# Per channel, over its M = N*H*W values x_1..x_M:
#
#     mu = (1/M) sum_j x_j,   var = (1/M) sum_j (x_j - mu)^2,   istd = (var + eps)^(-1/2)
#     xhat_j = (x_j - mu) * istd,     y_j = gamma * xhat_j + beta
#
# The parameters are easy: dbeta = sum_j g_j and dgamma = sum_j g_j * xhat_j. For x, the mean
# and the variance depend on every x_i:
#
#     d mu / d x_i   = 1/M
#     d var / d x_i  = (2/M) (x_i - mu)            (the -1/M part sums to 0: sum_j (x_j - mu) = 0)
#     d istd / d x_i = -(1/2) (var + eps)^(-3/2) * d var / d x_i = -istd^3 (x_i - mu) / M
#     d xhat_j / d x_i = istd * (delta_ij - 1/M) + (x_j - mu) * d istd / d x_i
#                      = istd * (delta_ij - 1/M - xhat_i * xhat_j / M)
#
# and summing gamma * g_j * d xhat_j / d x_i over j:
#
#     dx_i = gamma * istd / M * (M g_i - dbeta - xhat_i * dgamma)
#
# The two subtracted terms come from the mean and from the variance. (In eval mode mu and var
# are the running statistics, constants, and dx_i = gamma * istd * g_i.)
#
# ## 5. ReLU
#
#     y = max(x, 0),    dx = g * [x > 0]
#
# The derivative does not exist at x = 0; minissc, like PyTorch, takes the subgradient 0 there.

# %%
import sys

import minissc  # before NumPy, so that minissc can limit BLAS to one thread (see its __init__)
import matplotlib

if "ipykernel" not in sys.modules:  # run as a script: draw into files only
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import minissc.functional as F
from minissc import Tensor, reference
from minissc.gradcheck import gradient_errors, numerical_gradient, relative_error
from minissc.kernels import norm as norm_kernels
from minissc.tensor import Function

from tutorial_setup import FIGURES, QUICK, save  # noqa: E402 (shared setup)


rng = np.random.default_rng(0)


def tensor(*shape, away_from_zero=False):
    """A float64 leaf tensor that requires grad; optionally with every |value| >= 0.1."""
    values = rng.standard_normal(shape)
    if away_from_zero:
        values = np.sign(values) * (0.1 + np.abs(values))
    return Tensor(values, requires_grad=True)


# %% [markdown]
# ## Checking with finite differences
#
# `minissc.gradcheck.gradient_errors(fn, *inputs)` runs `fn`, back-propagates a **random**
# upstream gradient R (so the scalar being differentiated is L = sum(fn(inputs) * R)), and
# compares every input's gradient with central differences
# (L(x + eps e_k) - L(x - eps e_k)) / (2 eps), one element k at a time. Everything is float64:
# with eps = 1e-6 the differences are accurate to about 1e-9 relative, so a correct gradient
# shows errors of 1e-8 or less, and a wrong one errors orders of magnitude above that (the
# wrong batch norm below: about 7e-2).

# %%
checks = [  # (name, function, inputs, input names)
    ("shift (k=3, G=9)", lambda x: F.shift(x, 3, 9), [tensor(2, 18, 5, 6)], ["x"]),
    ("group point-wise, stride 1", lambda x, w: F.group_pointwise_conv2d(x, w, 1),
     [tensor(2, 18, 5, 6), tensor(12, 9)], ["x", "W"]),
    ("group point-wise, stride 2", lambda x, w: F.group_pointwise_conv2d(x, w, 2),
     [tensor(2, 18, 5, 6), tensor(12, 9)], ["x", "W"]),
    ("SSC fused (k=3, G=9), stride 1", lambda x, w: F.ssc_conv2d(x, w, 3, 1),
     [tensor(2, 18, 5, 6), tensor(12, 9)], ["x", "W"]),
    ("SSC fused (k=3, G=9), stride 2", lambda x, w: F.ssc_conv2d(x, w, 3, 2),
     [tensor(2, 18, 5, 6), tensor(12, 9)], ["x", "W"]),
    ("batch norm, training", lambda x, w, b: F.batch_norm2d(x, w, b, training=True),
     [tensor(4, 3, 5, 5), tensor(3), tensor(3)], ["x", "gamma", "beta"]),
    ("ReLU (|x| >= 0.1)", F.relu, [tensor(3, 4, 5, 5, away_from_zero=True)], ["x"]),
]
if not QUICK:  # a few more shapes: a 5x5 kernel, G < k*k, a non-square image
    checks += [
        ("shift (k=5, G=25)", lambda x: F.shift(x, 5, 25), [tensor(1, 25, 7, 6)], ["x"]),
        ("SSC fused (k=3, G=4), stride 2", lambda x, w: F.ssc_conv2d(x, w, 3, 2),
         [tensor(2, 8, 7, 5), tensor(6, 4)], ["x", "W"]),
        ("SSC fused (k=5, G=25), stride 2", lambda x, w: F.ssc_conv2d(x, w, 5, 2),
         [tensor(1, 25, 6, 7), tensor(5, 25)], ["x", "W"]),
    ]

results = []  # (label, relative error)
print(f"{'operation':34s} {'input':6s} {'relative error':>15s}")
for name, fn, inputs, input_names in checks:
    for input_name, error in zip(input_names, gradient_errors(fn, *inputs, seed=1)):
        print(f"{name:34s} {input_name:6s} {error:15.2e}")
        results.append((f"{name}: {input_name}", error))
assert max(error for _, error in results) < 1e-6

# %% [markdown]
# ## The same gradients from the dense oracle
#
# A second, independent check for SSC: `reference.conv2d_backward` is the backward of a plain
# dense convolution. Fed the SSC layer's dense kernel, its input gradient must equal SSC's, and
# its kernel gradient, read at the one non-zero position (r_i, q_i) of each spatial kernel,
# must equal dW.

# %%
for stride in (1, 2):
    x, w = tensor(2, 18, 7, 6), tensor(12, 9)
    upstream = rng.standard_normal(F.ssc_conv2d(x, w, 3, stride).shape)
    x.grad = w.grad = None
    F.ssc_conv2d(x, w, 3, stride).backward(upstream)
    dense_dx, dense_dk = reference.conv2d_backward(
        x.data, reference.ssc_dense_kernel(w.data, 3), upstream, stride=stride, padding=1,
        groups=2)
    positions = np.arange(9)
    dense_dw = dense_dk[:, positions, positions // 3, positions % 3]
    print(f"stride {stride}: max |dx_SSC - dx_dense| = {np.abs(x.grad - dense_dx).max():.1e}, "
          f"max |dW_SSC - dK_dense at the non-zeros| = {np.abs(w.grad - dense_dw).max():.1e}")

# %% [markdown]
# ## Why the upstream gradient must be random: batch norm
#
# The tempting check is to differentiate L = sum(f(x)), i.e. R = 1 everywhere. For batch norm
# that L does not depend on x at all:
#
#     sum_j y_j = gamma * sum_j xhat_j + M * beta = M * beta,     because sum_j xhat_j = 0.
#
# So its true gradient with respect to x is 0 and so is the one with respect to gamma, and
# *any* backward pass that returns 0 for a constant upstream gradient passes. A classic bug
# does exactly that: forgetting that the variance depends on x, i.e. dropping the xhat * dgamma
# term,
#
#     dx_i = gamma * istd * (g_i - mean_j g_j)          (wrong: misses -xhat_i * dgamma / M)
#
# which is 0 when g is constant. Here is that bug as a `Function` (written here for teaching;
# its forward pass uses minissc's batch-norm kernels):


# %%
class BatchNormForgettingTheVariance(Function):
    """Training-mode batch norm whose backward omits the variance's dependence on x (a bug)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        mean, var = norm_kernels.batch_norm_statistics(x)
        inv_std = 1.0 / np.sqrt(var + 1e-5)
        ctx.save_for_backward(x, weight, mean, inv_std)
        return norm_kernels.batch_norm_forward(x, mean, inv_std, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, mean, inv_std = ctx.saved_arrays
        per_channel = (slice(None), None, None)
        xhat = (x - mean[per_channel]) * inv_std[per_channel]
        grad_x = (weight * inv_std)[per_channel] * (
            grad_out - grad_out.mean(axis=(0, 2, 3), keepdims=True))
        return grad_x, (grad_out * xhat).sum(axis=(0, 2, 3)), grad_out.sum(axis=(0, 2, 3))


def correct_bn(x, w, b):
    return F.batch_norm2d(x, w, b, training=True)


def buggy_bn(x, w, b):
    return BatchNormForgettingTheVariance.apply(x, w, b)


x, gamma, beta = tensor(4, 3, 5, 5), tensor(3), tensor(3)

print("check 1: L = sum(f(x)), upstream gradient 1 everywhere")
for name, fn in (("correct backward", correct_bn), ("buggy backward", buggy_bn)):
    x.grad = None
    fn(x, gamma, beta).sum().backward()

    def loss():
        return float(fn(x, gamma, beta).data.sum())

    numeric = numerical_gradient(loss, x.data)
    difference = np.abs(x.grad - numeric).max()
    print(f"  {name:17s} max|analytic| = {np.abs(x.grad).max():.1e}  max|numeric| = "
          f"{np.abs(numeric).max():.1e}  max|difference| = {difference:.1e}  -> "
          f"{'passes' if np.allclose(x.grad, numeric, atol=1e-6) else 'FAILS'}")

print("check 2: L = sum(f(x) * R), R random (minissc.gradcheck)")
bn_errors = {}
for name, fn in (("correct backward", correct_bn), ("buggy backward", buggy_bn)):
    error = gradient_errors(fn, x, gamma, beta, seed=1)[0]
    bn_errors[name] = error
    print(f"  {name:17s} relative error of dx = {error:.1e}  -> "
          f"{'passes' if error < 1e-6 else 'FAILS'}")
assert bn_errors["correct backward"] < 1e-6 < bn_errors["buggy backward"]

# %% [markdown]
# With R = 1 both gradients are 0 up to the noise of the finite differences, so the check
# cannot tell the correct code from the buggy one (and a relative error would only compare
# noise with noise). A random R makes L depend on x, and the bug shows at once.
#
# ## Why test inputs stay away from the ReLU kink
#
# Central differences straddle the kink when |x| < eps and then see half of each side:

# %%
for value in (0.3, -0.3, 1e-8):
    x_point = Tensor(np.array([value]), requires_grad=True)
    F.relu(x_point).sum().backward()
    numeric = numerical_gradient(lambda: float(F.relu(x_point).data.sum()), x_point.data)
    print(f"x = {value:+.0e}: analytic {x_point.grad[0]:.2f}, finite difference {numeric[0]:.2f}")
print("so the ReLU check above draws every |x| >= 0.1 (the tests, with `assume`, keep inputs"
      " at least 1e-3 from the kink).")

# %%
labels = [label for label, _ in results] + ["batch norm, backward that forgets the variance: x"]
errors = [error for _, error in results] + [bn_errors["buggy backward"]]
figure, ax = plt.subplots(figsize=(8.5, 0.28 * len(labels) + 1.2))
colors = ["C0"] * len(results) + ["C3"]
ax.barh(range(len(labels)), np.maximum(errors, 1e-16), color=colors)
ax.axvline(1e-6, color="black", linestyle="--", linewidth=1, label="tolerance 1e-6")
ax.legend(loc="upper right", fontsize=8.5)
ax.set_xscale("log")
ax.set_xlim(1e-16, 10)
ax.set_yticks(range(len(labels)), labels, fontsize=8.5)
ax.invert_yaxis()
ax.set_xlabel("relative error of the hand-derived gradient vs central differences (float64)")
ax.set_title("gradient checks with a random upstream gradient")
ax.grid(axis="x", alpha=0.3)
save(figure, "03_gradcheck_errors.png")

# %% [markdown]
# ## Summary
#
# * Shift: backward = the inverse shift. Point-wise: two transposed products. Fused SSC: the
#   two composed, scattering straight into dx. Batch norm: two extra terms because the batch
#   statistics depend on x. ReLU: a mask.
# * Check with L = sum(f(x) * R) for a random R, in float64, with inputs away from kinks.
#   `sum(f(x))` alone is blind to the classic batch-norm bug.
#
# Tutorial 4 looks inside the kernels that compute these passes fast.
