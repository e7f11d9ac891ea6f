"""Training losses and cheap validation metrics of the heads (latent and encoding space).

* flat: L1 or MSE between predicted and target flat latents (normalised Wan latent space),
  divided per channel by the heads' ``latent_std`` when given (the same units for any VAE);
* env: L1 on the four-channel encoding (``envcode``), each pixel weighted by its solid angle
  (normalised to mean 1) so the poles do not dominate; the log channel counts
  ``env_log_weight`` times;
* spheres: the diffuse and matte-silver spheres of ``decode_env(pred)`` vs of the target HDR
  (``render.sphere_operators``: one matrix product each), L1 between ``log1p`` radiances
  inside the disc;
* tone colour: the per-pixel RGB direction of the diffuse sphere of the maps raised to 1/2.4
  (the protocol's tone curve), which the diffuse angular error scores;
* env nRMSE: the mirror sphere's nRMSE taken on the maps themselves (a mirror ball covers
  every direction with equal area per solid angle, so a solid-angle-weighted RMSE over the
  map is its RMSE over the ball).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from delit_cache.cache.store import DATA_ARRAYS, LatentCache
from delit_cache.lighting.envcode import decode_env, encode_env
from delit_cache.lighting.envmap import direction_grid, resample_env, solid_angles
from delit_cache.lighting.render import LUMA, sphere_operators
from delit_cache.lighting.sphere_metrics import brightest_direction, percentile_normalise
from delit_cache.train.config import TrainConfig

_LUMA = torch.tensor(LUMA)
NRMSE_VIEW_SIZE = (64, 128)  # env nRMSE's map size (at 32x64 it tracked the metric poorly)


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


def detail_loss(
    pred: torch.Tensor, target: torch.Tensor, latent_std: torch.Tensor | None
) -> torch.Tensor:
    """L1 between the horizontal and vertical neighbour differences of two flat latents
    (standardised like ``standardised_flat_loss``): it weights edges and texture, which a
    plain L1 on values lets the heads blur."""
    if latent_std is not None:
        scale = latent_std.float()[:, None, None]
        pred, target = pred / scale, target / scale
    err = pred - target
    return 0.5 * (
        (err[..., 1:, :] - err[..., :-1, :]).abs().mean()
        + (err[..., :, 1:] - err[..., :, :-1]).abs().mean()
    )


def soft_light_direction(env_hdr: torch.Tensor, sharpness: float, size=(32, 64)) -> torch.Tensor:
    """Differentiable brightest-light direction ``[B,3]`` of linear env maps ``[B,3,H,W]``:
    the mean direction under a softmax of ``sharpness x log luminance`` (plus log solid
    angle) over the map area-resampled to ``size``."""
    env = resample_env(env_hdr.float(), tuple(size))
    h, w = env.shape[-2:]
    lum = (env * _LUMA.to(env.device)[:, None, None]).sum(1).flatten(1)
    logits = sharpness * torch.log(lum.clamp_min(1e-6))
    logits = logits + torch.log(solid_angles(h, w, device=env.device)).flatten()
    dirs = direction_grid(h, w, device=env.device).flatten(1)  # [3,P]
    return F.normalize(torch.softmax(logits, dim=1) @ dirs.T, dim=1, eps=1e-6)


def env_code_loss(pred_code: torch.Tensor, target_code: torch.Tensor, log_weight: float = 1.0):
    """Solid-angle-weighted L1 on the encoding ``[B,4,h,w]``: (colour, log) mean errors."""
    w = _pixel_weights(*pred_code.shape[-2:], str(pred_code.device))
    err = (pred_code - target_code).abs() * w
    colour, log = err[:, :3].mean(), err[:, 3:].mean()
    return (3.0 * colour + log_weight * log) / (3.0 + log_weight), colour, log


@functools.lru_cache(maxsize=8)
def _sphere_ops(size: int, env_size: tuple[int, int], device: str) -> torch.Tensor:
    return sphere_operators(size, env_size, device=device)[0]


def protocol_power(env_hdr: torch.Tensor) -> torch.Tensor:
    """``x ** (1/2.4)``: the evaluation protocol's tone curve without its per-map scale (the
    scores it feeds are scale-invariant or normalise the scale away); the floor keeps the
    gradient finite at 0."""
    return env_hdr.float().clamp_min(1e-6) ** (1.0 / 2.4)


def render_loss_spheres(
    env_hdr: torch.Tensor, size: int, env_size: tuple[int, int]
) -> torch.Tensor:
    """Diffuse and matte spheres of linear env maps ``[B,3,H,W]``, area-resampled to
    ``env_size`` first -> ``[B,3,2,M]`` (the ``M`` pixels inside the disc); differentiable."""
    env = resample_env(env_hdr.float(), tuple(env_size))
    ops = _sphere_ops(size, tuple(env_size), str(env.device))
    return torch.einsum("bcp,kpm->bckm", env.flatten(2), ops)


def sphere_losses(
    pred_hdr: torch.Tensor, target: torch.Tensor, size: int, env_size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """L1 in log1p space between the spheres of the predicted linear env maps ``pred_hdr``
    and the target spheres ``target`` (``render_loss_spheres`` of the target env maps; the
    diffuse and matte spheres only see low frequencies)."""
    pred = render_loss_spheres(pred_hdr, size, env_size)
    diff = (torch.log1p(pred) - torch.log1p(target)).abs().mean(dim=(0, 1, 3))
    colour = direction_loss(pred[:, :, 0], target[:, :, 0])
    return {"diffuse": diff[0], "matte": diff[1], "colour": colour}


def direction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 between the RGB directions of sphere pixels ``[B,3,M]`` (what the angular
    error scores) -> scalar."""
    unit_p = F.normalize(pred, dim=1, eps=1e-6)
    unit_t = F.normalize(target, dim=1, eps=1e-6)
    return (unit_p - unit_t).abs().sum(1).mean()


