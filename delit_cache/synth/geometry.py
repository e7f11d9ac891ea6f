"""Procedural 2.5-D portrait geometry: analytic ellipsoids plus a bump-mapped face.

The subject is a union of ellipsoids, each ray-cast analytically: cranium and jaw (the head),
ears, a hair shell (visible only above a hairline) and an optional long-hair volume, neck,
trapezius, shoulders and torso. Head parts live in a *head frame* posed by yaw/pitch/roll about
the top of the neck; neck and body live in a *body frame* with a small yaw/roll of their own.

Facial structure (brow ridges, eye sockets with eyeballs, nose ridge, tip and wings, nostrils,
cheekbones, lips and mouth line, philtrum, chin) is a displacement field: a sum of anisotropic
Gaussians in head-frame (x, y), faded in on the front of the head. It bends the shading normals
exactly (analytic gradient, projected on the tangent plane) and feeds a cavity term of the
ambient occlusion; the silhouette stays that of the ellipsoids.

Units: the head is about 2 units tall (crown y=1, chin y=-1), x to the subject's left as seen
by the camera (= camera right), z toward the camera. World: y up, camera on +z looking along -z.
Everything is vectorised torch (float32); no per-pixel Python loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

# Part ids of the G-buffer
BACKGROUND, SKIN, EAR, HAIR, NECK, CLOTH = 0, 1, 2, 3, 4, 5
HEAD_PIVOT = (0.0, -0.75, -0.15)  # the head turns about the top of the neck
BODY_PIVOT = (0.0, -2.0, -0.2)
BLEND = 0.05  # distance scale (head units) of the smooth normal blend between parts

# Facial features: (cx, cy, sx, sy, amplitude, mirrored in x). Amplitudes in head units.
FEATURES: dict[str, tuple[float, float, float, float, float, bool]] = {
    "eye_socket": (0.29, 0.02, 0.14, 0.085, -0.10, True),
    "eyeball": (0.29, 0.0, 0.08, 0.05, 0.075, True),
    "upper_lid": (0.29, 0.045, 0.075, 0.02, 0.012, True),
    "brow": (0.29, 0.16, 0.17, 0.05, 0.05, True),
    "glabella": (0.0, 0.1, 0.08, 0.06, 0.03, False),
    "temple": (0.56, 0.18, 0.08, 0.14, -0.04, True),
    "cheekbone": (0.42, -0.17, 0.14, 0.09, 0.05, True),
    "cheek_hollow": (0.42, -0.42, 0.1, 0.12, -0.03, True),
    "nose_bridge": (0.0, -0.03, 0.055, 0.09, 0.05, False),
    "nose_mid": (0.0, -0.17, 0.065, 0.09, 0.11, False),
    "nose_low": (0.0, -0.3, 0.08, 0.06, 0.14, False),
    "nose_tip": (0.0, -0.34, 0.06, 0.05, 0.07, False),
    "nose_wing": (0.085, -0.38, 0.05, 0.04, 0.06, True),
    "nostril": (0.05, -0.43, 0.03, 0.016, -0.07, True),
    "nasolabial": (0.2, -0.5, 0.03, 0.1, -0.025, True),
    "philtrum": (0.0, -0.5, 0.025, 0.04, -0.015, False),
    "upper_lip": (0.0, -0.57, 0.16, 0.032, 0.05, False),
    "mouth_line": (0.0, -0.615, 0.17, 0.012, -0.04, False),
    "lower_lip": (0.0, -0.665, 0.13, 0.04, 0.055, False),
    "mouth_corner": (0.165, -0.615, 0.03, 0.025, -0.025, True),
    "labiomental": (0.0, -0.76, 0.14, 0.03, -0.025, False),
    "chin": (0.0, -0.88, 0.16, 0.08, 0.06, False),
}


@dataclass
class Subject:
    """Random shape and pose of one subject (angles in degrees, lengths in head units)."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    body_yaw: float = 0.0
    body_roll: float = 0.0
    head_width: float = 1.0  # multiplies x radii of the head
    jaw_width: float = 1.0
    feature_gain: dict[str, float] = field(default_factory=dict)
    hair_style: str = "short"  # bald | short | fringe | medium | long
    hair_volume: float = 0.08
    shoulder_width: float = 1.0
    neckline: str = "crew"  # crew | vneck | open

    def to_meta(self) -> dict:
        return {
            "yaw": round(self.yaw, 2),
            "pitch": round(self.pitch, 2),
            "roll": round(self.roll, 2),
            "body_yaw": round(self.body_yaw, 2),
            "hair_style": self.hair_style,
            "neckline": self.neckline,
        }


