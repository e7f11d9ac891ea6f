"""Crops of hair and eyes: the true flat-lit image beside the model's, without and with LoRA.

Usage (from the repository root)::

    python benchmarks/lora_crops.py --checkpoint demo --vae demo --data DIR \\
        --lora RUN/lora.safetensors --out docs/lora_crops.png --n 4

For the first ``--n`` samples of ``--data`` (shards with a mask) it runs the model twice (the
frozen decoder, then the decoder with the adapters), finds the head from the mask (its top
row and centre) and cuts a hair box at the top of the head and an eye box below it (boxes
fixed relative to the head, sized for 256-pixel synthetic portraits and scaled with the
size). Each row: hair (true, without, with LoRA), then eyes (the same), enlarged 3x; each
crop is labelled with its PSNR against the true crop (after ``delit eval``'s per-channel
scale fit), computed here.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from PIL import Image, ImageDraw

from delit_cache.data.shards import iter_samples
from delit_cache.evaluate.image_metrics import flat_psnr_ssim
from delit_cache.infer.delighter import load_vae_and_model

ZOOM = 3


def head_boxes(mask: torch.Tensor, size: int) -> dict[str, tuple[int, int, int, int]]:
    """(top, left, height, width) of the hair and eye boxes from a [1,S,S] mask."""
    k = size / 256
    rows = torch.nonzero(mask[0] > 0.5)
    top = int(rows[:, 0].min())
    cols = rows[rows[:, 0] < top + int(40 * k), 1].float()
    cx = int(cols.mean())
    half = int(40 * k)
    left = max(0, min(size - 2 * half, cx - half))
    return {
        "hair": (max(0, top - int(4 * k)), left, int(40 * k), 2 * half),
        "eyes": (top + int(52 * k), left, int(44 * k), 2 * half),
    }


def crop(image: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    top, left, h, w = box
    return image[:, top : top + h, left : left + w]


def tile(image: torch.Tensor, label: str) -> Image.Image:
    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pic = Image.fromarray(arr).resize((arr.shape[1] * ZOOM, arr.shape[0] * ZOOM), Image.NEAREST)
    canvas = Image.new("RGB", (pic.width, pic.height + 14), "white")
    canvas.paste(pic, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), label, fill="black")
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="demo")
    parser.add_argument("--vae", default="demo")
    parser.add_argument("--data", required=True)
    parser.add_argument("--lora", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=4)
    args = parser.parse_args()
    plain, transform, _, info = load_vae_and_model(args.checkpoint, args.vae, "cpu")
    adapted, _, _, _ = load_vae_and_model(args.checkpoint, args.vae, "cpu", lora=args.lora)
    size = info["model_size"]
    rows = []
    for sample in itertools.islice(iter_samples(args.data), args.n):
        relit, _ = transform(sample["relit"])
        flat, _ = transform(sample["flat"])
        mask, _ = transform(sample["mask"].expand(3, -1, -1))
        preds = {
            "no LoRA": plain.infer(relit[None])["flat"][0],
            "LoRA": adapted.infer(relit[None])["flat"][0],
        }
        tiles = []
        for part, box in head_boxes(mask[:1], size).items():
            truth = crop(flat, box)
            tiles.append(tile(truth, f"{part}: true"))
            for name, pred in preds.items():
                psnr, _ = flat_psnr_ssim(crop(pred, box), truth)
                tiles.append(tile(crop(pred, box), f"{name} {psnr:.1f} dB"))
        row = Image.new(
            "RGB", (sum(t.width + 4 for t in tiles), max(t.height for t in tiles)), "white"
        )
        x = 0
        for t in tiles:
            row.paste(t, (x, 0))
            x += t.width + 4
        rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 6
    sheet.save(args.out)
    print(f"wrote {args.out} ({len(rows)} samples)")


if __name__ == "__main__":
    main()