def tone_diffuse_sphere(
    env_hdr: torch.Tensor, size: int, env_size: tuple[int, int]
) -> torch.Tensor:
    """The diffuse sphere ``[B,3,M]`` of linear env maps raised to 1/2.4 (``protocol_power``),
    as the diffuse angular error renders it; differentiable."""
    return render_loss_spheres(protocol_power(env_hdr), size, env_size)[:, :, 0]


def nrmse_view(env_hdr: torch.Tensor, size: tuple[int, int] = NRMSE_VIEW_SIZE) -> torch.Tensor:
    """Linear env maps ``[B,3,H,W]`` as the nRMSE sees them: area-resampled to ``size``,
    raised to ``1/2.4`` (the protocol's tone curve; its scale cancels below) and mapped by
    each map's own 0.1/99.9 percentiles to 0 and 1 -> ``[B,3,h,w]``; differentiable. The
    percentiles' span is floored at 5 % of the map's range, below that of real maps
    (``benchmarks/nrmse_proxy.py`` prints it), so a flat map with a small sun stays bounded."""
    power = protocol_power(resample_env(env_hdr.float(), tuple(size)))
    b, c, h, w = power.shape
    return percentile_normalise(power.flatten(2), min_span=0.05).view(b, c, h, w)


def env_nrmse(pred_hdr: torch.Tensor, target_view: torch.Tensor) -> torch.Tensor:
    """Per image, the solid-angle-weighted RMSE between ``nrmse_view`` of the predicted
    linear env maps ``pred_hdr`` and ``target_view`` (``nrmse_view`` of the target maps)
    -> ``[B]``."""
    pred_view = nrmse_view(pred_hdr, tuple(target_view.shape[-2:]))
    weights = _pixel_weights(*target_view.shape[-2:], str(target_view.device))
    return (((pred_view - target_view) ** 2) * weights).mean(dim=(1, 2, 3)).sqrt()


def env_nrmse_loss(pred_hdr: torch.Tensor, target_view: torch.Tensor) -> torch.Tensor:
    """``env_nrmse`` averaged over the batch -> scalar."""
    return env_nrmse(pred_hdr, target_view).mean()


def uses_spheres(cfg: TrainConfig) -> bool:
    return max(cfg.sphere_diffuse_weight, cfg.sphere_matte_weight, cfg.sphere_colour_weight) > 0