@dataclass
class Camera:
    """Perspective camera on +z looking along -z; the subject is shifted, the camera is not."""

    fov: float = 30.0  # vertical field of view, degrees
    distance: float = 10.0  # camera z
    offset: tuple[float, float] = (0.0, 0.0)  # subject shift in world x, y

    def to_meta(self) -> dict:
        return {"fov": round(self.fov, 2), "distance": round(self.distance, 3)}


def sample_subject(rng: np.random.Generator) -> Subject:
    """Draw a random subject: pose, proportions, feature strengths, hair style, neckline."""
    styles = ["bald", "short", "fringe", "medium", "long"]
    return Subject(
        yaw=float(np.clip(rng.normal(0, 18), -45, 45)),
        pitch=float(np.clip(rng.normal(0, 8), -20, 20)),
        roll=float(np.clip(rng.normal(0, 5), -14, 14)),
        body_yaw=float(rng.uniform(-20, 20)),
        body_roll=float(rng.uniform(-3, 3)),
        head_width=float(rng.uniform(0.92, 1.06)),
        jaw_width=float(rng.uniform(0.88, 1.08)),
        feature_gain={k: float(rng.uniform(0.7, 1.3)) for k in FEATURES},
        hair_style=str(rng.choice(styles, p=[0.06, 0.3, 0.16, 0.2, 0.28])),
        hair_volume=float(rng.uniform(0.05, 0.14)),
        shoulder_width=float(rng.uniform(0.9, 1.12)),
        neckline=str(rng.choice(["crew", "vneck", "open"], p=[0.45, 0.3, 0.25])),
    )


def sample_camera(rng: np.random.Generator) -> Camera:
    """Draw a camera: vertical FOV 18-55 degrees, the head filling 35-60 % of the frame height,
    the head centre placed slightly above the middle of the frame."""
    fov = float(rng.uniform(18.0, 55.0))
    frac = float(rng.uniform(0.35, 0.6))
    tan = math.tan(math.radians(fov) / 2)
    distance = 2.2 / (frac * 2 * tan)
    sx, sy = float(rng.uniform(-0.15, 0.15)), float(rng.uniform(0.0, 0.3))
    return Camera(fov=fov, distance=distance, offset=(sx * distance * tan, sy * distance * tan))


# ----------------------------------------------------------------------------------------------
# Frames and primitives


