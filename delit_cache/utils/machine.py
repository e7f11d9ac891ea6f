"""What the benchmarks ran on: one name for a device, for their tables."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device | str = "cpu") -> str:
    """GPU model, or the CPU model with the torch thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls_ms(
    fn: Callable[[], object], device: torch.device | str, warmup: int, iters: int
) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``iters`` times; each timed call's wall
    milliseconds, synchronised on the device before and after."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as one string ("?" where unknown)."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def run_header(title: str, command: str, device: torch.device | str = "cpu") -> list[str]:
    """Markdown lines that open a benchmark table: title, date, machine, command, load."""
    cores = os.cpu_count() or 0
    lines = [
        f"# {title}",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {device_name(device)}; {cores} CPU cores visible; torch {torch.__version__}",
        f"- command: `{command}`",
        f"- load average at the start (1/5/15 min): {load_average()}",
    ]
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores and busy > cores:
        lines.append(
            f"- shared machine: the 1-minute load ({busy:.1f}) exceeds the {cores} cores, so "
            "wall times are inflated by other work; CPU times less so"
        )
    return lines


def table_lines(columns: tuple[tuple[str, str], ...], rows: list[dict]) -> list[str]:
    """A markdown table: a header of the ``columns``' names, then each row's values formatted
    by the columns' format strings (``("ms", "{:.1f}")``)."""
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + " --- |" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[name]) for name, fmt in columns) + " |")
    return lines


def emit_report(lines: list[str], out: Path | None) -> None:
    """Print a benchmark report (``run_header`` lines, then its table) and, with ``out``,
    write the same text there."""
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
