"""Shared test fixtures: a tiny Wan-2.1-layout VAE saved in every supported form, and bad files.

Fixtures (all session-scoped; names are stable, other test files rely on them):

* ``tiny_vae_state``       -- the state dict (dict[str, Tensor]) of a seeded random
                              ``VideoVAE_(dim=8, z_dim=16)``: the Wan 2.1 VAE layout, narrow.
* ``tiny_vae_dir``         -- a model folder holding ``Wan2.1_VAE.pth``.
* ``tiny_vae_pth``         -- that ``Wan2.1_VAE.pth`` (a raw state dict).
* ``tiny_vae_safetensors`` -- ``wan_2.1_vae.safetensors`` with the same keys.
* ``tiny_vae_prefixed``    -- a larger checkpoint: the VAE under ``vae.`` plus DiT-like keys.
* ``tiny_vae_forms``       -- dict form-name -> path of every accepted form (the above plus
                              ``{"state_dict": ...}``/``{"model_state": ...}`` wrappers, a
                              legacy (non-zip) torch file, a safetensors folder, a
                              ``first_stage_model.`` safetensors file).
* ``tiny_vae``             -- ``load_wan_vae(tiny_vae_pth)``: a loaded ``WanVAE`` (float32,
                              CPU, fast path on). Shared: do not modify it in a test.
* ``bad_vae_files``        -- dict name -> (path, [substrings the error message must hold]).

``TINY_VAE_DIM`` is the width of the tiny model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

TINY_VAE_DIM = 8
TINY_VAE_SEED = 1234


def _randomise_(model: torch.nn.Module, seed: int) -> None:
    """Seeded, non-degenerate weights: fan-in-scaled convs, varied RMS-norm gammas, biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.1 * noise)