def rotation(yaw: float, pitch: float, roll: float) -> torch.Tensor:
    """3x3 rotation (degrees): roll about z, then pitch about x (+ = look up), then yaw about y
    (+ = turn toward +x, the camera's right)."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = torch.tensor([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = torch.tensor([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return (ry @ rx @ rz).float()


@dataclass
class Frame:
    """Rigid frame: world = rot @ local + trans."""

    rot: torch.Tensor
    trans: torch.Tensor


def subject_frames(subject: Subject, camera: Camera) -> dict[str, Frame]:
    """Body and head frames in world space (subject at the origin shifted by camera.offset)."""
    off = torch.tensor([camera.offset[0], camera.offset[1], 0.0])
    rb = rotation(subject.body_yaw, 0.0, subject.body_roll)
    pb = torch.tensor(BODY_PIVOT)
    body = Frame(rb, pb - rb @ pb + off)
    rh = rotation(subject.yaw, -subject.pitch, subject.roll)
    ph = torch.tensor(HEAD_PIVOT)
    # head in body coordinates: rh about the pivot; then the body frame.
    head = Frame(rb @ rh, rb @ (ph - rh @ ph) + body.trans)
    return {"body": body, "head": head}


@dataclass
class Ellipsoid:
    """Axis-aligned ellipsoid in a frame; ``shell`` parts use a coverage test (hair)."""

    name: str
    frame: str
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    part: int
    shell: bool = False
    group: str = ""  # parts of one group blend their normals smoothly where they meet


def primitives(subject: Subject) -> list[Ellipsoid]:
    """The ellipsoids of a subject (see module docstring for units)."""
    hw, jw, sw = subject.head_width, subject.jaw_width, subject.shoulder_width
    cran = (0.72 * hw, 0.9, 0.88)
    prims = [
        Ellipsoid("cranium", "head", (0.0, 0.1, -0.08), cran, SKIN, group="head"),
        Ellipsoid("jaw", "head", (0.0, -0.4, 0.0), (0.6 * hw * jw, 0.62, 0.72), SKIN, group="head"),
        Ellipsoid("ear_l", "head", (0.69 * hw, -0.12, -0.12), (0.1, 0.28, 0.17), EAR),
        Ellipsoid("ear_r", "head", (-0.69 * hw, -0.12, -0.12), (0.1, 0.28, 0.17), EAR),
        Ellipsoid("neck", "body", (0.0, -1.15, -0.12), (0.38 * hw, 0.72, 0.4), NECK, group="body"),
        Ellipsoid(
            "trapezius", "body", (0.0, -1.72, -0.25), (1.0 * sw, 0.45, 0.45), CLOTH, group="body"
        ),
        Ellipsoid(
            "shoulder_l", "body", (1.45 * sw, -2.2, -0.2), (0.5, 0.3, 0.45), CLOTH, group="body"
        ),
        Ellipsoid(
            "shoulder_r", "body", (-1.45 * sw, -2.2, -0.2), (0.5, 0.3, 0.45), CLOTH, group="body"
        ),
        Ellipsoid("torso", "body", (0.0, -2.6, -0.2), (2.05 * sw, 1.02, 0.75), CLOTH, group="body"),
    ]
    if subject.hair_style != "bald":
        v = 1.0 + subject.hair_volume
        shell = (cran[0] * v, cran[1] * (1.0 + 0.6 * subject.hair_volume), cran[2] * v)
        prims.append(Ellipsoid("hair", "head", (0.0, 0.12, -0.1), shell, HAIR, shell=True))
    if subject.hair_style == "long":
        prims.append(
            Ellipsoid("hair_long", "head", (0.0, -0.5, -0.45), (0.84 * hw, 1.1, 0.5), HAIR)
        )
    return prims


def hair_covered(p: torch.Tensor, style: str) -> torch.Tensor:
    """Hair coverage of head-frame points ``p [3,N]`` on the hair shell -> bool ``[N]``.

    The hairline runs from the forehead (style-dependent height) around the temples down to a
    back limit; the azimuth from the face blends between the two.
    """
    front = {"short": 0.6, "fringe": 0.3, "medium": 0.5, "long": 0.55}.get(style, 2.0)
    back = {"short": -0.45, "fringe": -0.45, "medium": -0.75, "long": -1.0}.get(style, 2.0)
    side = {"short": 0.1, "fringe": 0.1, "medium": -0.35, "long": -0.5}.get(style, 2.0)
    az = torch.atan2(p[0], p[2]).abs()  # 0 = face, pi = back of head
    t_side = ((az - 0.45) / 0.9).clamp(0, 1)
    t_back = ((az - 1.6) / 0.9).clamp(0, 1)
    limit = front + (side - front) * t_side * t_side * (3 - 2 * t_side)
    limit = limit + (back - side) * t_back * t_back * (3 - 2 * t_back)
    # the forehead hairline is a little higher in the middle
    limit = limit + 0.08 * (1.0 - (p[0] / 0.4) ** 2).clamp_min(0) * (az < 0.6)
    return p[1] > limit


# ----------------------------------------------------------------------------------------------
# Ray casting


def camera_rays(size: tuple[int, int], camera: Camera) -> torch.Tensor:
    """Unit world ray directions ``[3,H,W]`` of a pinhole camera looking along -z."""
    h, w = size
    tan = math.tan(math.radians(camera.fov) / 2)
    ys = (1.0 - (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2.0) * tan
    xs = ((torch.arange(w, dtype=torch.float32) + 0.5) / w * 2.0 - 1.0) * tan * (w / h)
    d = torch.empty(3, h, w)
    d[0] = xs[None, :]
    d[1] = ys[:, None]
    d[2] = -1.0
    return d * torch.rsqrt(d[0] * d[0] + d[1] * d[1] + 1.0)


def _unit(v: torch.Tensor) -> torch.Tensor:
    """Normalise the columns of ``v [3,N]``."""
    return v * torch.rsqrt((v * v).sum(0).clamp_min(1e-20))


def _intersect(
    prim: Ellipsoid, o: torch.Tensor, d: torch.Tensor, style: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray distance ``[N]`` (inf on a miss) and a flag ``[N]`` for back-face (inside) hits.

    ``o [3]``, ``d [3,N]`` in the primitive's frame.
    """
    c, r = torch.tensor(prim.center), torch.tensor(prim.radii)
    qo, qd = (o - c) / r, d / r[:, None]
    a = (qd * qd).sum(0)
    b = 2.0 * (qo @ qd)
    cc = float(qo @ qo) - 1.0
    disc = b * b - 4 * a * cc
    hit = disc > 0
    sq = disc.clamp_min(0).pow(0.5)  # pow is much faster than sqrt on some CPU builds
    inv = 0.5 / a
    t1, t2 = (-b - sq) * inv, (-b + sq) * inv
    inf = torch.full_like(t1, math.inf)
    if not prim.shell:
        return torch.where(hit & (t1 > 0), t1, inf), torch.zeros_like(hit)
    hi = hit.nonzero().squeeze(1)
    ok1, ok2 = torch.zeros_like(hit), torch.zeros_like(hit)
    ok1[hi] = hair_covered(o[:, None] + t1[hi] * d[:, hi], style)
    ok2[hi] = ~ok1[hi] & hair_covered(o[:, None] + t2[hi] * d[:, hi], style)
    return torch.where(ok1, t1, torch.where(ok2, t2, inf)), ok2


