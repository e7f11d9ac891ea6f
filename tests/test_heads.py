"""DelitHeads and DelitModel: shapes, identity start, gradients, frozen VAE."""

import pytest
import torch

from delit_cache.lighting.envcode import decode_env
from delit_cache.models import (
    DEFAULT_CONFIG,
    DelitConfig,
    PortraitTransform,
    create_heads,
    create_model_and_transforms,
)

SMALL = DelitConfig(extractor_width=32, extractor_blocks=1, flat_width=32, env_width=32, env_dim=64)


def test_default_heads_size_is_in_budget():
    n = create_heads(DEFAULT_CONFIG).num_parameters()
    assert 3_000_000 <= n <= 12_000_000, n


@pytest.mark.parametrize("side", [64, 32, 9])
def test_heads_output_shapes(side):
    heads = create_heads(SMALL, seed=0)
    out = heads(torch.randn(2, 16, side, side + 3))
    assert out["flat_latent"].shape == (2, 16, side, side + 3)
    assert out["env_code"].shape == (2, 4, 128, 256)
    assert torch.isfinite(out["env_code"]).all()


def test_infer_clamps_env_code_to_the_encoding_range(tiny_vae):
    heads = create_heads(SMALL, seed=0)
    with torch.no_grad():  # push the raw code far outside [0, 1]
        heads.env_decoder.global_map[-1].bias.fill_(3.0)
    model, _ = create_model_and_transforms(tiny_vae, heads)
    out = model.infer(torch.rand(1, 3, 32, 32))
    assert out["env_code"].min() >= 0.0 and out["env_code"].max() == 1.0
    assert torch.isfinite(out["env"]).all()


def test_untrained_flat_head_is_identity():
    heads = create_heads(SMALL, seed=0)
    latent = torch.randn(1, 16, 16, 16)
    assert torch.equal(heads(latent)["flat_latent"], latent)
    heads.set_latent_stats(torch.linspace(-1, 1, 16), torch.linspace(0.05, 2, 16))
    torch.testing.assert_close(heads(latent)["flat_latent"], latent, atol=1e-6, rtol=0)


def test_latent_stats_standardise_the_input():
    heads = create_heads(SMALL, seed=0)
    with torch.no_grad():  # a non-zero flat delta
        heads.flat_proj.delta.weight.normal_(0, 0.01)
    latent = torch.randn(2, 16, 8, 8)
    mean, std = torch.linspace(-2, 2, 16), torch.linspace(0.05, 3, 16)
    ref = heads(latent)
    heads.set_latent_stats(mean, std)
    out = heads(latent * std[:, None, None] + mean[:, None, None])
    # a latent that is an affine copy of another gives the same env and the same flat delta
    torch.testing.assert_close(out["env_code"], ref["env_code"], atol=1e-5, rtol=1e-5)
    want = (ref["flat_latent"] - latent) * std[:, None, None]
    got = out["flat_latent"] - (latent * std[:, None, None] + mean[:, None, None])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_flat_path_alone_matches_forward():
    heads = create_heads(SMALL, seed=0)
    with torch.no_grad():
        heads.flat_proj.delta.weight.normal_(0, 0.01)
    heads.set_latent_stats(torch.linspace(-1, 1, 16), torch.linspace(0.5, 2, 16))
    latent = torch.randn(2, 16, 8, 8)
    flat = heads.flat_latent(latent)
    assert not torch.allclose(flat, latent)  # the delta is really applied
    torch.testing.assert_close(flat, heads(latent)["flat_latent"], atol=0, rtol=0)
    with pytest.raises(ValueError, match="expected latents"):
        heads.flat_latent(torch.randn(2, 8, 8, 8))


def test_env_maps_are_the_decoded_env_code_in_batches():
    heads = create_heads(SMALL, seed=0).eval()
    latent = torch.randn(5, 16, 8, 8)
    with torch.no_grad():
        whole = decode_env(heads(latent)["env_code"].float())
    # batches of 2 against one of 5: float32 sums in another order
    torch.testing.assert_close(heads.env_maps(latent, batch_size=2), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("mean", "std"),
    [
        (torch.zeros(15), torch.ones(15)),
        (torch.zeros(16), torch.zeros(16)),
        (torch.full((16,), float("nan")), torch.ones(16)),
    ],
)
def test_bad_latent_stats_are_refused(mean, std):
    with pytest.raises(ValueError, match="latent stats"):
        create_heads(SMALL).set_latent_stats(mean, std)


