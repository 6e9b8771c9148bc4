"""Where a training step's time goes: forward and backward milliseconds of every op of a model.

The script wraps the forward and backward of every autograd `Function` of
`minissc.functional` with a timer (here only; the library has no hooks), runs training steps of
one model on a random batch (forward in train mode, cross-entropy, backward, SGD step) and
prints, per op and input shape, calls per step, forward and backward milliseconds per step and
the rate of the op's products (GFLOP/s, `product_flops`), beside a one-thread matrix product's
rate on this machine. For the SSC module's op it also prints the rate at which its wide
tensors go through memory (GB/s, `wide_tensor_bytes`). Its header gives the step's floor:
those passes at this machine's fastest read and write rates (`stream_rates`) plus the
products at the threads' matrix-product rate, as if nothing else ran and nothing overlapped.
Three more rows take the rest of the step: the forward's and the backward's time outside the
ops (modules, graph walk, gradient sums of branching tensors) and the optimiser step. A
second table splits the ops' time by the kernel functions they call (`minissc.kernels`, per
function and arguments, `install_kernel_timers`): the 1x1 convolution's backward inside the
SSC module's op, for one, with the cores the process kept busy while it ran (2.00 on 2
threads if no thread ever waited). The first step (Numba's compile or cache load) is not
counted. Run it on an idle machine:

    python benchmarks/profile_step.py --model sscresnet20 --r 1 [--steps 5] [--out FILE.json]
"""
import argparse
import collections
import inspect
import json
import math
import sys
import time
from pathlib import Path

import minissc  # noqa: F401  (before NumPy: single-threaded BLAS, see minissc.runtime)
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import run  # noqa: E402  (model building, random batch, machine information)

import minissc.functional as F  # noqa: E402
from minissc import Tensor  # noqa: E402
from minissc.kernels import dense, norm, ssc  # noqa: E402
from minissc.optim import SGD  # noqa: E402
from minissc.tensor import Function  # noqa: E402


def _describe(name, arrays, params):
    """'SSCConv2d 128x144x32x32 (144, 9) stride=1': the op, its inputs' shapes, scalar params."""
    shapes = [("x".join(map(str, a.shape)) if i == 0 else str(tuple(a.shape)))
              for i, a in enumerate(arrays) if hasattr(a, "shape")]
    scalars = [f"{k}={v}" for k, v in sorted(params.items()) if _is_scalar(v)
               or isinstance(v, tuple) and all(map(_is_scalar, v))]
    return " ".join([name] + shapes[:2] + scalars)


def _is_scalar(value):
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


PRODUCT_OPS = {"Conv2d", "GroupPointwiseConv2d", "SSCConv2d", "BatchNormReLUSSCConv2d", "Linear"}


