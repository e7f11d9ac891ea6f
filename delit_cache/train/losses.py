"""Training losses and cheap validation metrics of the heads (latent and encoding space).

* flat: L1 or MSE between predicted and target flat latents (normalised Wan latent space),
  divided per channel by the heads' ``latent_std`` when given (the same units for any VAE);
* env: L1 on the four-channel encoding (``envcode``), each pixel weighted by its solid angle
  (normalised to mean 1) so the poles do not dominate; the log channel counts
  ``env_log_weight`` times;
* spheres: the diffuse and matte-silver spheres of ``decode_env(pred)`` vs of the target HDR
  (``render.sphere_operators``: one matrix product each), L1 between ``log1p`` radiances
  inside the disc.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from delit_cache.cache.store import DATA_ARRAYS, LatentCache
from delit_cache.lighting.envcode import decode_env, encode_env
from delit_cache.lighting.envmap import resample_env, solid_angles
from delit_cache.lighting.render import sphere_operators
from delit_cache.train.config import TrainConfig


@functools.lru_cache(maxsize=8)
def _pixel_weights(h: int, w: int, device: str) -> torch.Tensor:
    """Solid-angle weights ``[1,1,h,w]`` with mean 1."""
    sa = solid_angles(h, w)
    return (sa / sa.mean()).to(device)[None, None]


def flat_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean L1 (``kind="l1"``) or MSE between flat latents ``[B,16,h,w]``."""
    if kind == "mse":
        return F.mse_loss(pred, target)
    return F.l1_loss(pred, target)


def standardised_flat_loss(
    pred: torch.Tensor, target: torch.Tensor, latent_std: torch.Tensor | None, kind: str = "l1"
) -> torch.Tensor:
    """``flat_loss`` with both latents divided per channel by ``latent_std`` ``[C]`` (the
    heads' latent scale; None: raw latent units)."""
    if latent_std is not None:
        scale = latent_std.float()[:, None, None]
        pred, target = pred / scale, target / scale
    return flat_loss(pred, target, kind)


def env_code_loss(pred_code: torch.Tensor, target_code: torch.Tensor, log_weight: float = 1.0):
    """Solid-angle-weighted L1 on the encoding ``[B,4,h,w]``: (colour, log) mean errors."""
    w = _pixel_weights(*pred_code.shape[-2:], str(pred_code.device))
    err = (pred_code - target_code).abs() * w
    colour, log = err[:, :3].mean(), err[:, 3:].mean()
    return (3.0 * colour + log_weight * log) / (3.0 + log_weight), colour, log


@functools.lru_cache(maxsize=8)
def _sphere_ops(size: int, env_size: tuple[int, int], device: str) -> torch.Tensor:
    return sphere_operators(size, env_size, device=device)[0]


def render_loss_spheres(
    env_hdr: torch.Tensor, size: int, env_size: tuple[int, int]
) -> torch.Tensor:
    """Diffuse and matte spheres of linear env maps ``[B,3,H,W]``, area-resampled to
    ``env_size`` first -> ``[B,3,2,M]`` (the ``M`` pixels inside the disc); differentiable."""
    env = resample_env(env_hdr.float(), tuple(env_size))
    ops = _sphere_ops(size, tuple(env_size), str(env.device))
    return torch.einsum("bcp,kpm->bckm", env.flatten(2), ops)


def sphere_losses(
    pred_code: torch.Tensor, env_hdr: torch.Tensor, size: int, env_size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """L1 in log1p space between the spheres of the prediction and of the target env maps
    (``render_loss_spheres``; the diffuse and matte spheres only see low frequencies)."""
    pred = render_loss_spheres(decode_env(pred_code.float()), size, env_size)
    with torch.no_grad():
        target = render_loss_spheres(env_hdr, size, env_size)
    diff = (torch.log1p(pred) - torch.log1p(target)).abs().mean(dim=(0, 1, 3))
    # colour: the RGB direction of each diffuse-sphere pixel (what the angular error scores)
    unit_p = F.normalize(pred[:, :, 0], dim=1, eps=1e-6)
    unit_t = F.normalize(target[:, :, 0], dim=1, eps=1e-6)
    colour = (unit_p - unit_t).abs().sum(1).mean()
    return {"diffuse": diff[0], "matte": diff[1], "colour": colour}


def compute_losses(
    out: dict[str, torch.Tensor],
    flat_target: torch.Tensor,
    env_hdr: torch.Tensor,
    cfg: TrainConfig,
    latent_std: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All weighted terms and their sum ``total``; inputs float32, outputs scalar tensors.

    ``latent_std`` ``[C]``: the heads' per-channel latent scale; the flat loss is taken in
    those units (None: raw latent units)."""
    flat = standardised_flat_loss(
        out["flat_latent"].float(), flat_target, latent_std, cfg.flat_loss
    )
    code_pred = out["env_code"].float()
    code_target = encode_env(env_hdr)
    losses: dict[str, torch.Tensor] = {"flat": flat}
    env, colour, log = env_code_loss(code_pred, code_target, cfg.env_log_weight)
    losses |= {"env": env, "env_colour": colour.detach(), "env_log": log.detach()}
    total = cfg.flat_weight * losses["flat"] + cfg.env_weight * env
    weights = {
        "diffuse": cfg.sphere_diffuse_weight,
        "matte": cfg.sphere_matte_weight,
        "colour": cfg.sphere_colour_weight,
    }
    if any(w > 0 for w in weights.values()):
        spheres = sphere_losses(code_pred, env_hdr, cfg.sphere_size, cfg.sphere_env_size)
        for name, weight in weights.items():
            losses[f"sphere_{name}"] = spheres[name]
            total = total + weight * spheres[name]
    losses["total"] = total
    return losses


@torch.no_grad()
def env_metrics(code_pred: torch.Tensor, env_hdr: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cheap env metrics per batch (means): log-HDR RMSE (log1p radiance, solid-angle
    weighted), relative error of the total energy, and RMSE of the log channel."""
    pred_hdr = decode_env(code_pred.float())
    w = _pixel_weights(*env_hdr.shape[-2:], str(env_hdr.device))
    sq = (torch.log1p(pred_hdr) - torch.log1p(env_hdr)) ** 2 * w
    log_rmse = sq.mean(dim=(1, 2, 3)).sqrt().mean()
    energy_p = (pred_hdr * w).mean(dim=(1, 2, 3))
    energy_t = (env_hdr * w).mean(dim=(1, 2, 3))
    energy_rel = ((energy_p - energy_t).abs() / energy_t.clamp_min(1e-6)).mean()
    code_log_rmse = ((code_pred[:, 3] - encode_env(env_hdr)[:, 3]) ** 2).mean().sqrt()
    return {"log_hdr_rmse": log_rmse, "energy_rel_err": energy_rel, "code_log_rmse": code_log_rmse}


@torch.no_grad()
def cache_losses(heads, cache: LatentCache, cfg: TrainConfig) -> tuple[float, float]:
    """(flat loss, env code loss) of ``heads`` over every sample of a (small) ``LatentCache``,
    in eval mode and raw latent units: what an overfit check compares before and after."""
    relit, flat, env_hdr = (torch.from_numpy(cache.read(n)) for n in DATA_ARRAYS)
    out = heads.eval()(relit)
    env, _, _ = env_code_loss(out["env_code"], encode_env(env_hdr), cfg.env_log_weight)
    return float(flat_loss(out["flat_latent"], flat, cfg.flat_loss)), float(env)