def test_seeded_heads_are_reproducible_and_match_golden_values():
    latent = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    a = create_heads(SMALL, seed=123)(latent)["env_code"]
    b = create_heads(SMALL, seed=123)(latent)["env_code"]
    c = create_heads(SMALL, seed=124)(latent)["env_code"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Golden values for this seed and input (float32, CPU); a change here means the
    # architecture or its initialisation changed.
    assert a.mean().item() == pytest.approx(GOLDEN_ENV_MEAN, abs=1e-4)
    assert a.std().item() == pytest.approx(GOLDEN_ENV_STD, abs=1e-4)


GOLDEN_ENV_MEAN = 0.5912614
GOLDEN_ENV_STD = 0.1089610


def test_heads_reject_wrong_channel_count():
    with pytest.raises(ValueError, match="expected latents"):
        create_heads(SMALL)(torch.randn(1, 3, 16, 16))


def test_config_round_trip_and_unknown_field():
    cfg = DelitConfig(env_query_grid=(4, 8), env_size=(64, 128))
    assert DelitConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown DelitConfig fields"):
        DelitConfig.from_dict({"nope": 1})


def test_bad_env_size_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        create_heads(DelitConfig(env_size=(100, 256)))


def test_gradients_reach_heads_but_never_the_vae(tiny_vae):
    model, _ = create_model_and_transforms(tiny_vae, create_heads(SMALL, seed=0))
    model.train()
    assert not model.vae.training
    assert all(not m.training for m in model.vae.modules())
    out = model(torch.rand(2, 3, 32, 32))
    loss = out["flat_latent"].square().mean() + out["env_code"].mean()
    loss.backward()
    assert all(p.grad is None for p in model.vae.parameters())
    assert all(not p.requires_grad for p in model.vae.parameters())
    grads = [p.grad for p in model.heads.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_infer_returns_named_outputs_at_input_size(tiny_vae):
    model, _ = create_model_and_transforms(tiny_vae, create_heads(SMALL, seed=0))
    images = torch.rand(2, 3, 36, 44)
    out = model.infer(images)
    assert out["flat"].shape == (2, 3, 36, 44)
    assert 0.0 <= out["flat"].min() and out["flat"].max() <= 1.0
    assert out["env"].shape == (2, 3, 128, 256)
    assert torch.allclose(out["env"], decode_env(out["env_code"]))
    # An untrained model's flat output is the input through the codec.
    codec = tiny_vae.decode(tiny_vae.encode(images), size=(36, 44))
    assert torch.allclose(out["flat"], codec, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 300, 200), (3, 120, 512), (3, 37, 81)])
def test_transform_round_trip_keeps_size_and_content(shape):
    transform = PortraitTransform(128)
    yy, xx = torch.meshgrid(
        torch.linspace(0, 1, shape[1]), torch.linspace(0, 1, shape[2]), indexing="ij"
    )
    image = torch.stack([yy, xx, 0.5 * (yy + xx)])  # smooth, so resampling is near lossless
    square, placement = transform(image)
    assert square.shape == (3, 128, 128)
    back = transform.restore(square, placement)
    assert back.shape == shape
    assert (back - image).abs().mean() < 0.01


def test_transform_rejects_bad_sizes():
    with pytest.raises(ValueError, match="multiple of 8"):
        PortraitTransform(100)
    with pytest.raises(ValueError, match=r"\[3,H,W\]"):
        PortraitTransform(64)(torch.rand(1, 3, 8, 8))