@dataclass
class GBuffer:
    """Per-pixel geometry of a rendered subject (H x W image).

    mask [H,W] bool; part [H,W] int64 (BACKGROUND..CLOTH); normal [3,H,W] unit world normals
    (0 outside); depth [H,W] camera distance along -z (inf outside); local [3,H,W] hit point in
    its part's frame (head frame for skin/ear/hair, body frame for neck/cloth); disp [H,W] face
    displacement (head units, 0 elsewhere); rays [3,H,W] unit camera ray directions.
    """

    mask: torch.Tensor
    part: torch.Tensor
    normal: torch.Tensor
    depth: torch.Tensor
    local: torch.Tensor
    disp: torch.Tensor
    rays: torch.Tensor


def _screen_box(
    prim: Ellipsoid, frame: Frame, camera: Camera, size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Pixel rectangle (row0, row1, col0, col1) that holds the primitive's image (a generous
    bound from its bounding sphere), or None when it is off screen."""
    h, w = size
    centre = frame.rot @ torch.tensor(prim.center) + frame.trans
    rad = max(prim.radii)
    dz = camera.distance - float(centre[2])
    if dz <= rad * 1.05:
        return 0, h, 0, w
    tan = math.tan(math.radians(camera.fov) / 2)
    ang = rad / math.sqrt(dz * dz - rad * rad) / tan * 1.15
    cx, cy = float(centre[0]) / dz / tan / (w / h), float(centre[1]) / dz / tan
    x0, x1 = ((cx - ang * h / w + 1) / 2 * w) - 2, ((cx + ang * h / w + 1) / 2 * w) + 2
    y0, y1 = ((1 - (cy + ang)) / 2 * h) - 2, ((1 - (cy - ang)) / 2 * h) + 2
    j0, j1 = max(0, math.floor(x0)), min(w, math.ceil(x1))
    i0, i1 = max(0, math.floor(y0)), min(h, math.ceil(y1))
    return (i0, i1, j0, j1) if i1 > i0 and j1 > j0 else None


def trace(subject: Subject, camera: Camera, size: tuple[int, int]) -> GBuffer:
    """Ray-cast the subject; returns its G-buffer with bump-mapped face normals."""
    h, w = size
    rays = camera_rays(size, camera)
    d_world = rays.reshape(3, -1)  # [3,N]
    origin = torch.tensor([0.0, 0.0, camera.distance])
    frames = subject_frames(subject, camera)
    prims = primitives(subject)
    local_rays = {name: f.rot.T @ d_world for name, f in frames.items()}
    ts, backs = [], []
    for prim in prims:
        f = frames[prim.frame]
        t = torch.full((h, w), math.inf)
        back = torch.zeros((h, w), dtype=torch.bool)
        box = _screen_box(prim, f, camera, size)
        if box is not None:
            i0, i1, j0, j1 = box
            rays_box = (f.rot.T @ rays[:, i0:i1, j0:j1].reshape(3, -1)).contiguous()
            tb, bb = _intersect(prim, f.rot.T @ (origin - f.trans), rays_box, subject.hair_style)
            t[i0:i1, j0:j1] = tb.view(i1 - i0, j1 - j0)
            back[i0:i1, j0:j1] = bb.view(i1 - i0, j1 - j0)
        ts.append(t.view(-1))
        backs.append(back.view(-1))
    t_min, idx = torch.stack(ts).min(0)
    mask = torch.isfinite(t_min)
    n = d_world.shape[1]
    normal, local = torch.zeros(3, n), torch.zeros(3, n)
    disp = torch.zeros(n)
    part = torch.zeros(n, dtype=torch.long)
    groups = [p.group or p.name for p in prims]
    gid = torch.tensor([groups.index(g) for g in groups])
    gid_win = gid[idx]
    for k, prim in enumerate(prims):
        win = mask & (idx == k)
        gap = ts[k] - t_min
        sel = win | (mask & (gid_win == gid[k]) & (gap < 15 * BLEND)) if prim.group else win
        sel_i = sel.nonzero().squeeze(1)
        if len(sel_i) == 0:
            continue
        f = frames[prim.frame]
        o = f.rot.T @ (origin - f.trans)
        p = o[:, None] + ts[k][sel_i] * local_rays[prim.frame][:, sel_i]
        c, r = torch.tensor(prim.center)[:, None], torch.tensor(prim.radii)[:, None]
        nl = _unit((p - c) / (r * r))
        nl = torch.where(backs[k][sel_i], -nl, nl)
        won = win[sel_i]
        if prim.group == "head":
            dsp, grad = face_displacement(p, subject)
            nl = _unit(nl - (grad - (grad * nl).sum(0) * nl))
            disp[sel_i[won]] = dsp[won]
        blend = BLEND if prim.group == "head" else 3 * BLEND
        weight = torch.exp(-gap[sel_i] / blend) if prim.group else 1.0
        normal[:, sel_i] += weight * (f.rot @ nl)
        local[:, sel_i[won]] = p[:, won]
        part[sel_i[won]] = prim.part
    normal = _unit(normal) * mask
    depth = torch.where(mask, t_min * -d_world[2], torch.full_like(t_min, math.inf))
    return GBuffer(
        mask=mask.view(h, w),
        part=part.view(h, w),
        normal=normal.reshape(3, h, w),
        depth=depth.view(h, w),
        local=local.reshape(3, h, w),
        disp=disp.view(h, w),
        rays=rays,
    )


# ----------------------------------------------------------------------------------------------
# Face displacement


def _feature_table(subject: Subject) -> torch.Tensor:
    """``[K,6]`` rows (cx, cy, sx, sy, amp, mirrored) with the subject's feature gains."""
    rows = []
    for name, (cx, cy, sx, sy, amp, mir) in FEATURES.items():
        gain = subject.feature_gain.get(name, 1.0)
        rows.append([cx * subject.head_width, cy, sx, sy, amp * gain, float(mir)])
    return torch.tensor(rows)


