#!/usr/bin/env python
"""Benchmark minissc on the CPU: its layers, whole networks, memory and Numba start-up.

    python benchmarks/run.py [--quick | --full] [--threads 2] [--batch 128]
                             [--out benchmarks/results/NAME.json] [--sections ...] [--no-torch]

Five sections (README.md beside this file explains every column):

1. layers:   forward and backward time of every distinct SSC, shift and point-wise layer of
             sscresnet20 (r=1) and shiftresnet20 (e=3): minissc's fast kernels through
             `minissc.functional` (autograd), their NumPy twins (`*_reference`), and PyTorch
             (one-hot depthwise conv + grouped 1x1 conv). Each layer is checked against PyTorch
             (output, input and weight gradients) before it is timed.
2. networks: training (forward + backward + SGD step) and inference images/s of the zoo
             against PyTorch twins (`torch_models.py`) with minissc's weights, after checking
             that both give the same logits.
3. memory:   peak RSS of training steps, one fresh process per (framework, model).
4. compile:  process start -> end of the first training step of sscresnet20, with an empty
             Numba cache (cold) and with that cache populated (warm).
5. targets:  the ratios the issue asks for, PASS or MISS.

Every equivalence check runs in this process, which imports both frameworks; every timing runs
in a fresh process that imports one framework only (`--worker`), so that Numba's and torch's
OpenMP thread pools never compete for the cores, in rounds that alternate the two frameworks
(full mode: 3). Times are `time.perf_counter` medians over the calls of all rounds.
minissc is imported before NumPy, so its single-threaded BLAS setting applies.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Repeats per mode. "first" calls (JIT compile or cache load, oneDNN set-up) are timed apart.
# Layer and network timings are split over `rounds` rounds, each a fresh process per framework,
# minissc and torch alternating: the development VM's speed drifts by tens of percent within
# minutes, and alternating spreads that drift over both sides of every ratio.
MODES = {
    "quick": dict(layer_repeats=3, reference_repeats=1, torch_dense=False, train_steps=2,
                  infer_steps=2, memory_steps=2, warm_starts=2, rounds=1),
    "full": dict(layer_repeats=12, reference_repeats=3, torch_dense=True, train_steps=12,
                 infer_steps=12, memory_steps=3, warm_starts=3, rounds=3),
}
LAYER_MODELS = [("sscresnet20", {"r": 1}), ("shiftresnet20", {"e": 3})]
NETWORK_MODELS = [("resnet20", {}), ("shiftresnet20", {"e": 3}), ("shiftresnet20", {"e": 9}),
                  ("sscresnet20", {"r": 1}), ("sscresnet20", {"r": 2})]
SECTIONS = ("layers", "networks", "memory", "compile")
CHECK_BATCH = 8  # batch of the whole-network equivalence check
# float32 equivalence: max |minissc - torch| / max |torch| per tensor
LAYER_TOLERANCE = {"output": 1e-4, "grad_input": 1e-4, "grad_weight": 1e-3}
NETWORK_TOLERANCE = {"eval logits": 1e-3, "train logits": 1e-3, "loss": 1e-3,
                     "float64 train logits": 1e-9, "float64 loss": 1e-9,
                     "float64 gradients": 1e-8, "float64 running stats": 1e-9}
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
RESULT_MARK = "@@result "
BUSY_LOAD = 0.5  # a 1-minute load average above this at the start gets a note
BUSY_SHARE = 0.1  # other processes using more than this share of all CPUs: a warning
STEAL_SHARE = 0.05  # the host taking more than this share of the VM's CPUs: a warning
# minissc asks glibc to keep freed memory for the next allocation (`minissc.runtime`); torch
# leaves malloc as it is, so its large buffers go back to the kernel when freed and page-fault
# in afresh at every step. "torch, freed memory kept" is torch run with the same two malloc
# settings, as glibc tunables (glibc >= 2.26; other C libraries ignore them).
KEPT_MEMORY_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"}
TORCH_KEPT = "torch_kept"


class EquivalenceError(RuntimeError):
    """minissc and PyTorch disagree: the benchmark would compare different computations."""


def model_label(name: str, options: dict) -> str:
    return name + "".join(f" {key}={value}" for key, value in options.items())


def median(values):
    return statistics.median(values) if values else None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (inf when the shapes differ)."""
    import numpy as np
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    return float(np.abs(actual - expected).max(initial=0.0) / scale)


# ----------------------------------------------------------------------------------------------
# Set-up: threads, torch (optional), machine information
# ----------------------------------------------------------------------------------------------

def set_threads(threads: int, torch=None) -> None:
    import numba
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    if torch is not None:
        torch.set_num_threads(threads)


def import_torch(disabled: bool):
    """torch, or (None, reason) when it is disabled or not importable."""
    if disabled:
        return None, "--no-torch given"
    try:
        import torch
    except ImportError as error:
        return None, f"torch is not importable ({error})"
    return torch, None


def machine_info(threads: int, torch) -> dict:
    import numba
    import numpy as np
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                     "--untracked-files=no"], capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    import minissc
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "ram_gib": ram_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "numba_threading_layer": _numba_threading_layer(),
        "llvm_cpu": _llvm_cpu(),
        "torch": torch.__version__ if torch is not None else None,
        "minissc": minissc.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "threads": threads,
        "numba_threads": numba.get_num_threads(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "env": {key: os.environ.get(key) for key in (
            "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
            "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER",
            "NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT")},
        "load_average_at_start": os.getloadavg(),
    }


def call_seconds(call, repeats: int, untimed: int = 1) -> list:
    """Seconds of each of `repeats` calls of call(), after `untimed` calls (compile or cache
    load, warm-up)."""
    for _ in range(untimed):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def machine_speed(repeats: int = 21) -> dict:
    """How fast this machine is right now, for comparing runs of different days (this VM's
    speed drifts by tens of percent, and an absolute target such as images/s moves with it):
    GB/s of a NumPy copy of 64 MB (bytes read plus bytes written, one thread) and GFLOP/s of
    a 512 x 512 float32 matrix product on one BLAS thread (minissc sets one); medians of
    `repeats` calls after one untimed call. About half a second."""
    import numpy as np
    source = np.ones(16 * 2**20, dtype=np.float32)
    target = np.empty_like(source)
    a, b = np.ones((2, 512, 512), dtype=np.float32)
    copy_s = median(call_seconds(lambda: np.copyto(target, source), repeats))
    matmul_s = median(call_seconds(lambda: a @ b, repeats))
    return {"copy_gb_per_s": round(2 * source.nbytes / copy_s / 1e9, 2),
            "matmul_gflop_per_s": round(2 * 512**3 / matmul_s / 1e9, 2)}


BUSY_TICKS, STEAL_TICKS = 0, 2  # fields of `cpu_ticks`


def cpu_ticks() -> tuple[int, int, int] | None:
    """(busy, total, steal) clock ticks of all CPUs since boot, from /proc/stat; None off
    Linux. Steal is time a virtual CPU was ready to run but the hypervisor ran something else
    (0 on bare metal); busy counts it."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    steal = fields[7] if len(fields) > 7 else 0
    return sum(fields) - idle, sum(fields), steal


def cpu_busy_share(seconds: float = 1.0) -> float | None:
    """Share of all CPUs' time that was busy over the next `seconds`, while this process
    sleeps: what other processes use now (the load average lags by a minute). None where
    /proc/stat is missing."""
    before = cpu_ticks()
    time.sleep(seconds)
    share = tick_share(before, cpu_ticks(), BUSY_TICKS)
    return None if share is None else round(share, 3)


def tick_share(before, after, field: int) -> float | None:
    """The share of all CPUs' clock ticks between two `cpu_ticks` readings that were busy
    (field BUSY_TICKS) or steal (STEAL_TICKS); None without /proc/stat or when no tick
    passed."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[field] - before[field]) / (after[1] - before[1])


