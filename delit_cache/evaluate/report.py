"""The demo report: example images and the metrics table, as one HTML page and one PNG.

``write_report(out_dir, examples, metrics)`` writes ``report.html`` (images inline, so the
page is one self-contained file) and ``report.png`` (the image grid alone, labelled).
Each example row shows: input photo | predicted flat-lit | true flat-lit | predicted env
map with its three spheres | true env map with its three spheres.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from delit_cache.lighting.envshow import env_figure
from delit_cache.utils.atomic import atomic_path

COLUMNS = ("input", "predicted flat", "true flat", "predicted env", "true env")
# Rows of the metrics table: (label, key in the eval JSON).
TABLE_ROWS = (
    ("model", "model"),
    ("codec ceiling (decode(encode(true flat)))", "codec_ceiling"),
    ("baseline: input as flat-lit", "baseline_input_as_flat"),
    ("baseline: mean env of the training cache", "baseline_mean_env"),
)
TABLE_COLUMNS = (
    ("flat PSNR (dB)", ("flat_psnr",)),
    ("flat SSIM", ("flat_ssim",)),
    ("diffuse angular (deg)", ("diffuse", "angular_deg")),
    ("diffuse si-RMSE", ("diffuse", "si_rmse")),
    ("matte si-RMSE", ("matte", "si_rmse")),
    ("mirror si-RMSE", ("mirror", "si_rmse")),
    ("light dir. error (deg)", ("light_dir_deg",)),
)


def _to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[3,H,W] tensor or [H,W,3] array in [0,1] (or uint8) -> uint8 [H,W,3]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    if image.dtype == np.uint8:
        return image
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _fit_height(image: np.ndarray, height: int) -> Image.Image:
    pil = Image.fromarray(image)
    width = max(1, round(pil.width * height / pil.height))
    return pil.resize((width, height), Image.Resampling.LANCZOS)


def example_row(example: dict, height: int = 192) -> list[Image.Image]:
    """The five panels of one example, each scaled to ``height`` pixels."""
    panels = [
        _to_uint8(example["relit"]),
        _to_uint8(example["flat_pred"]),
        _to_uint8(example["flat_true"]),
        env_figure(example["env_pred"]),
        env_figure(example["env_true"]),
    ]
    return [_fit_height(p, height) for p in panels]


def grid_image(examples: list[dict], height: int = 192, gap: int = 6) -> Image.Image:
    """All example rows in one labelled image."""
    rows = [example_row(e, height) for e in examples]
    widths = [max(row[c].width for row in rows) for c in range(len(COLUMNS))]
    label_h = 16
    canvas = Image.new(
        "RGB",
        (sum(widths) + gap * (len(widths) + 1), label_h + len(rows) * (height + gap) + gap),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    x = gap
    for name, width in zip(COLUMNS, widths, strict=True):
        draw.text((x, 2), name, fill="black")
        x += width + gap
    for r, row in enumerate(rows):
        x, y = gap, label_h + r * (height + gap)
        for panel, width in zip(row, widths, strict=True):
            canvas.paste(panel, (x, y))
            x += width + gap
    return canvas


def _lookup(section: dict | None, path: tuple[str, ...]) -> str:
    value = section
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return "–"
        value = value[key]
    if value is None:  # undefined, e.g. no detected light in any pair
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def metrics_table_html(metrics: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in TABLE_COLUMNS)
    body = []
    for label, key in TABLE_ROWS:
        cells = "".join(f"<td>{_lookup(metrics.get(key), p)}</td>" for _, p in TABLE_COLUMNS)
        body.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(body)}</table>"


def _png_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def model_examples(model, samples: list[dict], size: int, flip_average: bool = False) -> list[dict]:
    """The model's outputs on ``samples`` beside the truth: the rows of ``write_report``."""
    from delit_cache.models import PortraitTransform

    transform = PortraitTransform(size)
    rows = []
    for sample in samples:
        square, placement = transform(sample["relit"])
        out = model.infer(square[None], flip_average=flip_average)
        rows.append(
            {
                "relit": sample["relit"],
                "flat_pred": transform.restore(out["flat"][0], placement),
                "flat_true": sample["flat"],
                "env_pred": out["env"][0],
                "env_true": sample["env"],
            }
        )
    return rows


def write_report(
    out_dir: str | Path, examples: list[dict], metrics: dict, notes: list[str] = ()
) -> dict[str, Path]:
    """Write ``report.html`` and ``report.png`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    grid = grid_image(examples)
    png_path, html_path = out_dir / "report.png", out_dir / "report.html"
    with atomic_path(png_path) as tmp:
        grid.save(tmp, format="PNG")
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>delit report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:4px 8px;text-align:right}} img{{max-width:100%}}</style>
</head><body>
<h1>delit report</h1>
<p>Held-out samples: {metrics.get("n", "?")}. Flat-lit scores are fitted with a per-channel
least-squares scale; env scores use the three-sphere protocol (lower is better).</p>
{metrics_table_html(metrics)}
<ul>{items}</ul>
<h2>Examples</h2>
<p>{" | ".join(COLUMNS)}</p>
<img src="{_png_data_uri(grid)}" alt="examples">
</body></html>
"""
    with atomic_path(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return {"html": html_path, "png": png_path}
