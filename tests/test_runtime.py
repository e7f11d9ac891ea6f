"""The runtime plumbing: one device/dtype resolver, fault injection, logging, CLI options."""

from __future__ import annotations

import io
import logging
import sys

import pytest
import torch
import typer

from cli.app import load_commands, main
from delit_cache.utils.device import resolve_device, resolve_dtype
from delit_cache.utils.errors import DelitError
from delit_cache.utils.faults import FAULT_ENV, InjectedFault, fault_point
from delit_cache.utils.logs import (
    configure_logging,
    get_logger,
    logging_beside_bars,
    progress_bar,
)


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected


@pytest.mark.parametrize("name", ["gpu", "cpu:0", "auto:1", "cuda:x", "", "tpu"])
def test_bad_device_names_are_one_error_line(name):
    with pytest.raises(DelitError, match="expected auto, cpu, cuda, cuda:N or mps") as err:
        resolve_device(name)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DelitError, match="CUDA is not available"):
            resolve_device(name)


def test_dtype_names():
    for name in ("float32", "fp32", "FP32", torch.float32):
        assert resolve_dtype(name) == torch.float32
    for name in ("bfloat16", "bf16", torch.bfloat16):
        assert resolve_dtype(name) == torch.bfloat16
    half = (torch.float32, torch.float16)
    assert resolve_dtype("fp16", allowed=half) == resolve_dtype("float16", allowed=half)
    for bad in ("fp16", "float64", "int8", torch.float64):  # fp16: not for the VAE
        with pytest.raises(DelitError, match="expected one of float32, bfloat16"):
            resolve_dtype(bad)


def test_fault_point_raises_or_passes(monkeypatch):
    fault_point("encode.block", 1)  # unset: nothing happens
    monkeypatch.setenv(FAULT_ENV, "encode.block:2:raise")
    fault_point("encode.block", 1)
    fault_point("train.step", 2)
    with pytest.raises(InjectedFault):
        fault_point("encode.block", 2)
    monkeypatch.setenv(FAULT_ENV, "encode.block")
    with pytest.raises(DelitError, match="expected <point>:<count>:kill"):
        fault_point("encode.block", 2)


def _command(name: str):
    group = typer.main.get_command(load_commands())
    path = name.split()
    cmd = group
    for part in path:
        cmd = cmd.commands[part]
    return cmd


COMMANDS = [
    "vae-check", "envmetrics", "envshow", "pack", "synth", "data check", "data sheet",
    "encode", "train-heads", "eval", "infer", "demo",
]  # fmt: skip


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help(name):
    for param in _command(name).params:
        assert param.help, f"delit {name}: {param.name} has no help text"


@pytest.mark.parametrize("name", ["vae-check", "encode", "eval", "infer", "demo"])
def test_device_defaults_to_auto(name):
    device = next(p for p in _command(name).params if p.name == "device")
    assert device.default == "auto"


def test_old_spellings_work_but_are_hidden(tmp_path, capsys):
    assert main(["train-heads", "--help"]) == 0
    shown = capsys.readouterr().out
    for old in ("--data_root", "--output_dir", "--num_epochs", "--batch_size"):
        assert old not in shown
    assert "--cache" in shown and "--batch-size" in shown
    missing = tmp_path / "nope.zarr"
    args = ["train-heads", "--data_root", str(missing), "--output_dir", str(tmp_path / "run")]
    assert main([*args, "--num_epochs", "1", "--batch_size=2"]) == 2
    err = capsys.readouterr().err  # the old spellings parsed: the cache path was read
    assert "no latent cache" in err and "No such option" not in err


def test_verbosity_flags_set_the_delit_logger(capsys):
    logger = logging.getLogger("delit")
    assert main(["-q", "envshow", "--help"]) == 0
    assert logger.level == logging.WARNING
    assert main(["-v", "envshow", "--help"]) == 0
    assert logger.level == logging.DEBUG
    assert main(["-v", "-q", "envshow", "--help"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
    assert main(["envshow", "--help"]) == 0
    assert logger.level == logging.INFO


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bars_draw_on_a_terminal_stderr_only(monkeypatch, capsys, terminal):
    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = progress_bar(total=2, unit="img")
    bar.update(2)
    bar.close()
    assert ("2/2" in err.getvalue()) is terminal
    assert capsys.readouterr().out == ""


def test_log_lines_beside_a_bar_are_whole_lines(monkeypatch):
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    configure_logging()
    bar = progress_bar(total=2, unit="img")
    with logging_beside_bars():
        bar.update(1)
        get_logger("delit_cache.infer.delighter").error("error: %s", "x.png: unreadable")
        bar.update(1)
    bar.close()
    lines = err.getvalue().replace("\r", "\n").splitlines()
    assert "error: x.png: unreadable" in lines