def face_displacement(p: torch.Tensor, subject: Subject) -> tuple[torch.Tensor, torch.Tensor]:
    """Displacement ``[N]`` and its 3-D gradient ``[3,N]`` at head-frame points ``p [3,N]``.

    ``disp = gate(z) * sum_k amp_k * exp(-((x'-cx)/sx)^2/2 - ((y-cy)/sy)^2/2)`` with
    ``x' = |x|`` for mirrored features; the gate fades features in over the front of the head.
    """
    tab = _feature_table(subject)
    x, y, z = p[0], p[1], p[2]
    mir = tab[:, 5:6] > 0.5
    sign = torch.where(mir, torch.sign(x)[None, :], torch.ones_like(x)[None, :])
    xe = torch.where(mir, x.abs()[None, :], x[None, :])  # [K,N]
    ux = (xe - tab[:, 0:1]) / tab[:, 2:3]
    uy = (y[None, :] - tab[:, 1:2]) / tab[:, 3:4]
    e = tab[:, 4:5] * torch.exp(-0.5 * (ux * ux + uy * uy))
    dsum = e.sum(0)
    gx = (-e * ux / tab[:, 2:3] * sign).sum(0)
    gy = (-e * uy / tab[:, 3:4]).sum(0)
    s = ((z - 0.25) / 0.35).clamp(0, 1)
    gate = s * s * (3 - 2 * s)
    dgate = torch.where((s > 0) & (s < 1), 6 * s * (1 - s) / 0.35, torch.zeros_like(s))
    grad = torch.stack([gate * gx, gate * gy, dgate * dsum])
    return gate * dsum, grad
