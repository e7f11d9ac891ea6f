"""Tabulate ``delit eval --json`` results side by side, with the mean-env baseline and targets.

    python benchmarks/heldout_table.py --eval "shipped heads=eval.json" --eval "old=old.json"
    python benchmarks/heldout_table.py --protocol diffusionlight --eval ...

Prints a markdown table: one row per metric, one column per result, then the baselines of
the first result (input as flat-lit; mean env map) and the codec ceiling, and a last row
counting the nine sphere metrics on which each result beats the mean env map. Lower is
better for every env metric; higher for PSNR and SSIM. ``--protocol diffusionlight`` reads
the eval's ``reference_protocol`` block instead (spheres only; EnvMapNet's light error).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from delit_cache.evaluate.results import result_value

ROWS = (
    ("flat-lit PSNR (dB)", ("flat_psnr",), 2, "baseline_input_as_flat"),
    ("flat-lit SSIM", ("flat_ssim",), 3, "baseline_input_as_flat"),
    ("diffuse si-RMSE", ("diffuse", "si_rmse"), 3, "baseline_mean_env"),
    ("diffuse angular error (deg)", ("diffuse", "angular_deg"), 2, "baseline_mean_env"),
    ("diffuse nRMSE", ("diffuse", "nrmse"), 3, "baseline_mean_env"),
    ("matte si-RMSE", ("matte", "si_rmse"), 3, "baseline_mean_env"),
    ("matte angular error (deg)", ("matte", "angular_deg"), 2, "baseline_mean_env"),
    ("matte nRMSE", ("matte", "nrmse"), 3, "baseline_mean_env"),
    ("mirror si-RMSE", ("mirror", "si_rmse"), 3, "baseline_mean_env"),
    ("mirror angular error (deg)", ("mirror", "angular_deg"), 2, "baseline_mean_env"),
    ("mirror nRMSE", ("mirror", "nrmse"), 3, "baseline_mean_env"),
    ("brightest-light direction error (deg)", ("light_dir_deg",), 1, "baseline_mean_env"),
)


# --protocol diffusionlight: the sphere rows of the eval's reference_protocol block
REFERENCE_ROWS = (
    *(
        (label, (p[0].replace("matte", "matte_silver"), *p[1:]), d, b)
        for label, p, d, b in ROWS[2:-1]
    ),
    ("EnvMapNet light error (deg)", ("light_dir_deg",), 1, "baseline_mean_env"),
)


def fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def wins(result: dict, rows: tuple) -> int:
    """How many of the nine sphere metrics among ``rows`` beat the mean-env baseline."""
    model, base = result.get("model"), result.get("baseline_mean_env")
    paths = [path for _, path, _, _ in rows if len(path) == 2]  # (sphere, metric) rows
    pairs = [(result_value(model, p), result_value(base, p)) for p in paths]
    return sum(m is not None and b is not None and m < b for m, b in pairs)


def table(results: list[tuple[str, dict]], protocol: str = "delit") -> str:
    rows = ROWS
    if protocol == "diffusionlight":
        results = [(name, r.get("reference_protocol") or {}) for name, r in results]
        rows = REFERENCE_ROWS
    first = results[0][1]
    names = [name for name, _ in results]
    head = "| metric | " + " | ".join(names) + " | free baseline | codec ceiling |"
    lines = [head, "|" + " --- |" * (len(names) + 3)]
    for label, path, digits, base_key in rows:
        cells = [fmt(result_value(r.get("model"), path), digits) for _, r in results]
        base = fmt(result_value(first.get(base_key), path), digits)
        ceiling = fmt(result_value(first.get("codec_ceiling"), path), digits)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {base} | {ceiling} |")
    cells = [f"{wins(r, rows)} of 9" for _, r in results]
    lines.append("| sphere metrics beating the mean map | " + " | ".join(cells) + " | - | - |")
    counts = " / ".join(f"{name}: n={r.get('n')}" for name, r in results)
    return "\n".join(lines) + (f"\n\nSamples: {counts}." if protocol == "delit" else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", action="append", required=True, help="NAME=path/to/eval.json")
    ap.add_argument(
        "--protocol",
        choices=("delit", "diffusionlight"),
        default="delit",
        help="delit's sphere metrics, or the eval's reference_protocol block",
    )
    args = ap.parse_args()
    results = []
    for item in args.eval:
        name, sep, path = item.partition("=")
        if not sep:
            sys.exit(f"error: --eval {item!r}: expected NAME=path")
        try:
            results.append((name, json.loads(Path(path).read_text())))
        except (OSError, ValueError) as exc:
            sys.exit(f"error: {path}: {exc}")
    print(table(results, args.protocol))


if __name__ == "__main__":
    main()
