"""Tests for delit_cache.lighting.envcode (the lead's four-channel env encoding)."""

from __future__ import annotations

import pytest
import torch

from delit_cache.lighting.envcode import M_REF, decode_env, encode_env


def test_roundtrip_relative_error_over_eight_decades():
    gen = torch.Generator().manual_seed(0)
    mag = 10 ** torch.linspace(-3, 5, 4096)
    colour = 0.05 + torch.rand(3, 4096, generator=gen)  # non-gray, channel ratios up to ~20
    hdr = (colour / colour.amax(0, keepdim=True) * mag).reshape(3, 64, 64)
    back = decode_env(encode_env(hdr))
    rel = ((back - hdr).abs() / hdr).max().item()
    assert rel < 1e-3  # the docstring claims 0.1 %; the issue asks for 1 %


def test_shapes_and_range():
    hdr = torch.rand(2, 3, 8, 16) * 1e4
    code = encode_env(hdr)
    assert code.shape == (2, 4, 8, 16)
    assert code.min() >= 0 and code.max() <= 1
    assert encode_env(hdr[0]).shape == (4, 8, 16)
    assert decode_env(code).shape == (2, 3, 8, 16)
    assert decode_env(code[0]).shape == (3, 8, 16)


def test_black_and_clipping():
    zero = torch.zeros(3, 2, 2)
    assert torch.equal(encode_env(zero), torch.zeros(4, 2, 2))
    assert torch.equal(decode_env(encode_env(zero)), zero)
    huge = torch.full((3, 1, 1), 1e7)
    code = encode_env(huge)
    assert code[3].item() == pytest.approx(1.0)
    assert decode_env(code).max().item() == pytest.approx(M_REF, rel=1e-3)
    neg = encode_env(torch.full((3, 1, 1), -5.0))
    assert torch.equal(neg, torch.zeros(4, 1, 1))


def test_wrong_channels_raise():
    with pytest.raises(ValueError):
        encode_env(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError):
        decode_env(torch.zeros(3, 2, 2))


def test_gradients_flow():
    code = torch.rand(1, 4, 4, 4, requires_grad=True)
    decode_env(code).sum().backward()
    assert torch.isfinite(code.grad).all() and code.grad.abs().sum() > 0