def busy_note(load_average: float, busy_share: float | None) -> str | None:
    """The report's note on other work at the start: a warning when other processes use more
    than BUSY_SHARE of the CPUs (or, without /proc/stat, when the load average is above
    BUSY_LOAD), a plain note when only the load average is high (work that has just ended),
    else None."""
    share = "" if busy_share is None else f"{100 * busy_share:.0f}% busy"
    busy = busy_share > BUSY_SHARE if busy_share is not None else load_average > BUSY_LOAD
    if busy:
        return (f"WARNING: the machine is busy at the start (load average {load_average:.2f}"
                f"{', CPUs ' + share + ' over a second' if share else ''}). Both frameworks' "
                f"OpenMP threads spin-wait for each other at every parallel region, so a core "
                f"taken by another process can slow them 5-10x: these numbers are not "
                f"representative")
    if load_average > BUSY_LOAD:
        return (f"load average {load_average:.2f} at the start, but the CPUs were {share} over "
                f"the second before the run: the work behind that average had ended")
    return None


def _llvm_cpu() -> str:
    """The CPU that LLVM compiles Numba's kernels for (its scheduling model and defaults):
    NUMBA_CPU_NAME if set, else what LLVM makes of the host. A VM may report a CPU model
    number that LLVM names after another chip (run q's VM: "rocketlake", on a CPU with AMX)."""
    import llvmlite.binding as llvm
    return os.environ.get("NUMBA_CPU_NAME") or llvm.get_host_cpu_name()


def _numba_threading_layer() -> str | None:
    import numba
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        return None


# ----------------------------------------------------------------------------------------------
# Section 1: per-layer times
# ----------------------------------------------------------------------------------------------

def distinct_layers(batch: int) -> list[dict]:
    """The distinct SSC, shift and point-wise layers of LAYER_MODELS, with their input shapes.

    One eval-mode forward pass of each model on a 1x3x32x32 image records the input shape of
    every layer call; layers with the same type, configuration and input shape are merged,
    keeping the names of all the layers (``uses``) that have that shape.
    """
    import numpy as np
    from minissc import Tensor, models, nn, no_grad

    layers: dict[tuple, dict] = {}
    for model_name, options in LAYER_MODELS:
        model = models.create(model_name, **options).eval()
        calls = []

        def recording(forward, name, module):
            def forward_and_record(x, **options):  # SSC layers: input_norm=bn, timed without
                calls.append((name, module, tuple(x.shape)))
                return forward(x, **options)
            return forward_and_record

        for name, module in model.named_modules():
            if isinstance(module, (nn.SSCConv2d, nn.Shift, nn.Conv2d, nn.GroupPointwiseConv2d)):
                module.forward = recording(module.forward, name, module)
        with no_grad():
            model(Tensor(np.zeros((1, 3, 32, 32), np.float32)))
        for name, module, shape in calls:
            spec = _layer_spec(module, (batch,) + shape[1:])
            if spec is None:
                continue  # a dense 3x3 convolution (the stem): not an SSC-family layer
            layers.setdefault(spec["label"], spec)["uses"].append(
                f"{model_label(model_name, options)}: {name}")
    return list(layers.values())


def _layer_spec(module, input_shape) -> dict | None:
    from minissc import nn
    n, c, h, w = input_shape
    if isinstance(module, nn.SSCConv2d):
        out_channels, group_size = module.weight.shape
        shuffle = getattr(module, "shuffle_groups", 1)
        spec = dict(kind="ssc", out_channels=out_channels, group_size=group_size,
                    kernel_size=module.kernel_size, stride=module.stride, shuffle_groups=shuffle,
                    groups=c // group_size)
        label = (f"ssc {c}->{out_channels} {h}x{w} s{module.stride}"
                 + (f" shuffle{shuffle}" if shuffle > 1 else ""))
    elif isinstance(module, nn.Shift):
        spec = dict(kind="shift", out_channels=c, group_size=module.group_size,
                    kernel_size=module.kernel_size, stride=1, groups=c)
        label = f"shift {c} {h}x{w}"
    elif isinstance(module, (nn.Conv2d, nn.GroupPointwiseConv2d)):
        if isinstance(module, nn.Conv2d):
            out_channels, per_group, kh, kw = module.weight.shape
            if (kh, kw) != (1, 1) or module.padding:
                return None
            groups = module.groups
        else:
            out_channels, per_group = module.weight.shape
            groups = c // per_group
        spec = dict(kind="pointwise", out_channels=out_channels, group_size=c // groups,
                    kernel_size=1, stride=module.stride, groups=groups)
        label = (f"1x1 {c}->{out_channels} {h}x{w} s{module.stride}"
                 + (f" g{groups}" if groups > 1 else ""))
    else:
        return None
    stride = spec["stride"]
    out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
    spec.update(label=label, input_shape=list(input_shape),
                output_shape=[n, spec["out_channels"], out_h, out_w], uses=[])
    return spec


def _layer_arrays(spec: dict, seed: int):
    """Input x, weight (O, G) and upstream gradient R, float32, reproducible per layer."""
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec["input_shape"], dtype=np.float32)
    weight = None
    if spec["kind"] != "shift":
        weight = rng.standard_normal((spec["out_channels"], spec["group_size"]),
                                     dtype=np.float32) / np.float32(np.sqrt(spec["group_size"]))
    upstream = rng.standard_normal(spec["output_shape"], dtype=np.float32)
    return x, weight, upstream


def _minissc_layer(spec: dict, x, weight, variant: str = "model"):
    """(forward, backward) closures on minissc's autograd ops; backward returns (dx, dW).

    variant "model" is the op the zoo uses (F.conv2d for 1x1 convolutions);
    "group_pointwise" computes a 1x1 convolution with F.group_pointwise_conv2d instead.
    """
    import minissc.functional as F
    from minissc import Tensor
    k, stride = spec["kernel_size"], spec["stride"]
    state = {}

    def forward():
        state["x"] = Tensor(x, requires_grad=True)
        state["w"] = None if weight is None else Tensor(weight, requires_grad=True)
        xt, wt = state["x"], state["w"]
        if spec["kind"] == "ssc":
            extra = {"shuffle_groups": spec["shuffle_groups"]} if spec["shuffle_groups"] > 1 else {}
            return F.ssc_conv2d(xt, wt, k, stride, **extra)
        if spec["kind"] == "shift":
            return F.shift(xt, k, spec["group_size"])
        if variant == "group_pointwise":
            return F.group_pointwise_conv2d(xt, wt, stride)
        wt4 = wt.reshape(spec["out_channels"], spec["group_size"], 1, 1)
        return F.conv2d(xt, wt4, None, stride, 0, spec["groups"])

    def backward(y, upstream):
        y.backward(upstream)
        return state["x"].grad, None if state["w"] is None else state["w"].grad

    return forward, backward


def _reference_layer(spec: dict, x, weight):
    """(forward, backward) closures on the NumPy twins in minissc.kernels.ssc."""
    from minissc.kernels import ssc as kernels
    k, stride, group_size = spec["kernel_size"], spec["stride"], spec["group_size"]
    shuffle = (spec["shuffle_groups"],) if spec.get("shuffle_groups", 1) > 1 else ()
    if spec["kind"] == "ssc":
        return (lambda: kernels.ssc_forward_reference(x, weight, k, stride, *shuffle),
                lambda y, upstream: kernels.ssc_backward_reference(x, weight, upstream, k,
                                                                   stride, *shuffle))
    if spec["kind"] == "shift":
        return (lambda: kernels.shift_forward_reference(x, k, group_size),
                lambda y, upstream: (kernels.shift_backward_reference(upstream, k, group_size),
                                     None))
    return (lambda: kernels.group_pointwise_forward_reference(x, weight, stride),
            lambda y, upstream: kernels.group_pointwise_backward_reference(x, weight, upstream,
                                                                           stride))