def product_flops(name, arrays, out):
    """Floating-point operations (two per multiply-add) of the products in one forward call of
    the op `name` on `arrays` giving `out`: for a convolution, SSC, group point-wise or linear
    layer, 2 * weight.size * output positions (N * Ho * Wo; N for a linear layer), as
    `minissc.summary.layer_macs` counts them; for the SSC module's op, its 1x1 convolution and
    SSC1 at the input's positions plus SSC2 at the output's. 0 for the ops without products
    (batch norms, ReLU, sums, pooling, the loss: a few operations per value, bound by memory).
    The backward of every counted op does twice these products (the input's gradient and the
    weight's), so a training call does three times this. What a kernel recomputes (SSC2's
    input gradient in SSC1's backward) is not counted: these are the maths' products."""
    if name == "BatchNormReLUSSCPair":
        x, conv_weight, weight1, _, _, weight2 = arrays[:6]
        conv_size = 0 if conv_weight is None else conv_weight.size
        return 2 * ((conv_size + weight1.size) * (x.size // x.shape[1])
                    + weight2.size * (out.size // out.shape[1]))
    return 2 * arrays[1].size * (out.size // out.shape[1]) if name in PRODUCT_OPS else 0


# Passes through memory of an SSC module op's wide tensors (module width m at the input's
# positions; see `wide_tensor_bytes`): reads, writes
WIDE_TENSOR_READS, WIDE_TENSOR_WRITES = 7, 3


def wide_tensor_bytes(name, arrays):
    """Bytes that one training call (forward and backward) of the SSC module's op must move
    through memory for its wide tensors, as (read, written); (0, 0) for every other op.

    The op has three tensors of the module's width m at the input's positions (75 MB each
    at 144 x 32 x 32, batch 128, float32): x1 = conv(x0), y1 = SSC1's output and da1, the
    gradient of SSC1's input activation. Its other arrays (x0, y, their gradients) have c_in
    or c_out channels, at r=1 a ninth of m or less, and are not counted. The batch norms'
    statistics and gradient sums are whole-batch sums, so each is a barrier that a tensor
    cannot be streamed through in one go:
      forward: x1 written (with bn1's moments), read by SSC1 (after bn1's statistics); y1
        written (with bn2's), read by SSC2 (after bn2's): 2 reads, 2 writes;
      backward: y1 read by SSC2's backward (dW2, bn2's sums); y1 read again and x1 read by
        SSC1's (after bn2's sums; dW1, bn1's sums), da1 written; da1 and x1 read by bn1's
        grad_x (after bn1's sums): 5 reads, 1 write.
    Ten passes, without recomputing x1 or y1 from the narrower tensors they come from (which
    costs products) and without storing them at less than float32. Without the 1x1
    convolution x1 is the op's input, written before it; its grad_x, the op's output, is
    then written instead: the same counts."""
    if name != "BatchNormReLUSSCPair":
        return 0, 0
    x, _, weight1 = arrays[:3]
    wide = x.itemsize * x.shape[0] * weight1.shape[0] * _positions(x)
    return WIDE_TENSOR_READS * wide, WIDE_TENSOR_WRITES * wide


def module_conv_products(name, arrays):
    """(m, c, positions) of the 1x1 convolution inside the SSC module's op, whose products
    are most of the op's (`pointwise_product_seconds`); None for every other op."""
    if name != "BatchNormReLUSSCPair" or arrays[1] is None:
        return None
    x, conv_weight = arrays[:2]
    return conv_weight.shape[0], conv_weight.shape[1], _positions(x)


def _positions(x):
    """Positions of one plane of an (N, C, H, W) array: H * W."""
    return x.size // (x.shape[0] * x.shape[1])


def pointwise_product_seconds(out_channels, in_channels, positions, repeats=21):
    """Seconds of the three products of a 1x1 convolution's training call for one image, as
    `minissc.kernels.dense` runs them (one BLAS thread each): y = W @ x, grad_x = W^T @ g and
    grad_W = g @ x^T, with W (m, c), x (c, positions) and g (m, positions) in cache: the
    fastest of `repeats` calls of each. These shapes are thin (16 -> 144 at 32 x 32: a side
    of 16); in `profile-sscresnet20-r1-20261203c` OpenBLAS ran them at 49-71 GFLOP/s, the
    512 x 512 product at 75."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((out_channels, in_channels), dtype=np.float32)
    x = rng.standard_normal((in_channels, positions), dtype=np.float32)
    grad = rng.standard_normal((out_channels, positions), dtype=np.float32)
    return sum(min(run.call_seconds(product, repeats))
               for product in (lambda: weight @ x, lambda: weight.T @ grad,
                               lambda: grad @ x.T))


@njit(parallel=True, fastmath=True, cache=True)
def _read_pass(rows):
    """Sum of every value, row by row in parallel: one read of the array."""
    sums = np.zeros(rows.shape[0])
    for row in prange(rows.shape[0]):
        sums[row] = rows[row].sum()
    return sums.sum()


@njit(parallel=True, cache=True)
def _write_pass(rows):
    """Every value set to 1, row by row in parallel: one write of the array."""
    for row in prange(rows.shape[0]):
        rows[row] = 1.0


def stream_rates(megabytes=75, repeats=15):
    """GB/s of one read and of one write of a float32 array of `megabytes` MB (the SSC module's
    widest tensor at r=1, batch 128) on Numba's threads: the fastest of `repeats` calls after
    one untimed call, the rates that the wide tensors' passes could at best run at (this VM's
    rates vary by a third from call to call)."""
    rows = np.ones((megabytes * 2**20 // 4096, 1024), np.float32)
    read_s = min(run.call_seconds(lambda: _read_pass(rows), repeats))
    write_s = min(run.call_seconds(lambda: _write_pass(rows), repeats))
    return rows.nbytes / read_s / 1e9, rows.nbytes / write_s / 1e9


def install_timers(seconds, calls, work):
    """Wrap every Function's forward and backward so that they add their time to
    seconds[(op label, "forward" or "backward")], count forwards in calls[op label] and set
    work[op label] to a forward call's `product_flops` and a training call's
    `wide_tensor_bytes` and `module_conv_products`, {"flops", "read", "written", "conv"};
    returns a function that removes the wraps."""
    originals = []

    def timed_forward(forward, name):
        def wrapper(ctx, *arrays, **params):
            ctx.profile_label = _describe(name, arrays, params)
            start = time.perf_counter()
            out = forward(ctx, *arrays, **params)
            seconds[ctx.profile_label, "forward"] += time.perf_counter() - start
            calls[ctx.profile_label] += 1
            read, written = wide_tensor_bytes(name, arrays)
            work[ctx.profile_label] = dict(flops=product_flops(name, arrays, out), read=read,
                                           written=written,
                                           conv=module_conv_products(name, arrays))
            return out
        return wrapper

    def timed_backward(backward):
        def wrapper(ctx, grad_out):
            start = time.perf_counter()
            grads = backward(ctx, grad_out)
            seconds[ctx.profile_label, "backward"] += time.perf_counter() - start
            return grads
        return wrapper

    for cls in Function.__subclasses__():
        originals.append((cls, cls.forward, cls.backward))
        cls.forward = staticmethod(timed_forward(cls.forward, cls.__name__))
        cls.backward = staticmethod(timed_backward(cls.backward))

    def remove():
        for cls, forward, backward in originals:
            cls.forward, cls.backward = staticmethod(forward), staticmethod(backward)
    return remove


KERNEL_MODULES = (ssc, dense, norm)
KERNEL_ROW_MIN_SHARE = 0.005  # printed kernel rows; the JSON has them all


def install_kernel_timers(seconds, calls, cpu_seconds):
    """Wrap the Python functions of the kernel modules (`minissc.kernels.ssc`, `.dense`,
    `.norm`; not their Numba kernels, which other compiled code calls) so that the outermost
    calls, the ones the ops make, add their time to seconds[kernel label], the process's
    CPU time during them (all threads) to cpu_seconds[kernel label], and count in
    calls[kernel label]; the calls they make to each other are part of their time. Returns
    a function that removes the wraps."""
    originals, depth = [], [0]

    def timed(function, name):
        def wrapper(*args, **kwargs):
            depth[0] += 1
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    label = _describe(name, args, kwargs) + "".join(
                        f" {a}" for a in args if _is_scalar(a))
                    seconds[label] += time.perf_counter() - start
                    cpu_seconds[label] += time.process_time() - cpu_start
                    calls[label] += 1
        return wrapper

    for module in KERNEL_MODULES:
        for name, function in list(vars(module).items()):
            if (inspect.isfunction(function) and function.__module__ == module.__name__
                    and not name.startswith("_")):
                originals.append((module, name, function))
                setattr(module, name, timed(function, f"{module.__name__.split('.')[-1]}.{name}"))

    def remove():
        for module, name, function in originals:
            setattr(module, name, function)
    return remove


def profile(name, options, batch, steps):
    """Per-step seconds of every (op label, phase), of the step's parts, calls per step, where
    the CPUs went over the steps after the first (`run.cpu_use`), each op label's work per
    call (see `install_timers`), and per kernel label {"seconds", "calls"} per step and the
    cores its threads kept busy, {"cores"}: CPU seconds per second (`install_kernel_timers`)."""
    model = run.build_minissc(name, options)
    images, labels = run.random_batch(batch)
    optimizer = SGD(model.parameters(), lr=run.LR, momentum=run.MOMENTUM,
                    weight_decay=run.WEIGHT_DECAY)
    op_seconds = collections.defaultdict(float)
    parts = collections.defaultdict(float)
    calls = collections.Counter()
    work = {}
    kernel_seconds = collections.defaultdict(float)
    kernel_cpu_seconds = collections.defaultdict(float)
    kernel_calls = collections.Counter()
    model.train()
    remove = install_timers(op_seconds, calls, work)
    remove_kernel_timers = install_kernel_timers(kernel_seconds, kernel_calls,
                                                 kernel_cpu_seconds)
    try:
        for step in range(steps + 1):
            if step == 1:  # step 0 compiled or loaded the kernels: start counting now
                op_seconds.clear()
                parts.clear()
                calls.clear()
                kernel_seconds.clear()
                kernel_cpu_seconds.clear()
                kernel_calls.clear()
                mark = run.cpu_mark()
            start = time.perf_counter()
            loss = F.cross_entropy(model(Tensor(images)), labels)
            forward_done = time.perf_counter()
            optimizer.zero_grad()
            loss.backward()
            backward_done = time.perf_counter()
            optimizer.step()
            parts["forward"] += forward_done - start
            parts["backward"] += backward_done - forward_done
            parts["optimizer step"] += time.perf_counter() - backward_done
    finally:
        remove_kernel_timers()
        remove()
    timing = dict(run.training_cpu_since(mark), train_step_s=[sum(parts.values())])
    return ({key: value / steps for key, value in op_seconds.items()},
            {key: value / steps for key, value in parts.items()},
            {key: value // steps for key, value in calls.items()},
            run.cpu_use(timing), work,
            {label: {"seconds": kernel_seconds[label] / steps, "calls": n // steps,
                     "cores": kernel_cpu_seconds[label] / kernel_seconds[label]}
             for label, n in kernel_calls.items()})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sscresnet20",
                        choices=["resnet20", "shiftresnet20", "sscresnet20"])
    parser.add_argument("--r", type=int, help="sscresnet20's width r (default 1)")
    parser.add_argument("--e", type=int, help="shiftresnet20's expansion e (default 3)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after the first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    options = {"sscresnet20": {"r": args.r or 1}, "shiftresnet20": {"e": args.e or 3},
               "resnet20": {}}[args.model]
    run.set_threads(args.threads)
    op_seconds, parts, calls, use, work, kernels = profile(args.model, options, args.batch,
                                                           args.steps)
    step = sum(parts.values())
    matmul = run.machine_speed()["matmul_gflop_per_s"]
    read_rate, write_rate = stream_rates()
    ops = collections.defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
    for (label, phase), seconds in op_seconds.items():
        ops[label][phase] = seconds
    rows = [dict(op=label, kind=label.split(" ")[0], calls=calls[label],
                 forward_ms=1000 * t["forward"], backward_ms=1000 * t["backward"],
                 gflop=3 * calls[label] * work[label]["flops"] / 1e9,
                 read_gb=calls[label] * work[label]["read"] / 1e9,
                 written_gb=calls[label] * work[label]["written"] / 1e9)
            for label, t in ops.items()]
    outside = {"forward": parts["forward"] - sum(t["forward"] for t in ops.values()),
               "backward": parts["backward"] - sum(t["backward"] for t in ops.values())}
    for name, forward_ms, backward_ms in (
            ("forward outside the ops", 1000 * outside["forward"], 0.0),
            ("backward outside the ops", 0.0, 1000 * outside["backward"]),
            ("optimizer step", 0.0, 1000 * parts["optimizer step"])):
        rows.append(dict(op=name, kind=name, calls=1, forward_ms=forward_ms,
                         backward_ms=backward_ms, gflop=0.0, read_gb=0.0, written_gb=0.0))
    rows.sort(key=lambda r: -(r["forward_ms"] + r["backward_ms"]))
    by_kind = collections.defaultdict(float)
    for row in rows:
        by_kind[row["kind"]] += row["forward_ms"] + row["backward_ms"]

    label = run.model_label(args.model, options)
    print(f"{label}, batch {args.batch}, {args.threads} threads: {1000 * step:.0f} ms per training "
          f"step ({args.batch / step:.1f} img/s), mean of {args.steps} steps after the first; "
          f"the process used {use['cores']:.2f} cores"
          + (f", the VM lost {100 * use['steal']:.1f}% of its CPU time to steal"
             if "steal" in use else ""))
    gflop = sum(row["gflop"] for row in rows)
    read_gb, written_gb = (sum(row[key] for row in rows) for key in ("read_gb", "written_gb"))
    floor_ms = {"memory": 1000 * (read_gb / read_rate + written_gb / write_rate),
                "products": 1000 * gflop / (args.threads * matmul)}
    # the same floor with the SSC modules' 1x1 products at the rate of their own shapes
    convs = collections.Counter()
    for label, n in calls.items():
        if work[label]["conv"]:
            convs[work[label]["conv"]] += n
    conv_seconds = {shape: pointwise_product_seconds(*shape) for shape in convs}
    conv_gflop = sum(n * 6 * math.prod(shape) * args.batch for shape, n in convs.items()) / 1e9
    conv_ms = 1000 * sum(n * args.batch * conv_seconds[shape] / args.threads
                         for shape, n in convs.items())
    conv_rates = [6 * math.prod(shape) / seconds / 1e9 for shape, seconds in conv_seconds.items()]
    floor_at_shapes_ms = (floor_ms["memory"] + conv_ms
                          + 1000 * (gflop - conv_gflop) / (args.threads * matmul))
    print(f"its products: {gflop:.2f} GFLOP a step, {gflop / step:.1f} GFLOP/s; a 512 x 512 matrix "
          f"product on one thread ran at {matmul:.1f} GFLOP/s here")
    if read_gb:
        print(f"its SSC modules' wide tensors: {read_gb:.2f} GB read and {written_gb:.2f} GB "
              f"written a step (`wide_tensor_bytes`); on {args.threads} threads a read of 75 MB "
              f"ran at {read_rate:.1f} GB/s here, a write at {write_rate:.1f} GB/s")
        print(f"floor, if nothing else ran and nothing overlapped: those passes at those rates "
              f"{floor_ms['memory']:.0f} ms + the products at {args.threads} x the matrix "
              f"product's rate {floor_ms['products']:.0f} ms = "
              f"{sum(floor_ms.values()):.0f} ms, of the step's {1000 * step:.0f} ms")
    if convs:
        print(f"the same with the SSC modules' 1x1 convolutions' products ({conv_gflop:.2f} GFLOP) "
              f"at the rate of their own shapes here (`pointwise_product_seconds`: "
              f"{min(conv_rates):.1f}-{max(conv_rates):.1f} GFLOP/s on one thread): "
              f"{floor_at_shapes_ms:.0f} ms")
    print(f"{'op and input shapes':100s}{'calls':>6s}{'fwd ms':>9s}{'bwd ms':>9s}{'share':>7s}"
          f"{'GFLOP/s':>9s}{'GB/s':>7s}")
    for row in rows:
        total = row["forward_ms"] + row["backward_ms"]
        rate = f"{row['gflop'] / (total / 1000):9.1f}" if row["gflop"] and total else ""
        moved = row["read_gb"] + row["written_gb"]
        bandwidth = f"{moved / (total / 1000):7.1f}" if moved and total else ""
        print(f"{row['op'][:100]:100s}{row['calls']:6d}{row['forward_ms']:9.1f}"
              f"{row['backward_ms']:9.1f}{100 * total / (1000 * step):6.1f}%{rate:9s}{bandwidth}")
    kernel_rows = sorted(({"kernel": label, **values} for label, values in kernels.items()),
                         key=lambda row: -row["seconds"])
    ops_ms = sum(t["forward"] + t["backward"] for t in ops.values()) * 1000
    kernels_ms = 1000 * sum(row["seconds"] for row in kernel_rows)
    print(f"\nkernel functions the ops called (minissc.kernels; calls, ms per step with the "
          f"calls inside them, share, cores busy); the ops' {ops_ms:.1f} ms spent "
          f"{ops_ms - kernels_ms:.1f} outside them:")
    shown = [row for row in kernel_rows if row["seconds"] >= KERNEL_ROW_MIN_SHARE * step]
    for row in shown:
        print(f"  {row['kernel'][:98]:98s}{row['calls']:6d}{1000 * row['seconds']:9.1f}"
              f"{100 * row['seconds'] / step:6.1f}%{row['cores']:6.2f}")
    rest = kernel_rows[len(shown):]
    if rest:
        print(f"  and {len(rest)} more, each under {100 * KERNEL_ROW_MIN_SHARE:.1f}% of the step: "
              f"{1000 * sum(row['seconds'] for row in rest):.1f} ms together")
    print("\nby op (forward + backward ms per step):")
    for name, ms in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"  {name:30s}{ms:8.1f}  {100 * ms / (1000 * step):5.1f}%")
    if args.out:
        args.out.write_text(json.dumps(dict(
            meta=run.machine_info(args.threads, None), model=label, batch=args.batch,
            steps=args.steps, step_ms=1000 * step, cpu_use=use, gflop=gflop,
            matmul_gflop_per_s=matmul, read_gb=read_gb, written_gb=written_gb,
            read_gb_per_s=read_rate, write_gb_per_s=write_rate, floor_ms=floor_ms,
            module_conv_gflop=conv_gflop, module_conv_gflop_per_s=conv_rates,
            floor_at_shapes_ms=floor_at_shapes_ms, rows=rows,
            kernels=kernel_rows, by_op=by_kind),
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
