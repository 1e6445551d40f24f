"""Measured throughput against the hardware: model FLOPs of what was timed, and MFU.

The benchmarks time real passes; this module turns their view lengths into *model* FLOPs
(counted with ``FlopCounterMode`` on the encoder's own config: :func:`encoder_fits`), so
that a run reports achieved FLOP/s and MFU = achieved ÷ peak. Model FLOPs count the
useful work only (each view at its own length): padding and GradCache's second forward
pass are overhead, not model FLOPs, as in the usual MFU convention.

The peak is the datasheet's dense bf16 figure for the GPUs listed in :data:`GPU_PEAKS`;
elsewhere (a CPU, an unlisted GPU) it is measured: the best of a few large matrix
products in the dtype of the run (:func:`measured_matmul_peak`), so a CPU's "MFU" reads as
the share of what its GEMM kernels reach.
"""

import time

import torch

from rewire_lobes.grid.cost import SAMPLE_RATE, fit_encoder

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets (SXM parts).
GPU_PEAKS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362.05e12}


def encoder_fits(config, modes=("forward", "train")):
    """``{mode: Quadratic}``: FLOPs of one item of ``T`` seconds of ``config``'s encoder,
    counted on the meta device (no weights, no time)."""
    return fit_encoder(config, modes=modes).fits


def model_flops(fit, view_samples):
    """Model FLOPs of views of these lengths (samples at 16 kHz), each at its own length."""
    return sum(fit(n / SAMPLE_RATE) for n in view_samples)


def padding_share(groups):
    """The share of padded samples when each group of view lengths is padded to its longest."""
    valid = sum(sum(group) for group in groups)
    padded = sum(len(group) * max(group) for group in groups if group)
    return 1.0 - valid / padded if padded else 0.0


def measured_matmul_peak(device, dtype=torch.float32, size=2048, repeats=5):
    """FLOP/s of the best of ``repeats`` ``size``-square matrix products on ``device``."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms the kernels up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def device_peak(device, dtype=torch.float32):
    """``(FLOP/s, basis)``: the datasheet's bf16 peak of a listed GPU, else measured."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for model, peak in GPU_PEAKS.items():
            if model in name:
                return peak, f"datasheet dense bf16 of {model}"
    peak = measured_matmul_peak(device, dtype)
    return peak, (f"measured: best 2048x2048 {str(dtype).replace('torch.', '')} matmul, "
                  f"{torch.get_num_threads()} torch threads" if device.type == "cpu"
                  else f"measured: best 2048x2048 {dtype} matmul")
