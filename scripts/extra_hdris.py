"""More real training HDRIs: the CC0 Poly Haven maps of the npm package ``@pmndrs/assets``.

    npm pack @pmndrs/assets@1.7.0                    # -> pmndrs-assets-1.7.0.tgz (14 MB)
    python scripts/extra_hdris.py pmndrs-assets-1.7.0.tgz WORK/hdri_plus
    delit synth --hdri-dir WORK/hdri_plus ...

The package ships 18 equirectangular maps (256 x 512, OpenEXR with lossy DWAB compression,
base64 in ``hdri/*.exr.js``). Each is written as ``pm_<name>.exr`` in float32 with its
negative values set to 0: DWAB rings around a bright sun (down to -3900 beside a sun of
22000), which ``delit`` itself refuses as real negative radiance. The packaged training HDRIs
(every packaged one except ``HELDOUT_HDRIS``) are copied beside them, so the folder is a
complete training pool. A map that looks like a held-out HDRI (log-luminance correlation
above 0.9 at any rotation or mirroring) stops the script, since training on it would leak the
held-out lighting; one that duplicates a packaged training map (above 0.95) is skipped. A
bad tarball or map (not base64, not OpenEXR, NaN, no light, not 2:1) or an existing output
folder is one line and exit 2, with nothing written: the pool appears whole or not at all.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from delit_cache.data.imageio import read_hdr, write_exr
from delit_cache.synth.environments import HELDOUT_HDRIS, packaged_hdri_dir
from delit_cache.utils.atomic import atomic_dir
from delit_cache.utils.errors import DelitError

LEAK = 0.9  # correlation with a held-out map above which the script refuses to go on
DUPLICATE = 0.95  # correlation with a packaged training map above which a map is skipped


def signature(arr: np.ndarray) -> torch.Tensor:
    """Log luminance of a map at 32 x 64, the picture that the similarity compares."""
    t = torch.from_numpy(np.clip(arr, 0, None)).permute(2, 0, 1)[None].float()
    return torch.log1p(50 * F.adaptive_avg_pool2d(t, (32, 64))[0].mean(0))


def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest correlation of ``a`` with ``b`` over 64 rotations, mirrored or not."""
    best = -1.0
    for x in (a, a.flip(1)):
        for shift in range(x.shape[1]):
            pair = torch.stack([torch.roll(x, shift, 1).flatten(), b.flatten()])
            best = max(best, float(torch.corrcoef(pair)[0, 1]))
    return best


class Refused(Exception):
    """A bad tarball, map or output folder: one line, exit 2, nothing written."""


def package_maps(tarball: Path) -> list[tuple[str, bytes]]:
    """(name, EXR bytes) of every ``hdri/*.exr.js`` in the npm tarball."""
    if not tarball.is_file():
        raise Refused(f"{tarball}: no such file")
    try:
        with tarfile.open(tarball) as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and _is_map(m.name)),
                key=lambda m: m.name,
            )
            maps = [(m.name, tar.extractfile(m).read()) for m in members]
    except (tarfile.TarError, EOFError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Refused(f"{tarball}: not a readable tarball ({first})") from None
    if not maps:
        raise Refused(f"{tarball}: holds no package/hdri/*.exr.js maps")
    out = []
    for member, text in maps:
        try:
            payload = text.decode("ascii").split("base64,", 1)[1].split("'", 1)[0]
            data = base64.b64decode(payload, validate=True)
        except (UnicodeDecodeError, IndexError, binascii.Error):
            raise Refused(f"{tarball}: {member}: not a base64 data URL") from None
        out.append((Path(member).name.removesuffix(".exr.js"), data))
    return out


def _is_map(name: str) -> bool:
    return name.startswith("package/hdri/") and name.endswith(".exr.js")


def decode(name: str, data: bytes, tmp: Path) -> np.ndarray:
    """The map's linear RGB, negatives set to 0; ``Refused`` unless a finite, lit 2:1 map."""
    src = tmp / f"{name}.exr"
    src.write_bytes(data)
    try:
        arr = read_hdr(src, check=False)
    except DelitError as exc:
        raise Refused(f"{name}: {str(exc).removeprefix(str(src) + ': ')}") from None
    h, w = arr.shape[:2]
    if not np.isfinite(arr).all():
        raise Refused(f"{name}: holds NaN or Inf")
    if abs(w / h - 2.0) > 0.04:
        raise Refused(f"{name}: {h}x{w} is not an equirectangular (2:1) map")
    if not (arr > 0).any():
        raise Refused(f"{name}: holds no light")
    return arr


def build_pool(tarball: Path, out: Path) -> list[str]:
    """Every check first, then the folder, written beside ``out`` and moved into place."""
    if out.exists():
        raise Refused(f"{out}: already exists; give a new folder")
    packaged = sorted(packaged_hdri_dir().glob("*.exr"))
    refs = {p.stem: signature(read_hdr(p)) for p in packaged}
    keep: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in package_maps(tarball):
            arr = decode(name, data, Path(tmp))
            sig = signature(arr)
            close = {stem: similarity(sig, ref) for stem, ref in refs.items()}
            nearest = max(close, key=close.get)
            leak = [s for s in HELDOUT_HDRIS if close[s] > LEAK]
            if leak:
                raise Refused(f"{name}: looks like held-out HDRI {leak[0]} ({close[leak[0]]:.3f})")
            what = f"{arr.shape[0]}x{arr.shape[1]}, nearest packaged {nearest} {close[nearest]:.3f}"
            if close[nearest] > DUPLICATE:
                print(f"{name}: skipped, duplicates {nearest} ({what})")
                continue
            neg = float(np.clip(-arr, 0, None).sum() / np.clip(arr, 0, None).sum())
            print(f"pm_{name}: {what}, negative energy {neg:.1e} of the positive set to 0")
            keep[f"pm_{name}"] = np.maximum(arr, 0.0)
    try:
        with atomic_dir(out) as partial:
            for p in packaged:
                if p.stem not in HELDOUT_HDRIS:
                    shutil.copyfile(p, partial / p.name)
            for stem, arr in keep.items():
                write_exr(partial / f"{stem}.exr", arr, half=False)
    except OSError as exc:
        raise Refused(f"{out}: cannot write ({exc.strerror or exc})") from None
    return sorted(p.stem for p in out.glob("*.exr"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("tarball", type=Path, help="pmndrs-assets-<version>.tgz from `npm pack`")
    ap.add_argument("out", type=Path, help="new folder for the training HDRIs")
    args = ap.parse_args(argv)
    try:
        pool = build_pool(args.tarball, args.out)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(pool)} training HDRIs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