def test_up_block_equals_upsampling_then_convolution():
    """The folded (transposed-convolution) UpBlock is the same function (and gradient) as
    nearest x2 upsampling followed by the wrap-around 3x3 convolution, with the same weights."""
    import torch.nn.functional as F

    from delit_cache.models.env_decoder import UpBlock

    torch.manual_seed(0)
    for cin, cout, h, w in [(6, 4, 4, 8), (3, 5, 5, 6)]:
        block = UpBlock(cin, cout)
        x = torch.randn(2, cin, h, w, requires_grad=True)
        reference = F.silu(block.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))
        out = block(x)
        assert out.shape == (2, cout, 2 * h, 2 * w)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, [x, block.conv.conv.weight, block.conv.conv.bias], g)
        want = torch.autograd.grad(reference, [x, block.conv.conv.weight, block.conv.conv.bias], g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_env_decoder_training_and_inference_attention_agree():
    """Training on the CPU takes the math attention kernel, inference the default one: the
    same outputs."""
    from delit_cache.models.config import DelitConfig
    from delit_cache.models.env_decoder import EnvDecoder

    torch.manual_seed(0)
    cfg = DelitConfig(env_width=16, env_dim=32, env_heads=4, env_min_channels=8)
    decoder = EnvDecoder(cfg).eval()
    x = torch.randn(2, cfg.env_channels, 16, 16)
    with torch.no_grad():
        reference = decoder(x)
    trained = decoder(x)["env_code"]
    assert trained.requires_grad
    torch.testing.assert_close(trained.detach(), reference["env_code"], atol=1e-5, rtol=1e-5)


def test_light_head_reads_a_unit_direction_and_starts_overhead():
    """It starts straight up whatever the input, outputs unit directions, and reads both the
    image features and the decoder's map (which it does not train)."""
    from delit_cache.models.light_head import LightHead

    torch.manual_seed(0)
    head = LightHead(width=16, grid=4).eval()
    pooled = torch.randn(3, 16, 4, 4)
    code = torch.rand(3, 4, 32, 64, requires_grad=True)
    torch.testing.assert_close(head(pooled, code), torch.tensor([[0.0, 1.0, 0.0]]).expand(3, 3))
    with torch.no_grad():
        head.out[-1].weight.normal_(0, 0.5)
    direction = head(pooled, code)
    torch.testing.assert_close(direction.norm(dim=1), torch.ones(3))
    assert not torch.allclose(direction[0], direction[1])  # depends on the image
    other_map = head(pooled, code.detach().flip(-1))
    assert not torch.allclose(direction, other_map)  # and on the map
    direction.sum().backward()
    assert code.grad is None


def test_background_matte_blends_to_the_learned_background():
    from delit_cache.models.projections import BackgroundMatte

    matte = BackgroundMatte(width=8, latent_channels=4)
    hidden, flat = torch.randn(2, 8, 5, 5), torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        matte.background.copy_(torch.arange(4.0)[:, None, None])
        closed = matte(hidden, flat)
        matte.logit.bias.fill_(30.0)
        opened = matte(hidden, flat)
    assert (closed - flat).abs().max() < 0.003 * (flat - matte.background).abs().max()
    torch.testing.assert_close(opened, matte.background.expand(2, 4, 5, 5))


def test_pano_upsample_wraps_in_longitude():
    """The coarse env map is upsampled as a panorama: away from the seam it is plain bilinear
    upsampling; rotating the input by one column rotates the output by one factor's worth of
    columns exactly (no seam where longitude wraps); a non-integer factor is refused."""
    import torch.nn.functional as F

    from delit_cache.models.layers import pano_upsample

    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 16)
    out = pano_upsample(x, (128, 256))
    plain = F.interpolate(x, size=(128, 256), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., 16:-16], plain[..., 16:-16])
    assert (out - plain).abs().max() > 0.1  # plain upsampling clamps at the seam instead
    rolled = pano_upsample(torch.roll(x, 1, dims=-1), (128, 256))
    torch.testing.assert_close(rolled, torch.roll(out, 16, dims=-1))
    with pytest.raises(ValueError, match="integer factor"):
        pano_upsample(x, (100, 256))


