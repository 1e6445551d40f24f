"""Model FLOPs, padding and MFU of the benchmarks (rewire_lobes/grid/throughput.py)."""

import pytest
import torch

from rewire_lobes.grid.cost import Quadratic, count_flops, encoder_model
from rewire_lobes.grid.throughput import (
    GPU_PEAKS,
    device_peak,
    encoder_fits,
    model_flops,
    padding_share,
)
from rewire_lobes.upstream.encoder import random_encoder_config


def test_model_flops_count_each_view_at_its_own_length():
    fit = Quadratic(1.0, 2.0, 0.5)
    assert model_flops(fit, [16000, 32000]) == pytest.approx((1 + 2 + 0.5) + (1 + 4 + 2))


def test_padding_share_pads_each_group_to_its_longest():
    assert padding_share([[4, 2], [3]]) == pytest.approx(1 - 9 / 11)
    assert padding_share([[5], [7]]) == 0.0


def test_encoder_fits_match_a_count_on_the_real_model():
    config = random_encoder_config("tiny")
    fits = encoder_fits(config, modes=("forward",))
    model = encoder_model(config)
    wavs = torch.randn(1, 24000)

    def forward():
        with torch.no_grad():
            model(wavs, output_hidden_states=True)

    assert fits["forward"](1.5) == pytest.approx(count_flops(forward), rel=1e-6)


def test_the_peak_is_the_datasheets_for_a_listed_gpu_else_measured(monkeypatch):
    peak, basis = device_peak("cpu")
    assert peak > 1e8 and basis.startswith("measured")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert device_peak("cuda") == (GPU_PEAKS["H200"], "datasheet dense bf16 of H200")