def build_tiny_state(dim: int = TINY_VAE_DIM, z_dim: int = 16, seed: int = TINY_VAE_SEED):
    """State dict of a seeded random ``VideoVAE_(dim, z_dim)`` (float32, CPU)."""
    from diffsynth.models.wan_video_vae import VideoVAE_

    model = VideoVAE_(dim=dim, z_dim=z_dim)
    _randomise_(model, seed)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _meta_zeros_state(cls_name: str, **kwargs) -> dict[str, torch.Tensor]:
    """Zero tensors with the keys and shapes of DiffSynth's ``cls_name(**kwargs)`` (cheap)."""
    import diffsynth.models.wan_video_vae as wvv

    with torch.device("meta"):
        model = getattr(wvv, cls_name)(**kwargs)
    return {k: torch.zeros(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_vae_state() -> dict[str, torch.Tensor]:
    return build_tiny_state()


@pytest.fixture(scope="session")
def tiny_vae_root(tmp_path_factory, tiny_vae_state) -> Path:
    """Folder with every accepted form of the tiny VAE (see ``tiny_vae_forms``)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny_vae")
    state = tiny_vae_state
    (root / "model").mkdir()
    torch.save(state, root / "model" / "Wan2.1_VAE.pth")
    torch.save({"state_dict": state, "epoch": 3}, root / "wrapped_state_dict.pth")
    torch.save({"model_state": state}, root / "wrapped_model_state.pth")
    torch.save(state, root / "legacy.pth", _use_new_zipfile_serialization=False)
    save_file(state, str(root / "wan_2.1_vae.safetensors"))
    (root / "st_model").mkdir()
    save_file(state, str(root / "st_model" / "wan_2.1_vae.safetensors"))
    dit = {
        "dit.blocks.0.self_attn.q.weight": torch.randn(4, 4),
        "dit.patch_embedding.weight": torch.randn(4, 16, 1, 2, 2),
    }
    torch.save({**dit, **{f"vae.{k}": v for k, v in state.items()}}, root / "prefixed.pth")
    save_file(
        {f"first_stage_model.{k}": v for k, v in state.items()},
        str(root / "prefixed.safetensors"),
    )
    return root


@pytest.fixture(scope="session")
def tiny_vae_forms(tiny_vae_root) -> dict[str, Path]:
    root = tiny_vae_root
    return {
        "folder": root / "model",
        "pth": root / "model" / "Wan2.1_VAE.pth",
        "wrapped_state_dict": root / "wrapped_state_dict.pth",
        "wrapped_model_state": root / "wrapped_model_state.pth",
        "legacy_pth": root / "legacy.pth",
        "safetensors": root / "wan_2.1_vae.safetensors",
        "safetensors_folder": root / "st_model",
        "prefixed_pth": root / "prefixed.pth",
        "prefixed_safetensors": root / "prefixed.safetensors",
    }


@pytest.fixture(scope="session")
def tiny_vae_dir(tiny_vae_forms) -> Path:
    return tiny_vae_forms["folder"]


@pytest.fixture(scope="session")
def tiny_vae_pth(tiny_vae_forms) -> Path:
    return tiny_vae_forms["pth"]


@pytest.fixture(scope="session")
def tiny_vae_safetensors(tiny_vae_forms) -> Path:
    return tiny_vae_forms["safetensors"]


@pytest.fixture(scope="session")
def tiny_vae_prefixed(tiny_vae_forms) -> Path:
    return tiny_vae_forms["prefixed_pth"]


@pytest.fixture(scope="session")
def tiny_vae(tiny_vae_pth):
    from delit_cache.vae import load_wan_vae

    return load_wan_vae(tiny_vae_pth)


@pytest.fixture(scope="session")
def bad_vae_files(
    tmp_path_factory, tiny_vae_state, tiny_vae_pth, tiny_vae_safetensors
) -> dict[str, tuple[Path, list]]:
    """Files and folders ``load_wan_vae`` must reject, with what each error has to say."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("bad_vae")
    files: dict[str, tuple[Path, list[str]]] = {}

    def add(name: str, path: Path, *needles: str) -> None:
        files[name] = (path, list(needles))

    wan22_needles = ("Wan 2.2 VAE (48 latent channels)", "Wan2.1_VAE.pth")
    state22 = _meta_zeros_state("VideoVAE38_", dim=TINY_VAE_DIM, dec_dim=TINY_VAE_DIM, z_dim=48)
    torch.save(state22, root / "Wan2.2_VAE_like.pth")
    add("wan22", root / "Wan2.2_VAE_like.pth", *wan22_needles)
    state48 = _meta_zeros_state("VideoVAE_", dim=TINY_VAE_DIM, z_dim=48)
    torch.save(state48, root / "z48_in_wan21_layout.pth")
    add("wan21_layout_z48", root / "z48_in_wan21_layout.pth", *wan22_needles)
    dit = {
        "patch_embedding.weight": torch.zeros(8, 16, 1, 2, 2),
        "text_embedding.0.weight": torch.zeros(8, 4),
        "blocks.0.self_attn.q.weight": torch.zeros(8, 8),
    }
    torch.save(dit, root / "dit.pth")
    add("dit", root / "dit.pth", "DiT", "not a VAE")
    save_file(dit, str(root / "dit.safetensors"))
    add("dit_safetensors", root / "dit.safetensors", "DiT", "not a VAE")
    t5 = {"shared.weight": torch.zeros(10, 4)}
    t5["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(4, 4)
    torch.save(t5, root / "t5.pth")
    add("t5", root / "t5.pth", "T5 text encoder", "not a VAE")
    data = tiny_vae_pth.read_bytes()
    (root / "truncated.pth").write_bytes(data[: len(data) // 2])
    add("truncated", root / "truncated.pth", "cannot be read", "truncated")
    gen = torch.Generator().manual_seed(7)
    noise = torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=gen)
    (root / "noise.pth").write_bytes(noise.numpy().tobytes())
    add("random_bytes", root / "noise.pth", "cannot be read")
    st = tiny_vae_safetensors.read_bytes()
    (root / "truncated.safetensors").write_bytes(st[: len(st) // 2])
    add("truncated_safetensors", root / "truncated.safetensors", "safetensors", "truncated")
    missing = {k: v for k, v in tiny_vae_state.items() if k != "decoder.head.2.bias"}
    torch.save(missing, root / "missing_key.pth")
    add("missing_key", root / "missing_key.pth", "missing", "decoder.head.2.bias")
    misshapen = dict(tiny_vae_state)
    misshapen["decoder.middle.1.proj.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(misshapen, root / "misshapen.pth")
    add("misshapen", root / "misshapen.pth", "wrong shape", "decoder.middle.1.proj.weight")
    torch.save({"cfg": argparse.Namespace(a=1)}, root / "pickled.pth")
    add("pickled_object", root / "pickled.pth", "weights_only")
    (root / "empty_model").mkdir()
    add("folder_without_vae", root / "empty_model", "Wan2.1_VAE.pth", "wan_2.1_vae.safetensors")
    add("does_not_exist", root / "nope" / "Wan2.1_VAE.pth", "no such file")
    return files