def test_pano_upsample_is_bilinear_on_the_wrapped_map():
    """``pano_pad`` is one wrapped column each side and one replicated row top and bottom;
    the matrix form of ``pano_upsample`` is ``F.interpolate`` (bilinear, half-pixel centres)
    of that padded map: the same values and the same gradient, in float32 and float64."""
    import torch.nn.functional as F

    from delit_cache.models.layers import pano_pad, pano_upsample

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        x = torch.randn(2, 3, 4, 8, dtype=dtype, requires_grad=True)
        got = pano_upsample(x, (16, 32))
        padded = F.pad(F.pad(x, (1, 1, 0, 0), mode="circular"), (0, 0, 1, 1), mode="replicate")
        assert torch.equal(pano_pad(x), padded)
        g = torch.randn_like(padded)
        (a,) = torch.autograd.grad(pano_pad(x), x, g)
        (b,) = torch.autograd.grad(padded, x, g, retain_graph=True)
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
        ref = F.interpolate(padded, scale_factor=4, mode="bilinear", align_corners=False)
        ref = ref[..., 4:20, 4:36]
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
        g = torch.randn_like(got)
        (a,) = torch.autograd.grad(got, x, g)
        (b,) = torch.autograd.grad(ref, x, g)
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    from delit_cache.models.layers import _interp_matrix

    _interp_matrix.cache_clear()  # so that the matrices are first made under inference mode
    with torch.inference_mode():  # its cached matrices, first made here, can train later
        pano_upsample(torch.randn(1, 1, 3, 5), (6, 10))
    x = torch.randn(1, 1, 3, 5, requires_grad=True)
    pano_upsample(x, (6, 10)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_heads_with_a_light_head_move_the_maps_light_to_its_direction(tiny_vae):
    """env_hdr: the decoded map with its brightest light moved to light_dir; infer returns
    the direction, and with flip_average the mirror pass's direction is mirrored back."""
    import dataclasses

    from delit_cache.lighting.envcode import encode_env
    from delit_cache.lighting.envmap import direction_grid
    from delit_cache.lighting.sphere_metrics import angle_between_deg, brightest_direction
    from delit_cache.models import DelitHeads

    grid = direction_grid(128, 256)
    sun = torch.nn.functional.normalize(torch.tensor([0.5, 0.6, -0.6]), dim=0)
    env = 0.3 + 50 * torch.exp((torch.einsum("chw,c->hw", grid, sun) - 1) * 80)
    code = encode_env(env.expand(3, -1, -1))[None]
    target = torch.nn.functional.normalize(torch.tensor([[-0.7, 0.2, 0.5]]), dim=1)
    moved = DelitHeads.env_hdr({"env_code": code, "light_dir": target})
    assert angle_between_deg(brightest_direction(moved), target).item() < 2.0
    torch.testing.assert_close(DelitHeads.env_hdr({"env_code": code}), decode_env(code))

    heads = create_heads(dataclasses.replace(SMALL, light_head=True), seed=0)
    with torch.no_grad():  # the same direction from any image, off the mirror plane
        heads.env_decoder.light_head.out[-1].bias.copy_(torch.tensor([0.6, 0.0, 0.8]))
    model, _ = create_model_and_transforms(tiny_vae, heads)
    images = torch.rand(2, 3, 32, 32)
    out = model.infer(images)
    torch.testing.assert_close(out["light_dir"], torch.tensor([[0.6, 0.0, 0.8]]).expand(2, 3))
    flipped = model.infer(images, flip_average=True)
    torch.testing.assert_close(flipped["light_dir"], torch.tensor([[0.0, 0.0, 1.0]]).expand(2, 3))
    assert torch.isfinite(flipped["env"]).all() and flipped["env"].shape == (2, 3, 128, 256)


def test_light_inputs_give_the_light_head_what_forward_gives_it():
    """A run that trains the light head alone reads ``light_inputs`` once per sample: the
    head's ``read`` of them must be ``forward``'s direction."""
    import dataclasses

    heads = create_heads(dataclasses.replace(SMALL, light_head=True), seed=0).eval()
    with torch.no_grad():
        heads.env_decoder.light_head.out[-1].weight.normal_(0, 0.5)
    latent = torch.randn(3, 16, 12, 12)
    inputs = heads.light_inputs(latent)
    assert set(inputs) == {"light_pooled", "light_map"} and not inputs["light_map"].requires_grad
    with torch.no_grad():
        direction = heads(latent)["light_dir"]
    read = heads.env_decoder.light_head.read(inputs["light_pooled"], inputs["light_map"])
    torch.testing.assert_close(read, direction)
    assert not torch.allclose(read[0], read[1])
