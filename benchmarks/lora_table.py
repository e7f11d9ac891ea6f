"""The train-lora comparison table (``benchmarks/results/cpu-lora.md``) from measured files.

Usage (from the repository root)::

    python benchmarks/lora_table.py --without eval_plain.json --with eval_lora.json \\
        --train-script RUN_DIR/cmd.sh --train-log RUN_DIR/train.log \\
        --memory memory.txt --out benchmarks/results/cpu-lora.md

Every number in the output is read from those files: the two ``delit eval --json`` results
(the same heads and held-out data, the frozen decoder and the decoder with adapters), the
training command and its log (last line ``rc=... wall_s=...``), and optionally the table
printed by ``benchmarks/lora_memory.py``. Nothing is typed in.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
from pathlib import Path

from delit_cache.utils.machine import device_name, load_average


def _row(name: str, a: float, b: float, digits: int) -> str:
    return f"| {name} | {a:.{digits}f} | {b:.{digits}f} | {b - a:+.{digits}f} |"


def table(plain: dict, lora: dict) -> list[str]:
    m0, m1 = plain["model"], lora["model"]
    c0, c1 = plain["codec_ceiling"], lora["codec_ceiling"]
    lines = [
        "| metric | frozen decoder | decoder + LoRA | change |",
        "| --- | --- | --- | --- |",
        _row("flat-lit PSNR (dB)", m0["flat_psnr"], m1["flat_psnr"], 2),
        _row("flat-lit SSIM", m0["flat_ssim"], m1["flat_ssim"], 4),
        _row(
            "codec ceiling PSNR (dB): decode(encode(true flat))",
            c0["flat_psnr"],
            c1["flat_psnr"],
            2,
        ),
        _row("codec ceiling SSIM", c0["flat_ssim"], c1["flat_ssim"], 4),
        _row(
            "diffuse angular error (deg; env path, untouched)",
            m0["diffuse"]["angular_deg"],
            m1["diffuse"]["angular_deg"],
            2,
        ),
        _row("eval seconds", plain["seconds"], lora["seconds"], 1),
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--without", type=Path, required=True)
    parser.add_argument("--with", dest="with_", type=Path, required=True)
    parser.add_argument("--train-script", type=Path, required=True)
    parser.add_argument("--train-log", type=Path, required=True)
    parser.add_argument("--memory", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--command", required=True, help="the comparison command, as run")
    args = parser.parse_args()
    plain, lora = json.loads(args.without.read_text()), json.loads(args.with_.read_text())
    if plain["n"] != lora["n"] or plain["checkpoint"] != lora["checkpoint"]:
        raise SystemExit("the two evaluations differ in samples or heads")
    log = args.train_log.read_text()
    wall = re.findall(r"rc=(\d+) wall_s=(\d+)", log)
    done = re.findall(r"(\d+) steps done; last pixel L1 ([\d.e-]+)", log)
    script = [
        ln
        for ln in args.train_script.read_text().splitlines()
        if "delit" in ln or ln.startswith("  --")
    ]
    out = [
        "# train-lora on the demo codec: held-out flat-lit image with and without adapters",
        "",
        f"Written by `benchmarks/lora_table.py` on {datetime.date.today()} from the files named "
        f"below. Machine: {device_name('cpu')}, {os.cpu_count()} CPU cores, load average "
        f"{load_average()} when the table was written. Command: `{args.command}`.",
        "",
        "## Training (CPU)",
        "",
        "```bash",
        *script,
        "```",
        "",
    ]
    if wall:
        rc, seconds = wall[-1]
        out.append(f"Exit code {rc}, wall time {int(seconds)} s ({int(seconds) / 60:.1f} min).")
    if done:
        out.append(f"{done[-1][0]} steps; pixel L1 of the last batch {float(done[-1][1]):.4f}.")
    lora_info = lora.get("lora") or {}
    out += [
        "",
        f"## `delit eval` on the first {plain['n']} portraits of the held-out set",
        "",
        f"Heads `{plain['checkpoint']}`, VAE `{plain['vae']}`, image size {plain['image_size']}, "
        f"device {plain['device']}; adapters `{lora_info.get('file')}` (rank "
        f"{lora_info.get('rank')}, alpha {lora_info.get('alpha')}). PSNR/SSIM after the "
        "per-channel scale fit of `delit eval`.",
        "",
        *table(plain, lora),
        "",
    ]
    if args.memory is not None and args.memory.is_file():
        out += ["## Memory of one step at 512 x 512", "", "```", args.memory.read_text().strip(),
                "```", ""]  # fmt: skip
    args.out.write_text("\n".join(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