@torch.no_grad()
def loss_targets(env_hdr: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """What the env losses compare against, a function of the target env maps ``[B,3,H,W]``
    alone: ``env_code`` (the encoding) and, when a sphere loss is on, ``spheres``. Training
    computes them once per sample when its data is in memory, not at every step."""
    env_hdr = env_hdr.float()
    targets = {"env_code": encode_env(env_hdr)}
    if uses_spheres(cfg):
        targets["spheres"] = render_loss_spheres(env_hdr, cfg.sphere_size, cfg.sphere_env_size)
    if cfg.sphere_tone_colour_weight > 0:
        targets["tone_sphere"] = tone_diffuse_sphere(env_hdr, cfg.sphere_size, cfg.sphere_env_size)
    if cfg.light_dir_weight > 0 or cfg.light_head_weight > 0:
        targets["light_dir"] = brightest_direction(env_hdr)
    if cfg.env_nrmse_weight > 0:
        targets["env_nrmse_view"] = nrmse_view(env_hdr)
    return targets


def compute_losses(
    out: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    cfg: TrainConfig,
    latent_std: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All weighted terms and their sum ``total``; outputs scalar tensors.

    ``batch``: ``flat_latent`` and the ``loss_targets`` (``env_code``, ``spheres``), or the
    target ``env`` maps they are then computed from. ``latent_std`` ``[C]``: the heads'
    per-channel latent scale; the flat loss is taken in those units (None: raw units)."""
    if "env_code" not in batch:
        batch = {**batch, **loss_targets(batch["env"], cfg)}
    flat = standardised_flat_loss(
        out["flat_latent"].float(), batch["flat_latent"], latent_std, cfg.flat_loss
    )
    code_pred = out["env_code"].float()
    losses: dict[str, torch.Tensor] = {"flat": flat}
    total = cfg.flat_weight * flat
    if cfg.flat_detail_weight > 0:
        losses["flat_detail"] = detail_loss(
            out["flat_latent"].float(), batch["flat_latent"], latent_std
        )
        total = total + cfg.flat_detail_weight * losses["flat_detail"]
    env, colour, log = env_code_loss(code_pred, batch["env_code"], cfg.env_log_weight)
    losses |= {"env": env, "env_colour": colour.detach(), "env_log": log.detach()}
    total = total + cfg.env_weight * env
    tone = cfg.sphere_tone_colour_weight > 0
    weights = {
        "diffuse": cfg.sphere_diffuse_weight,
        "matte": cfg.sphere_matte_weight,
        "colour": cfg.sphere_colour_weight,
    }
    if uses_spheres(cfg) or cfg.light_dir_weight > 0 or cfg.env_nrmse_weight > 0 or tone:
        pred_hdr = decode_env(code_pred)  # once, for the terms that score the linear map
    if uses_spheres(cfg):
        spheres = sphere_losses(pred_hdr, batch["spheres"], cfg.sphere_size, cfg.sphere_env_size)
        for name, weight in weights.items():
            losses[f"sphere_{name}"] = spheres[name]
            total = total + weight * spheres[name]
    if tone:
        pred_tone = tone_diffuse_sphere(pred_hdr, cfg.sphere_size, cfg.sphere_env_size)
        losses["sphere_tone_colour"] = direction_loss(pred_tone, batch["tone_sphere"])
        total = total + cfg.sphere_tone_colour_weight * losses["sphere_tone_colour"]
    if cfg.light_dir_weight > 0:
        pred_dir = soft_light_direction(pred_hdr, cfg.light_sharpness)
        losses["light_dir"] = (1 - (pred_dir * batch["light_dir"]).sum(1)).mean()
        total = total + cfg.light_dir_weight * losses["light_dir"]
    if cfg.env_nrmse_weight > 0:
        losses["env_nrmse"] = env_nrmse_loss(pred_hdr, batch["env_nrmse_view"])
        total = total + cfg.env_nrmse_weight * losses["env_nrmse"]
    if cfg.light_head_weight > 0:  # TrainConfig.validate: the heads have a light head
        losses["light_head"] = light_head_loss(out["light_dir"], batch["light_dir"])
        total = total + cfg.light_head_weight * losses["light_head"]
    losses["total"] = total
    return losses


def light_head_loss(pred_dir: torch.Tensor, true_dir: torch.Tensor) -> torch.Tensor:
    """1 - cos between the light head's unit directions and the true brightest lights
    ``[B,3]``, averaged -> scalar."""
    return (1 - (pred_dir.float() * true_dir).sum(1)).mean()


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
