"""Where a checkpoint's flat-lit error lies: subject or background, low or high frequencies.

Usage (from the repository root)::

    python benchmarks/flat_error_split.py --checkpoint demo --vae demo \\
        --data WORK/val_heldout --data WORK/train_100 --limit 48

For each ``--data`` set (synthetic shards: they carry the subject mask) it runs the model on
the first ``--limit`` samples and scores the flat-lit prediction the way ``delit eval`` does
(per-channel least-squares scale onto the truth, clipped to [0, 1]; ``image_metrics``), then
splits the squared error:

* ``PSNR``: the eval's flat-lit PSNR;
* ``background share``: the fraction of the squared error outside the subject mask (the true
  flat-lit background is white);
* ``subject PSNR``: PSNR over the subject's pixels only;
* ``low-pass PSNR``: both images box-blurred (``--blur`` px radius) first: the error in
  shading, colour and shape, without texture;
* ``texture-only PSNR``: the prediction with its low frequencies replaced by the truth's:
  what would be left if only the fine detail were wrong;
* ``codec ceiling``: decode(encode(true flat)), as in the eval.

Means over samples; prints a markdown table with the date, machine and command.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from delit_cache.data.shards import iter_samples
from delit_cache.evaluate.evaluate import crop_to_photo, model_inputs
from delit_cache.evaluate.image_metrics import fit_channel_scale, psnr
from delit_cache.infer.delighter import load_vae_and_model
from delit_cache.utils.machine import emit_report, run_header

COLUMNS = ("PSNR", "background share", "subject PSNR", "low-pass PSNR", "texture-only PSNR")


def box_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, borders replicated; ``[B,3,H,W]``."""
    padded = F.pad(x, (radius,) * 4, mode="replicate")
    return F.avg_pool2d(padded, 2 * radius + 1, stride=1)


def split_errors(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, radius: int
) -> dict[str, float]:
    """The table's columns for one image ``[1,3,H,W]`` (mask ``[1,1,H,W]``, 1 on the subject)."""
    fitted = fit_channel_scale(pred, gt).clamp(0.0, 1.0)
    err = (fitted - gt) ** 2
    subject_mse = (err * mask).sum() / (3 * mask.sum()).clamp_min(1.0)
    texture = (fitted - box_blur(fitted, radius) + box_blur(gt, radius)).clamp(0.0, 1.0)
    return {
        "PSNR": float(psnr(fitted, gt)),
        "background share": float((err * (1 - mask)).sum() / err.sum().clamp_min(1e-12)),
        "subject PSNR": float(-10.0 * torch.log10(subject_mse.clamp_min(1e-10))),
        "low-pass PSNR": float(psnr(box_blur(fitted, radius), box_blur(gt, radius))),
        "texture-only PSNR": float(psnr(texture, gt)),
    }


@torch.no_grad()
def score_set(model, transform, data: str, limit: int, radius: int) -> dict[str, float]:
    """Means of ``split_errors`` and the codec ceiling over the first ``limit`` samples."""
    sums: dict[str, float] = {}
    n = 0
    for sample in iter_samples(data):
        if n >= limit:
            break
        if "mask" not in sample:
            raise SystemExit(f"{data}: samples without a subject mask (synthetic shards needed)")
        inputs = model_inputs(sample, transform)  # as the eval prepares a sample
        flat, placement = inputs["flat"], inputs["placement"]
        pred = crop_to_photo(model.infer(inputs["relit"][None])["flat"].cpu().float(), placement)
        ceiling = model.vae.decode(model.vae.encode(flat[None]), size=tuple(flat.shape[-2:]))
        gt = crop_to_photo(flat[None], placement)  # at model size, as the eval scores it
        mask = transform(sample["mask"].float().expand(3, -1, -1))[0]
        mask = (crop_to_photo(mask[None, :1], placement) > 0.5).float()
        row = split_errors(pred, gt, mask, radius)
        row["codec ceiling"] = float(
            psnr(fit_channel_scale(crop_to_photo(ceiling.float(), placement), gt).clamp(0, 1), gt)
        )
        for key, value in row.items():
            sums[key] = sums.get(key, 0.0) + value
        n += 1
    if n == 0:
        raise SystemExit(f"{data}: no samples")
    return {key: value / n for key, value in sums.items()} | {"n": n}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", default="demo", help="heads: run folder, file or 'demo'")
    ap.add_argument("--vae", default="demo")
    ap.add_argument("--data", action="append", required=True, help="synthetic shards (repeat)")
    ap.add_argument("--limit", type=int, default=48, help="samples per set")
    ap.add_argument("--blur", type=int, default=4, help="box-blur radius in pixels")
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = ap.parse_args(argv)
    model, transform, _, _ = load_vae_and_model(args.checkpoint, args.vae, "cpu")
    model.eval()
    header = ["data", "n", *COLUMNS, "codec ceiling"]
    lines = [
        *run_header("Where the flat-lit error lies", shlex.join(["python", *sys.argv]), "cpu"),
        f"- checkpoint: {args.checkpoint}; blur radius {args.blur} px",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for data in args.data:
        result = score_set(model, transform, data, args.limit, args.blur)
        cells = [data, str(result["n"])]
        cells += [
            f"{result[k]:.3f}" if k == "background share" else f"{result[k]:.2f}"
            for k in (*COLUMNS, "codec ceiling")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    emit_report(lines, args.out)


if __name__ == "__main__":
    main()
