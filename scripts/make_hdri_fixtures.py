"""Regenerate the small HDRI fixtures in ``delit_cache/assets/hdri/`` from full-size maps.

Each ``*.exr`` in the source folder is area-resampled to 128x256 with ``resample_env``
(energy-preserving, so a sun keeps its power) and written as half-float OpenEXR.

    .venv/bin/python scripts/make_hdri_fixtures.py [--src /work/shared/data/hdri]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import delit_cache
from delit_cache.data.imageio import tensor_to_image, write_exr
from delit_cache.lighting.envmap import ENV_SIZE, env_energy, load_env

DEFAULT_SRC = Path("/work/shared/data/hdri")
NOTICE = """HDRI fixtures (128x256 half-float OpenEXR, area-resampled from 512x1024 with
delit_cache.lighting.envmap.resample_env by scripts/make_hdri_fixtures.py):
{names}

Source: the low-resolution copies that Blender ships in datafiles/studiolights/world/,
made by Greg Zaal for HDRI Haven (now Poly Haven, https://polyhaven.com).
Licence: CC0 1.0 (public domain); no conditions. Credit: Greg Zaal / Poly Haven.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder of full-size .exr")
    args = parser.parse_args()
    dst = Path(delit_cache.__file__).parent / "assets" / "hdri"
    dst.mkdir(parents=True, exist_ok=True)
    names = []
    for src in sorted(args.src.glob("*.exr")):
        full = load_env(src, size=None)
        small = load_env(src, size=ENV_SIZE)
        out = dst / src.name
        write_exr(out, tensor_to_image(small), half=True)
        e_full = env_energy(full).sum().item()
        e_back = env_energy(load_env(out, size=None)).sum().item()
        print(f"{src.name}: energy {e_full:.4g} -> {e_back:.4g} ({e_back / e_full - 1:+.3%})")
        names.append(f"  {src.name}")
    (dst / "NOTICE").write_text(NOTICE.format(names="\n".join(names)))


if __name__ == "__main__":
    main()