def _torch_layer(torch, spec: dict, x, weight, variant: str = "pair"):
    """(forward, backward) closures on PyTorch; backward returns (dx, dW) as NumPy arrays.

    variant "pair": ssc = (channel shuffle,) one-hot depthwise conv (stride s) + grouped 1x1;
    shift = the one-hot depthwise conv; point-wise = conv2d 1x1 (groups, stride).
    variant "dense": ssc = one grouped 3x3 conv2d of the sparse dense kernel
    (`torch_models.ssc_dense_kernel`, the oracle's form); its weight gradient is read at the
    kernel positions the SSC uses.
    """
    import torch.nn.functional as TF
    import torch_models
    k, stride, groups = spec["kernel_size"], spec["stride"], spec["groups"]
    channels = spec["input_shape"][1]
    x_torch = torch.from_numpy(x)
    state = {}
    if spec["kind"] == "ssc" and variant == "dense":
        weight_torch = torch_models.ssc_dense_kernel(torch.from_numpy(weight), k)
    elif weight is not None:
        weight_torch = torch.from_numpy(weight.reshape(weight.shape + (1, 1)).copy())
    else:
        weight_torch = None
    one_hot = (torch_models.one_hot_shift_kernel(channels, k, spec["group_size"])
               if spec["kind"] in ("ssc", "shift") else None)

    def forward():
        xt = state["x"] = x_torch.detach().requires_grad_()
        wt = state["w"] = None if weight_torch is None else weight_torch.detach().requires_grad_()
        if spec["kind"] == "shift":
            return TF.conv2d(xt, one_hot, padding=k // 2, groups=channels)
        if spec["kind"] == "pointwise":
            return TF.conv2d(xt, wt, stride=stride, groups=groups)
        if spec["shuffle_groups"] > 1:
            xt = torch_models.channel_shuffle(xt, spec["shuffle_groups"])
        if variant == "dense":
            return TF.conv2d(xt, wt, stride=stride, padding=k // 2, groups=groups)
        shifted = TF.conv2d(xt, one_hot, stride=stride, padding=k // 2, groups=channels)
        return TF.conv2d(shifted, wt, groups=groups)

    def backward(y, upstream):
        y.backward(torch.from_numpy(upstream))
        grad_x = state["x"].grad.numpy()
        if state["w"] is None:
            return grad_x, None
        grad_w = state["w"].grad.numpy()
        if variant == "dense":
            import numpy as np
            positions = np.arange(spec["group_size"])
            return grad_x, grad_w[:, positions, positions // k, positions % k]
        return grad_x, grad_w.reshape(grad_w.shape[:2])

    return forward, backward


def _timing(forward_times: list, backward_times: list, first_seconds=None) -> dict:
    result = {"forward_s": forward_times, "backward_s": backward_times,
              "forward_median_s": median(forward_times),
              "backward_median_s": median(backward_times)}
    if forward_times:
        result["total_median_s"] = median([f + b for f, b in zip(forward_times, backward_times)])
    if first_seconds is not None:
        result["first_call_s"] = first_seconds
    return result


def _time_layer(forward, backward, upstream, repeats: int):
    """Forward and backward times of `repeats` calls."""
    forward_times, backward_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        y = forward()
        middle = time.perf_counter()
        backward(y, upstream)
        end = time.perf_counter()
        forward_times.append(middle - start)
        backward_times.append(end - middle)
        del y
    return forward_times, backward_times


def _as_numpy(array):
    """An ndarray from an ndarray, a minissc Tensor or a torch tensor."""
    if type(array).__module__.startswith("torch"):
        return array.detach().numpy()
    return getattr(array, "data", array)


def _first_call(forward, backward, upstream) -> dict:
    """One forward + backward, timed (it includes any JIT compilation or cache loading),
    with the arrays that the equivalence check compares."""
    start = time.perf_counter()
    y = forward()
    middle = time.perf_counter()
    grad_input, grad_weight = backward(y, upstream)
    end = time.perf_counter()
    return {"forward_s": middle - start, "backward_s": end - middle, "seconds": end - start,
            "output": _as_numpy(y), "grad_input": grad_input, "grad_weight": grad_weight}


def _compare(label: str, candidate: dict, expected: dict, names: str) -> dict:
    """Relative errors of one call against another; raises EquivalenceError past tolerance."""
    errors = {}
    for key in ("output", "grad_input", "grad_weight"):
        if expected[key] is None and candidate[key] is None:
            continue
        errors[key] = relative_error(candidate[key], expected[key])
        if not errors[key] <= LAYER_TOLERANCE[key]:
            raise EquivalenceError(
                f"layer {label}: {names} differ in {key}: max relative error "
                f"{errors[key]:.3g} > tolerance {LAYER_TOLERANCE[key]:g} (shapes "
                f"{getattr(candidate[key], 'shape', None)} and "
                f"{getattr(expected[key], 'shape', None)})")
    return errors


def layer_runs(framework: str, spec: dict, x, weight, config: dict, torch=None) -> dict:
    """The implementations of one layer that a framework's process times, by name."""
    if framework == "minissc":
        runs = {"minissc": _minissc_layer(spec, x, weight)}
        if spec["kind"] == "pointwise":
            runs["minissc_group_pointwise"] = _minissc_layer(spec, x, weight, "group_pointwise")
        runs["reference"] = _reference_layer(spec, x, weight)
        return runs
    runs = {"torch": _torch_layer(torch, spec, x, weight)}
    if spec["kind"] == "ssc" and config["torch_dense"]:
        runs["torch_dense"] = _torch_layer(torch, spec, x, weight, "dense")
    return runs


def check_layers(specs: list[dict], torch, config: dict) -> list[dict]:
    """For each layer, the relative errors of every implementation against torch (or against
    minissc without torch), on the arrays that will be timed; raises EquivalenceError."""
    checks = []
    for index, spec in enumerate(specs):
        log(f"  check {index + 1}/{len(specs)}: {spec['label']}")
        x, weight, upstream = _layer_arrays(spec, seed=index)
        runs = layer_runs("minissc", spec, x, weight, config)
        if torch is not None:
            runs.update(layer_runs("torch", spec, x, weight, config, torch))
        calls = {name: _first_call(*run, upstream) for name, run in runs.items()}
        expected = "torch" if torch is not None else "minissc"
        errors = {f"{name} vs {expected}": _compare(spec["label"], call, calls[expected],
                                                    f"{name} and {expected}")
                  for name, call in calls.items() if name != expected}
        if torch is not None:
            errors["reference vs minissc"] = _compare(spec["label"], calls["reference"],
                                                      calls["minissc"], "reference and minissc")
        checks.append(errors)
    return checks


def time_layers(framework: str, specs: list[dict], config: dict, torch=None) -> list[dict]:
    """Times of every implementation of every layer, in this process (one framework)."""
    timings = []
    for index, spec in enumerate(specs):
        x, weight, upstream = _layer_arrays(spec, seed=index)
        timing = {}
        for name, run in layer_runs(framework, spec, x, weight, config, torch).items():
            if name == "reference" and not config.get("time_reference", True):
                continue
            first = _first_call(*run, upstream)
            if name == "reference":
                # a NumPy twin has no warm-up: its first call is one of the timed repeats
                forward_times, backward_times = _time_layer(*run, upstream,
                                                            config["reference_repeats"] - 1)
                timing[name] = _timing([first["forward_s"]] + forward_times,
                                       [first["backward_s"]] + backward_times)
            else:
                timing[name] = _timing(*_time_layer(*run, upstream, config["layer_repeats"]),
                                       first["seconds"])
            del first
        timings.append(timing)
    return timings


def worker_layers(args) -> list[dict]:
    """Time every layer of the task in this process, one framework."""
    task = json.loads(Path(args.task).read_text())
    torch = None
    if task["framework"] == "minissc":
        import minissc  # noqa: F401  (before NumPy: minissc sets single-threaded BLAS)
    else:
        import torch
    set_threads(args.threads, torch)
    return time_layers(task["framework"], task["specs"], task["config"], torch)


def round_configs(config: dict) -> list[dict]:
    """The config of each timing round: the repeats split over config["rounds"] rounds (at
    least one each); the NumPy twins are timed in the first round only."""
    split = {key: _per_round(config, key)
             for key in ("layer_repeats", "train_steps", "infer_steps")}
    return [dict(config, **split, time_reference=index == 0)
            for index in range(config["rounds"])]


def _per_round(config: dict, key: str) -> int:
    """config[key] repeats split over the rounds, rounded up (configs of runs before rounds
    existed have none: one round)."""
    return -(-config[key] // config.get("rounds", 1))


def timed_frameworks(torch) -> list[str]:
    """What the layer and network sections time: minissc, and with torch, torch as it comes
    and torch with freed memory kept (KEPT_MEMORY_ENV)."""
    return ["minissc"] + ([] if torch is None else ["torch", TORCH_KEPT])


def alternate_workers(name: str, frameworks: list[str], config: dict, threads: int,
                      task: dict) -> dict:
    """{framework: [result of each round]}: run the worker once per round and framework, in
    fresh processes, the frameworks alternating within every round. TORCH_KEPT is the torch
    worker with KEPT_MEMORY_ENV, without the dense-kernel variant of the SSC layers."""
    results = {framework: [] for framework in frameworks}
    for index, round_config in enumerate(round_configs(config)):
        for framework in frameworks:
            log(f"  timing {framework} (fresh process, round {index + 1}/{config['rounds']})")
            env, worker_config, worker_framework = None, round_config, framework
            if framework == TORCH_KEPT:
                worker_framework = "torch"
                env = dict(os.environ, **KEPT_MEMORY_ENV)
                worker_config = dict(round_config, torch_dense=False)
            results[framework].append(run_worker(name, threads, config["batch"], env=env,
                                                 task=dict(task, config=worker_config,
                                                           framework=worker_framework)))
    return results


def merge_layer_rounds(rounds: list[list[dict]]) -> list[dict]:
    """One timing per layer and implementation from several rounds: all their calls pooled,
    medians over the pool, the first call of the first round."""
    merged = []
    for per_round in zip(*rounds):
        layer = {}
        for name, first in per_round[0].items():
            parts = [timing[name] for timing in per_round if name in timing]
            layer[name] = _timing([t for part in parts for t in part["forward_s"]],
                                  [t for part in parts for t in part["backward_s"]],
                                  first.get("first_call_s"))
        merged.append(layer)
    return merged


def bench_layers(specs: list[dict], torch, config: dict, threads: int) -> list[dict]:
    """Check every layer here, then time each framework in fresh processes of its own,
    alternating rounds (`alternate_workers`)."""
    checks = check_layers(specs, torch, config)
    timings = {framework: merge_layer_rounds(rounds) for framework, rounds in
               alternate_workers("layers", timed_frameworks(torch), config, threads,
                                 dict(specs=specs)).items()}
    if TORCH_KEPT in timings:  # its worker is torch's: rename its timings
        timings[TORCH_KEPT] = [{TORCH_KEPT: layer["torch"]} for layer in timings[TORCH_KEPT]]
    results = []
    for index, spec in enumerate(specs):
        result = {key: spec[key] for key in ("label", "kind", "input_shape", "output_shape",
                                             "out_channels", "group_size", "kernel_size",
                                             "stride", "groups", "uses")}
        result["shuffle_groups"] = spec.get("shuffle_groups", 1)
        result["checks"] = checks[index]
        for framework_timings in timings.values():
            result.update(framework_timings[index])
        if torch is not None:
            minissc_total = result["minissc"]["total_median_s"]
            result["speedup_vs_torch"] = result["torch"]["total_median_s"] / minissc_total
            result["speedup_vs_torch_kept"] = (result[TORCH_KEPT]["total_median_s"]
                                               / minissc_total)
            if "torch_dense" in result:
                best = min(result["torch"]["total_median_s"],
                           result["torch_dense"]["total_median_s"])
                result["speedup_vs_best_torch"] = best / minissc_total
        results.append(result)
    return results


# ----------------------------------------------------------------------------------------------
# Section 2: whole networks
# ----------------------------------------------------------------------------------------------

def random_batch(batch: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, batch).astype(np.int64)
    return images, labels


def minissc_steps(model, batch: int):
    """(train_step, infer_step) closures for a minissc model on one random batch.

    train_step: forward (train mode), cross-entropy, backward, SGD step (momentum, decay);
    infer_step: forward in eval mode under no_grad.
    """
    import minissc.functional as F
    from minissc import Tensor, no_grad
    from minissc.optim import SGD
    images, labels = random_batch(batch)
    optimizer = SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def train_step():
        model.train()
        loss = F.cross_entropy(model(Tensor(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def infer_step():
        model.eval()
        with no_grad():
            model(Tensor(images))

    return train_step, infer_step


def torch_steps(torch, model, batch: int):
    """The same two closures for a PyTorch twin."""
    import torch.nn.functional as TF
    images, labels = random_batch(batch)
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)

    def train_step():
        model.train()
        loss = TF.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step():
        model.eval()
        with torch.no_grad():
            model(images)

    return train_step, infer_step


def build_minissc(name: str, options: dict, seed: int = 0):
    from minissc import manual_seed, models
    manual_seed(seed)
    return models.create(name, **options)


def build_torch(torch, name: str, options: dict, seed: int = 0):
    import torch_models
    torch.manual_seed(seed)
    return torch_models.create(name, **options)


def paired_models(torch, name: str, options: dict, float64: bool = False):
    """minissc's model and its torch twin with the same weights and running statistics.

    The running statistics are randomised first, so that eval mode does not normalise by the
    initial 0 and 1 (which would hide a mismatch in how they are used).
    """
    import numpy as np
    import torch_models
    model = build_minissc(name, options)
    rng = np.random.default_rng(1)
    for buffer_name, buffer in model.named_buffers():
        if buffer_name.endswith("running_mean"):
            buffer[...] = rng.standard_normal(buffer.shape) * 0.1
        else:
            buffer[...] = rng.uniform(0.5, 2.0, buffer.shape)
    twin = build_torch(torch, name, options)
    if float64:
        torch_models.minissc_model_to_float64(model)
        twin = twin.double()
    torch_models.load_minissc_weights(twin, model)
    return model, twin


def train_pass(torch, model, twin, images, labels):
    """One training-mode forward + backward of both; (logits, loss) of each side."""
    import torch.nn.functional as TF
    import minissc.functional as F
    from minissc import Tensor
    model.train()
    twin.train()
    logits = model(Tensor(images))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    twin_logits = twin(torch.from_numpy(images))
    twin_loss = TF.cross_entropy(twin_logits, torch.from_numpy(labels))
    twin_loss.backward()
    return (logits.data, loss.data), (twin_logits.detach().numpy(), twin_loss.detach().numpy())


def check_network(torch, name: str, options: dict):
    """Check that minissc's model and its twin compute the same thing; return the float32 pair
    that was checked (the timing processes load its weights) and the relative errors.

    float32, as timed: eval-mode logits, train-mode logits and loss.
    float64: train-mode logits, loss, every parameter gradient and the updated running
    statistics. Gradients are compared in float64 because in float32 a few ReLU inputs
    within rounding of 0 land on different sides in the two frameworks, which moves some
    batch-norm gradients by ~1e-2 relative at this small batch (for either framework against
    float64 torch): too coarse to catch a wrong formula. Raises EquivalenceError.
    """
    import numpy as np
    import torch_models
    from minissc import Tensor, no_grad
    images, labels = random_batch(CHECK_BATCH, seed=2)
    errors = {}
    model, twin = paired_models(torch, name, options)
    model.eval()
    twin.eval()
    with no_grad():
        logits = model(Tensor(images)).data
    with torch.no_grad():
        twin_logits = twin(torch.from_numpy(images)).numpy()
    errors["eval logits"] = relative_error(logits, twin_logits)
    ours, theirs = train_pass(torch, model, twin, images, labels)
    errors["train logits"] = relative_error(ours[0], theirs[0])
    errors["loss"] = relative_error(ours[1], theirs[1])
    model.zero_grad()

    model64, twin64 = paired_models(torch, name, options, float64=True)
    ours, theirs = train_pass(torch, model64, twin64, images.astype(np.float64), labels)
    errors["float64 train logits"] = relative_error(ours[0], theirs[0])
    errors["float64 loss"] = relative_error(ours[1], theirs[1])
    twin_grads = torch_models.gradients_in_minissc_layout(twin64, model64)
    # per parameter, relative to its largest gradient, or to 1e-6 of the model's largest for
    # the gradients that are 0 up to rounding (a bias followed by train-mode batch norm)
    floor = 1e-6 * max(float(np.abs(g).max()) for g in twin_grads.values())
    worst, worst_name = 0.0, None
    for parameter_name, parameter in model64.named_parameters():
        expected = twin_grads[parameter_name]
        error = (float(np.abs(parameter.grad - expected).max())
                 / max(float(np.abs(expected).max()), floor))
        if error >= worst:
            worst, worst_name = error, parameter_name
    errors["float64 gradients"], errors["worst gradient"] = worst, worst_name
    twin_buffers = dict(twin64.named_buffers())
    errors["float64 running stats"] = max(relative_error(b, twin_buffers[n].numpy())
                                          for n, b in model64.named_buffers())
    for key, tolerance in NETWORK_TOLERANCE.items():
        if not errors[key] <= tolerance:
            raise EquivalenceError(
                f"{model_label(name, options)}: minissc and its torch twin differ in {key}: "
                f"max relative error {errors[key]:.3g} > tolerance {tolerance:g} "
                f"(all errors: {errors})")
    return model, twin, errors


def time_steps(train_step, infer_step, batch: int, config: dict) -> dict:
    """First call (warm-up) and steady-state median of training and inference steps, where
    the CPUs went during the timed training steps (`cpu_use`), and each timed training
    step's steal share (`train_step_steal`, for `quiet_rate`; absent off Linux)."""
    result = {}
    for kind, step, steps in (("train", train_step, config["train_steps"]),
                              ("infer", infer_step, config["infer_steps"])):
        training = kind == "train"  # only training steps get their CPU use recorded
        times, steal = [], []
        for index in range(steps + 1):
            if training and index == 1:
                mark = cpu_mark()
            ticks_before = cpu_ticks() if training else None
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
            if training:
                steal.append(tick_share(ticks_before, cpu_ticks(), STEAL_TICKS))
        result.update(_step_timing(kind, times[0], times[1:], batch))
        if training:
            result.update(training_cpu_since(mark))
            if None not in steal[1:]:
                result["train_step_steal"] = steal[1:]
    return result


def cpu_mark() -> tuple:
    """This process's CPU seconds and the CPUs' clock ticks (`cpu_ticks`) now."""
    return time.process_time(), cpu_ticks()


def training_cpu_since(mark: tuple) -> dict:
    """The process's CPU seconds, and the VM's steal and total clock ticks, since `mark`, as
    the keys of a `time_steps` result that `cpu_use` reads."""
    cpu_before, ticks_before = mark
    ticks = cpu_ticks()
    used = {"train_process_cpu_s": time.process_time() - cpu_before}
    if ticks_before is not None and ticks is not None:
        used.update(train_steal_ticks=ticks[STEAL_TICKS] - ticks_before[STEAL_TICKS],
                    train_all_ticks=ticks[1] - ticks_before[1])
    return used


def cpu_use(timing: dict) -> dict:
    """Where the CPUs went during the timed training steps of a `time_steps` result: cores =
    the process's CPU seconds (all its threads) per second of steps, at most the thread
    count (less is time spent waiting: one thread's Python, a thread idle at a barrier);
    steal = the share of all the VM's CPU time that its hypervisor gave to something else.
    A slow run with steal is a busy host, not slower code. Empty for runs before these were
    recorded (2026-12-03d)."""
    if "train_process_cpu_s" not in timing:
        return {}
    use = {"cores": timing["train_process_cpu_s"] / sum(timing["train_step_s"])}
    if timing.get("train_all_ticks"):
        use["steal"] = timing["train_steal_ticks"] / timing["train_all_ticks"]
    return use


def _step_timing(kind: str, first_seconds: float, step_seconds: list, batch: int) -> dict:
    return {f"{kind}_first_step_s": first_seconds, f"{kind}_step_s": step_seconds,
            f"{kind}_median_s": median(step_seconds),
            f"{kind}_images_per_s": batch / median(step_seconds)}


def merge_step_rounds(per_round, batch: int) -> dict:
    """`time_steps` results of several rounds as one: the steps pooled, medians over the
    pool, the first step of the first round, CPU seconds and clock ticks summed."""
    result = {}
    for kind in ("train", "infer"):
        steps = [t for timing in per_round for t in timing[f"{kind}_step_s"]]
        result.update(_step_timing(kind, per_round[0][f"{kind}_first_step_s"], steps, batch))
    for key in ("train_process_cpu_s", "train_steal_ticks", "train_all_ticks"):
        if all(key in timing for timing in per_round):
            result[key] = sum(timing[key] for timing in per_round)
    if all("train_step_steal" in timing for timing in per_round):
        result["train_step_steal"] = [share for timing in per_round
                                      for share in timing["train_step_steal"]]
    return result


def quiet_rate(timing: dict, batch: int) -> tuple[float | None, int, int] | None:
    """(training images/s over the steps with at most STEAL_SHARE steal, or None if there
    were none; how many such steps; how many steps), or None for a run that did not record
    each step's steal. A rate of the steps the host left alone: what the code does, as
    against what the host allowed it."""
    if "train_step_steal" not in timing:
        return None
    quiet = [seconds for seconds, share in zip(timing["train_step_s"], timing["train_step_steal"])
             if share <= STEAL_SHARE]
    return (batch / median(quiet) if quiet else None), len(quiet), len(timing["train_step_s"])


def worker_networks(args) -> list[dict]:
    """Time every model of the task in this process, one framework, with the weights the
    equivalence check used (a minissc state_dict saved as .npz)."""
    task = json.loads(Path(args.task).read_text())
    torch = None
    if task["framework"] == "minissc":
        import minissc  # noqa: F401  (before NumPy: minissc sets single-threaded BLAS)
    else:
        import torch
        import torch_models
    set_threads(args.threads, torch)
    import numpy as np
    results = []
    for name, options, state_path in task["models"]:
        state = dict(np.load(state_path))
        if task["framework"] == "minissc":
            model = build_minissc(name, options)
            model.load_state_dict(state)
            steps = minissc_steps(model, args.batch)
        else:
            twin = build_torch(torch, name, options)
            torch_models.load_minissc_state(twin, state)
            steps = torch_steps(torch, twin, args.batch)
        results.append(time_steps(*steps, args.batch, task["config"]))
    return results


def bench_networks(torch, config: dict, batch: int, threads: int) -> list[dict]:
    """Check each model against its twin here, then time each framework in fresh processes,
    alternating rounds (`alternate_workers`)."""
    import numpy as np
    results, models = [], []
    folder = Path(tempfile.mkdtemp(prefix="minissc-benchmark-"))
    try:
        for index, (name, options) in enumerate(NETWORK_MODELS):
            label = model_label(name, options)
            result = {"model": name, "options": options, "label": label}
            if torch is not None:
                log(f"  check {label}")
                model, _, result["check"] = check_network(torch, name, options)
            else:
                model = build_minissc(name, options)
            state_path = folder / f"model{index}.npz"
            np.savez(state_path, **model.state_dict())
            models.append((name, options, str(state_path)))
            results.append(result)
        rounds = alternate_workers("networks", timed_frameworks(torch), config, threads,
                                   dict(models=models))
        for framework, framework_rounds in rounds.items():
            for result, per_round in zip(results, zip(*framework_rounds)):
                result[framework] = merge_step_rounds(per_round, batch)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if torch is not None:
        for result in results:
            for kind in ("train", "infer"):
                ours = result["minissc"][f"{kind}_images_per_s"]
                result[f"{kind}_speedup"] = ours / result["torch"][f"{kind}_images_per_s"]
                result[f"{kind}_speedup_vs_torch_kept"] = (
                    ours / result[TORCH_KEPT][f"{kind}_images_per_s"])
    return results


# ----------------------------------------------------------------------------------------------
# Sections 3 and 4: fresh processes (workers) for memory and start-up time
# ----------------------------------------------------------------------------------------------

def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, or ru_maxrss where /proc is missing.

    On Linux ru_maxrss survives fork + exec: a worker started by a parent holding 4 GB would
    report 4 GB. VmHWM belongs to the new program's memory map, so it starts afresh.
    """
    peak = _proc_status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker_memory(args) -> dict:
    """Peak RSS of `args.steps` training steps of one model in this fresh process."""
    torch = None
    if args.framework == "minissc":
        import minissc  # noqa: F401  (before NumPy: minissc sets single-threaded BLAS)
    else:
        import torch
    set_threads(args.threads, torch)
    name, options = args.model, json.loads(args.options)
    if args.framework == "minissc":
        train_step, _ = minissc_steps(build_minissc(name, options), args.batch)
    else:
        train_step, _ = torch_steps(torch, build_torch(torch, name, options), args.batch)
    rss_before = _proc_status_mb("VmRSS")
    peak_before = _peak_rss_mb()  # the peak of the imports and set-up, which a reset forgets
    reset = _reset_peak_rss()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - start)
    step_peak = _peak_rss_mb()  # since the reset, or since the start if it failed
    return {"framework": args.framework, "model": name, "options": options,
            "rss_before_first_step_mb": rss_before,
            "peak_during_steps_mb": step_peak,
            "step_delta_mb": step_peak - rss_before,
            "absolute_peak_mb": max(peak_before, step_peak),
            "peak_reset_worked": reset, "steps": args.steps, "step_s": times}


def worker_first_step(args) -> dict:
    """Time from process start (args.t0, the parent's perf_counter before it started this
    process) to the end of the first training step of sscresnet20; the clock is
    CLOCK_MONOTONIC, shared by all processes on Linux."""
    entered = time.perf_counter()
    import minissc  # noqa: F401
    imported = time.perf_counter()
    set_threads(args.threads)
    train_step, _ = minissc_steps(build_minissc("sscresnet20", {"r": 1}), args.batch)
    built = time.perf_counter()
    train_step()
    first = time.perf_counter()
    train_step()
    second = time.perf_counter()
    return {"start_to_first_step_end_s": first - args.t0,
            "interpreter_start_s": entered - args.t0, "import_s": imported - entered,
            "build_s": built - imported, "first_step_s": first - built,
            "second_step_s": second - first}


def run_worker(name: str, threads: int, batch: int, env=None, task=None, **options):
    """Run this script as worker `name` in a fresh process and return the result it prints.

    `task` (JSON-able) reaches the worker as a file; `options` as command-line flags.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
               "--threads", str(threads), "--batch", str(batch)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    with tempfile.TemporaryDirectory(prefix="minissc-benchmark-") as folder:
        if task is not None:
            task_path = Path(folder) / "task.json"
            task_path.write_text(json.dumps(task))
            command += ["--task", str(task_path)]
        if name == "first-step":
            command += ["--t0", repr(time.perf_counter())]  # the last thing before the start
        completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise RuntimeError(f"worker {name} {options} failed (exit {completed.returncode}):\n"
                       f"{completed.stderr[-3000:]}")


def worker_warmup(args) -> dict:
    """One small training and inference step of every network model, so that the Numba cache
    holds every kernel before the memory workers start (a compile would inflate their peak)."""
    start = time.perf_counter()
    import minissc  # noqa: F401
    set_threads(args.threads)
    for name, options in NETWORK_MODELS:
        train_step, infer_step = minissc_steps(build_minissc(name, options), 2)
        train_step()
        infer_step()
    return {"seconds": time.perf_counter() - start}


def bench_memory(torch, config: dict, batch: int, threads: int) -> list[dict]:
    log("  populating the Numba cache (fresh process)")
    run_worker("warmup", threads, batch)
    results = []
    frameworks = ["minissc"] + (["torch"] if torch is not None else [])
    for name, options in NETWORK_MODELS:
        for framework in frameworks:
            log(f"  {model_label(name, options)}: {framework} (fresh process)")
            results.append(run_worker("memory", threads, batch, framework=framework, model=name,
                                      options=json.dumps(options), steps=config["memory_steps"]))
    return results


def bench_compile(config: dict, batch: int, threads: int) -> dict:
    cache = tempfile.mkdtemp(prefix="minissc-numba-cache-")
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    try:
        log("  cold: empty Numba cache")
        cold = run_worker("first-step", threads, batch, env=env)
        warm = []
        for index in range(config["warm_starts"]):
            log(f"  warm {index + 1}/{config['warm_starts']}: populated cache")
            warm.append(run_worker("first-step", threads, batch, env=env))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    # Numba loads a cached kernel when it is first called, i.e. inside the first step; the
    # time to reach the first step is what the first step costs above a steady one.
    return {"cold": cold, "warm": warm,
            "warm_median_s": median([w["start_to_first_step_end_s"] for w in warm]),
            "warm_to_first_step_median_s": median([w["start_to_first_step_end_s"]
                                                   - w["second_step_s"] for w in warm])}


# ----------------------------------------------------------------------------------------------
# Section 5: targets, and the printed tables
# ----------------------------------------------------------------------------------------------

def _network(results: dict, name: str, options: dict) -> dict | None:
    return next((n for n in results.get("networks", [])
                 if n["model"] == name and n["options"] == options), None)


def evaluate_targets(results: dict) -> list[dict]:
    """Each target of the issue: its measured value, threshold and PASS / MISS (or n/a).
    The training targets are judged on all timed steps, as the issue sets them; their detail
    gives the same over the steps the host left alone (`quiet_rate`) when recorded."""
    targets = []
    batch = results["config"]["batch"]

    def add(name, value, threshold, higher_is_better=True, unit="x", detail=""):
        if value is None:
            status = "n/a"
        else:
            status = "PASS" if (value >= threshold if higher_is_better else value <= threshold) \
                else "MISS"
        targets.append({"target": name, "value": value, "threshold": threshold, "unit": unit,
                        "higher_is_better": higher_is_better, "status": status,
                        "detail": detail})

    ssc_layers = [layer for layer in results.get("layers", []) if layer["kind"] == "ssc"
                  and any(use.startswith("sscresnet20") for use in layer["uses"])]
    speedups = [(layer["speedup_vs_torch"], layer["label"]) for layer in ssc_layers
                if "speedup_vs_torch" in layer]
    worst = min(speedups) if speedups else (None, "")
    kept = [layer["speedup_vs_torch_kept"] for layer in ssc_layers
            if "speedup_vs_torch_kept" in layer]
    add("SSC layer fwd+bwd vs torch, every sscresnet20 shape (worst)", worst[0], 5.0,
        detail=worst[1] + (f"; vs torch with freed memory kept, worst {min(kept):.2f}x"
                           if kept else ""))
    for (name, options), threshold in ((("sscresnet20", {"r": 1}), 10.0),
                                       (("shiftresnet20", {"e": 3}), 2.0),
                                       (("resnet20", {}), 0.5)):
        network = _network(results, name, options) or {}
        kept = network.get("train_speedup_vs_torch_kept")
        details = [] if kept is None else [f"vs torch with freed memory kept: {kept:.2f}x"]
        quiet = [quiet_rate(network.get(side, {}), batch) for side in ("minissc", "torch")]
        if None not in quiet:
            ratio = (f"{quiet[0][0] / quiet[1][0]:.2f}x"
                     if quiet[0][0] is not None and quiet[1][0] is not None else "n/a")
            details.append(f"over the steps with at most {100 * STEAL_SHARE:.0f}% steal: {ratio} "
                           f"({quiet[0][1]} and {quiet[1][1]} of {quiet[0][2]} and "
                           f"{quiet[1][2]} steps)")
        add(f"{model_label(name, options)} training vs torch", network.get("train_speedup"),
            threshold, detail="; ".join(details))
    network = _network(results, "sscresnet20", {"r": 1})
    quiet = quiet_rate(network["minissc"], batch) if network else None
    add("sscresnet20 r=1 training images/s", network["minissc"]["train_images_per_s"]
        if network else None, 200.0, unit="img/s",
        detail="" if quiet is None else f"over the steps with at most "
        f"{100 * STEAL_SHARE:.0f}% steal: {_quiet_cell(quiet)}")
    memory = results.get("memory", [])
    ratios = []
    for name, options in NETWORK_MODELS:
        by_framework = {m["framework"]: m for m in memory
                        if m["model"] == name and m["options"] == options}
        if {"minissc", "torch"} <= set(by_framework):
            ratios.append((by_framework["minissc"]["step_delta_mb"]
                           / max(by_framework["torch"]["step_delta_mb"], 1e-9),
                           model_label(name, options)))
    worst = max(ratios) if ratios else (None, "")
    add("training-step peak memory / torch's (worst model)", worst[0], 1.0,
        higher_is_better=False, detail=worst[1])
    compile_result = results.get("compile")
    add("warm Numba cache: process start -> first training step (end of the first step "
        "minus a steady step)",
        compile_result["warm_to_first_step_median_s"] if compile_result else None, 3.0,
        higher_is_better=False, unit="s")
    return targets


def passing_range(target: dict) -> str:
    """'>= 5x', '>= 200 img/s', '<= 3 s': what passes a target of `evaluate_targets`."""
    unit = target["unit"] if target["unit"] == "x" else f" {target['unit']}"
    return f"{'>=' if target['higher_is_better'] else '<='} {target['threshold']:g}{unit}"


def _pooled(config: dict, key: str) -> str:
    """How many calls a median pools: "12 (3 alternating rounds of 4)", or "3" with one
    round."""
    rounds, per_round = config.get("rounds", 1), _per_round(config, key)
    if rounds == 1:
        return str(per_round)
    return f"{per_round * rounds} ({rounds} alternating rounds of {per_round})"


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _quiet_cell(quiet) -> str:
    """'208.1 (9/12)': a `quiet_rate` as images/s and steps, '-' when not recorded."""
    if quiet is None:
        return "-"
    rate, quiet_steps, steps = quiet
    return f"{'-' if rate is None else f'{rate:.1f}'} ({quiet_steps}/{steps})"


def _cpu_use_lines(networks: list[dict], batch: int) -> list[str]:
    """The report's table of `cpu_use` and `quiet_rate` for each network and framework; none
    for runs that did not record them."""
    frameworks = [name for name in ("minissc", "torch", TORCH_KEPT)
                  if any(cpu_use(network.get(name, {})) for network in networks)]
    if not frameworks:
        return []
    lines = ["", f"CPU use over the timed training steps: cores = the process's CPU seconds per "
                 f"second (of the threads), steal = the VM's CPU time its host gave to others, "
                 f"quiet = training images/s over the steps with at most "
                 f"{100 * STEAL_SHARE:.0f}% steal (how many of all)",
             f"{'model':18} " + " ".join(f"{name + ' cores':>16} {'steal':>6} {'quiet':>13}"
                                          for name in frameworks)]
    for network in networks:
        cells = []
        for name in frameworks:
            use = cpu_use(network.get(name, {}))
            cells.append((f"{use['cores']:>16.2f} " if "cores" in use else f"{'-':>16} ")
                         + (f"{100 * use['steal']:>5.1f}% " if "steal" in use else f"{'-':>6} ")
                         + f"{_quiet_cell(quiet_rate(network.get(name, {}), batch)):>13}")
        lines.append(f"{network['label']:18} " + " ".join(cells))
    worst = max((cpu_use(network.get(name, {})).get("steal", 0.0), network["label"], name)
                for network in networks for name in frameworks)
    if worst[0] > STEAL_SHARE:
        lines.append(f"WARNING: the VM's host took {100 * worst[0]:.0f}% of its CPU time while "
                     f"{worst[2]} timed {worst[1]} (steal): a thread that loses its CPU holds up "
                     f"the other at every parallel region, so these rates say more about the "
                     f"host than about the code")
    return lines


def format_report(results: dict) -> str:
    meta, config = results["meta"], results["config"]
    lines = [f"minissc benchmark, {config['mode']} mode, batch {config['batch']}, "
             f"{meta['threads']} threads, {meta['date']}",
             f"{meta['cpu']}, {meta['cores']} cores, {meta['ram_gib']} GiB; Python "
             f"{meta['python']}, NumPy {meta['numpy']}, Numba {meta['numba']} "
             f"({meta['numba_threading_layer']}"
             + (f", LLVM cpu {meta['llvm_cpu']}" if meta.get("llvm_cpu") else "")  # not up to q
             + f"), torch {meta['torch'] or 'absent'}; minissc "
             f"{meta['minissc']} at {meta['git_commit']}{' (dirty)' if meta['git_dirty'] else ''};"
             f" load average at start {meta['load_average_at_start'][0]:.2f}"
             + (f", CPUs {100 * meta['cpu_busy_at_start']:.0f}% busy over the second before"
                if meta.get("cpu_busy_at_start") is not None else "")]  # absent in older runs
    lines += [f"note: {note}" for note in results["notes"]]
    if meta.get("speed_at_start"):  # runs before 2026-12-02n have no speed probe
        lines.append("machine speed (`machine_speed`): " + "; ".join(
            f"{when} copy {speed['copy_gb_per_s']:.1f} GB/s, 1-thread matmul "
            f"{speed['matmul_gflop_per_s']:.1f} GFLOP/s"
            for when, speed in (("at start", meta["speed_at_start"]),
                                ("at end", meta.get("speed_at_end"))) if speed))
    if results.get("error"):
        lines.append(f"ERROR: {results['error']}")
    if meta.get("section_seconds"):
        steal = meta.get("section_steal", {})  # since 2026-12-03d
        lines.append("section times: " + ", ".join(
            f"{name} {seconds:.0f} s" + (f" (steal {100 * steal[name]:.1f}%)" if name in steal
                                         else "")
            for name, seconds in meta["section_seconds"].items())
            + f"; load average at end {meta.get('load_average_at_end', [0])[0]:.2f}")

    if results.get("layers"):
        lines += ["", f"1. Layers: median ms over {_pooled(config, 'layer_repeats')} calls "
                      f"(NumPy twin: {config['reference_repeats']}); speedup = torch time / "
                      f"minissc time, forward + backward",
                  f"{'layer':32} {'uses':>4} {'minissc fwd':>11} {'bwd':>8} {'1st call':>9} "
                  f"{'twin fwd':>9} {'bwd':>8} {'torch fwd':>9} {'bwd':>8} {'speedup':>8} "
                  f"{'kept f+b':>8} {'speedup':>8}"]
        for layer in results["layers"]:
            ours, twin = layer["minissc"], layer["reference"]
            theirs = layer.get("torch", {})
            lines.append(
                f"{layer['label']:32} {len(layer['uses']):>4} "
                f"{_ms(ours['forward_median_s']):>11} {_ms(ours['backward_median_s']):>8} "
                f"{_ms(ours['first_call_s']):>9} {_ms(twin['forward_median_s']):>9} "
                f"{_ms(twin['backward_median_s']):>8} {_ms(theirs.get('forward_median_s')):>9} "
                f"{_ms(theirs.get('backward_median_s')):>8} "
                f"{_ratio(layer.get('speedup_vs_torch')):>8} "
                f"{_ms(layer.get(TORCH_KEPT, {}).get('total_median_s')):>8} "
                f"{_ratio(layer.get('speedup_vs_torch_kept')):>8}")
            if "torch_dense" in layer:
                dense = layer["torch_dense"]
                lines.append(f"{'  torch as one grouped 3x3 conv':32} {'':>4} {'':>11} {'':>8} "
                             f"{'':>9} {'':>9} {'':>8} {_ms(dense['forward_median_s']):>9} "
                             f"{_ms(dense['backward_median_s']):>8} "
                             f"{_ratio(dense['total_median_s'] / ours['total_median_s']):>8}")
            if "minissc_group_pointwise" in layer:
                alt = layer["minissc_group_pointwise"]
                speedup = (theirs["total_median_s"] / alt["total_median_s"]) if theirs else None
                lines.append(f"{'  minissc group_pointwise_conv2d':32} {'':>4} "
                             f"{_ms(alt['forward_median_s']):>11} "
                             f"{_ms(alt['backward_median_s']):>8} "
                             f"{_ms(alt['first_call_s']):>9} {'':>9} {'':>8} {'':>9} {'':>8} "
                             f"{_ratio(speedup):>8}")

    if results.get("networks"):
        lines += ["", f"2. Networks: images/s, median of {_pooled(config, 'train_steps')} "
                      f"training steps (forward + backward + SGD) and "
                      f"{_pooled(config, 'infer_steps')} inference steps "
                      f"(eval, no_grad); first = the first step's seconds",
                  f"{'model':18} {'minissc train':>13} {'first':>7} {'torch train':>11} "
                  f"{'first':>7} {'speedup':>8} {'kept train':>10} {'speedup':>8} "
                  f"{'minissc infer':>13} {'torch infer':>11} {'speedup':>8} "
                  f"{'kept infer':>10} {'speedup':>8}"]
        for network in results["networks"]:
            ours, theirs = network["minissc"], network.get("torch", {})
            kept = network.get(TORCH_KEPT, {})

            def rate(result, key):
                return "-" if key not in result else f"{result[key]:.1f}"

            def first(result, key):
                return "-" if key not in result else f"{result[key]:.2f}s"

            lines.append(
                f"{network['label']:18} {rate(ours, 'train_images_per_s'):>13} "
                f"{first(ours, 'train_first_step_s'):>7} {rate(theirs, 'train_images_per_s'):>11} "
                f"{first(theirs, 'train_first_step_s'):>7} "
                f"{_ratio(network.get('train_speedup')):>8} "
                f"{rate(kept, 'train_images_per_s'):>10} "
                f"{_ratio(network.get('train_speedup_vs_torch_kept')):>8} "
                f"{rate(ours, 'infer_images_per_s'):>13} {rate(theirs, 'infer_images_per_s'):>11} "
                f"{_ratio(network.get('infer_speedup')):>8} "
                f"{rate(kept, 'infer_images_per_s'):>10} "
                f"{_ratio(network.get('infer_speedup_vs_torch_kept')):>8}")
        lines += _cpu_use_lines(results["networks"], config["batch"])

    if results.get("memory"):
        lines += ["", f"3. Training memory (MB), fresh process per row, {config['memory_steps']} "
                      f"steps: before = RSS before the first step, peak = peak RSS during the "
                      f"steps, delta = peak - before, absolute = the process's peak RSS",
                  f"{'model':18} {'framework':9} {'before':>8} {'peak':>8} {'delta':>8} "
                  f"{'absolute':>9}"]
        for row in results["memory"]:
            lines.append(f"{model_label(row['model'], row['options']):18} {row['framework']:9} "
                         f"{row['rss_before_first_step_mb']:>8.0f} "
                         f"{row['peak_during_steps_mb']:>8.0f} {row['step_delta_mb']:>8.0f} "
                         f"{row['absolute_peak_mb']:>9.0f}")

    if results.get("compile"):
        compile_result = results["compile"]

        def start_line(label, run):
            return (f"{label}: {run['start_to_first_step_end_s']:.2f} s from process start to "
                    f"the end of the first step (interpreter {run['interpreter_start_s']:.2f}, "
                    f"import {run['import_s']:.2f}, build {run['build_s']:.2f}, first step "
                    f"{run['first_step_s']:.2f}; a second step takes {run['second_step_s']:.2f})")

        lines += ["", "4. Start-up of sscresnet20 r=1 training in a new process",
                  start_line("cold cache", compile_result["cold"])]
        lines += [start_line(f"warm cache {i + 1}", run)
                  for i, run in enumerate(compile_result["warm"])]

    if results.get("targets"):
        lines += ["", "5. Targets"]
        for target in results["targets"]:
            value = target["value"]
            shown = "-" if value is None else (f"{value:.2f}{target['unit']}"
                                               if target["unit"] == "x"
                                               else f"{value:.2f} {target['unit']}")
            detail = f"  ({target['detail']})" if target["detail"] else ""
            lines.append(f"{target['status']:5} {target['target']}: {shown} "
                         f"(target {passing_range(target)}){detail}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="few repeats (the default): about 7 minutes on 2 idle cores")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="more repeats, 3 alternating rounds: about 20 minutes on 2 idle cores")
    parser.set_defaults(mode="quick")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of Numba and of torch (default 2)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file to write (default benchmarks/results/MODE-DATE.json)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip every PyTorch column, as when torch is not installed")
    # worker mode: one measurement in a fresh process (used by the memory and compile sections)
    parser.add_argument("--worker", choices=("layers", "networks", "memory", "first-step",
                                             "warmup"), help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--framework", choices=("minissc", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    args.sections = sections
    if args.threads < 1 or args.batch < 2:
        parser.error("--threads must be >= 1 and --batch >= 2")
    return args


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(results, indent=1) + "\n")
    temporary.replace(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker = {"layers": worker_layers, "networks": worker_networks,
                  "memory": worker_memory, "first-step": worker_first_step,
                  "warmup": worker_warmup}[args.worker]
        result = worker(args)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0

    started = time.perf_counter()
    import minissc  # noqa: F401  (before NumPy and torch: minissc sets single-threaded BLAS)
    torch, torch_missing = import_torch(args.no_torch)
    set_threads(args.threads, torch)
    config = dict(MODES[args.mode], mode=args.mode, batch=args.batch, sections=args.sections,
                  layer_tolerance=LAYER_TOLERANCE, network_tolerance=NETWORK_TOLERANCE,
                  check_batch=CHECK_BATCH, sgd=dict(lr=LR, momentum=MOMENTUM,
                                                    weight_decay=WEIGHT_DECAY))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or HERE / "results" / f"{args.mode}-{stamp}.json"
    results = {"meta": machine_info(args.threads, torch), "config": config, "notes": []}
    results["meta"]["cpu_busy_at_start"] = cpu_busy_share()
    results["meta"]["speed_at_start"] = machine_speed()
    note = busy_note(results["meta"]["load_average_at_start"][0],
                     results["meta"]["cpu_busy_at_start"])
    if note:
        results["notes"].append(note)
    if torch is None:
        results["notes"].append(f"PyTorch columns skipped: {torch_missing}")
    else:
        results["notes"].append("torch's SSC = (channel shuffle,) one-hot depthwise conv with the "
                                "stride, then grouped 1x1 conv; its shift = the one-hot "
                                "depthwise conv (the twin models use the same)")
        results["notes"].append(
            "kept = torch with freed memory kept: the malloc settings minissc gives itself "
            "(minissc/runtime.py), as " + " ".join(f"{k}={v}" for k, v in KEPT_MEMORY_ENV.items())
            + "; torch as it comes returns its large buffers to the kernel and page-faults "
            "them in again every step. The targets are the issue's, against torch as it comes")

    sections = {
        "layers": ("1. layers", lambda: bench_layers(distinct_layers(args.batch), torch, config,
                                                     args.threads)),
        "networks": ("2. networks", lambda: bench_networks(torch, config, args.batch,
                                                           args.threads)),
        "memory": ("3. memory", lambda: bench_memory(torch, config, args.batch, args.threads)),
        "compile": ("4. compile", lambda: bench_compile(config, args.batch, args.threads)),
    }
    results["meta"]["section_seconds"] = {}
    for name in SECTIONS:
        if name not in args.sections:
            continue
        title, run_section = sections[name]
        log(title)
        section_start, ticks_before = time.perf_counter(), cpu_ticks()
        try:
            results[name] = run_section()
        except EquivalenceError as error:
            results["error"] = f"equivalence check failed: {error}"
            write_json(out, results)
            banner = "!" * 78
            log(f"\n{banner}\nEQUIVALENCE CHECK FAILED: minissc and what it is compared with "
                f"compute different\nthings, so the benchmark stops here.\n{error}\n{banner}")
            return 2
        results["meta"]["section_seconds"][name] = time.perf_counter() - section_start
        steal = tick_share(ticks_before, cpu_ticks(), STEAL_TICKS)
        if steal is not None:
            results["meta"].setdefault("section_steal", {})[name] = steal
        results["meta"][f"load_average_after_{name}"] = os.getloadavg()
        write_json(out, results)  # partial results survive a crash in a later section
    results["targets"] = evaluate_targets(results)
    results["meta"]["load_average_at_end"] = os.getloadavg()
    results["meta"]["speed_at_end"] = machine_speed()
    results["meta"]["wall_time_s"] = time.perf_counter() - started
    write_json(out, results)
    print(format_report(results))
    print(f"\nwrote {out} ({results['meta']['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
