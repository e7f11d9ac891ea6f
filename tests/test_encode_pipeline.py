"""The stages around the encoder: ordered decoding threads, the background writer, the
plain and pipelined encode paths giving the same store."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zarr
from test_encode import _encode, write_shards

from delit_cache.cache import store as cm
from delit_cache.cache.pipeline import BackgroundWriter, StageClock, ordered_map


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_ordered_map_keeps_order_and_raises_at_the_failing_item(workers):
    def slow_square(i: int) -> int:
        time.sleep(0.01 * ((7 * i) % 3))  # later items often finish first
        if i == 6:
            raise ValueError("item 6")
        return i * i

    got = []
    with pytest.raises(ValueError, match="item 6"):
        for value in ordered_map(slow_square, range(10), workers):
            got.append(value)
    assert got == [i * i for i in range(6)]


def test_ordered_map_uses_other_threads_only_with_workers():
    names = set(ordered_map(lambda _: threading.current_thread().name, range(4), 0))
    assert names == {threading.current_thread().name}
    names = set(ordered_map(lambda _: threading.current_thread().name, range(4), 2))
    assert names and all(n.startswith("delit-decode") for n in names)


def test_background_writer_writes_in_order_in_its_thread():
    seen = []
    with BackgroundWriter(lambda i: seen.append((i, threading.current_thread().name))) as w:
        for i in range(5):
            w.submit(i)
    assert [i for i, _ in seen] == list(range(5))
    assert {name for _, name in seen} == {"delit-writer"}


def test_background_writer_raises_its_error_and_drops_the_rest():
    written = []

    def write(i: int) -> None:
        if i == 1:
            raise OSError("disk full")
        written.append(i)

    with pytest.raises(OSError, match="disk full"), BackgroundWriter(write, depth=1) as w:
        for i in range(6):
            w.submit(i)
            time.sleep(0.02)
    assert written == [0]  # nothing after the failure


def test_background_writer_flushes_queued_writes_when_the_caller_fails():
    written = []

    def write(i: int) -> None:
        time.sleep(0.02)
        written.append(i)

    with pytest.raises(RuntimeError, match="encoder"), BackgroundWriter(write, depth=4) as w:
        for i in range(3):
            w.submit(i)
        raise RuntimeError("encoder failed")
    assert written == [0, 1, 2]  # blocks handed over before the failure are still written


def test_stage_clock_adds_up():
    clock = StageClock()
    with clock.stage("a"):
        time.sleep(0.01)
    clock.add("a", 1.0)
    assert 1.01 <= clock.get("a") < 1.5 and clock.get("b") == 0.0


def test_plain_and_pipelined_encode_write_identical_stores(tmp_path, tiny_vae):
    shards = write_shards(tmp_path / "shards", 7)
    outs = {w: tmp_path / f"c{w}.zarr" for w in (0, 2)}
    summaries = {w: _encode(tiny_vae, shards, out, workers=w) for w, out in outs.items()}
    groups = {w: zarr.open_group(str(out), mode="r") for w, out in outs.items()}
    for name in (*cm.DATA_ARRAYS, "key", "block_done", "block_sha256"):
        np.testing.assert_array_equal(groups[0][name][:], groups[2][name][:])
    assert cm.damage_report(outs[2])[0] == []
    for s in summaries.values():
        assert s.encoded == 7
        assert {"decode", "encode", "write", "wait_input", "wait_write"} <= set(s.stages)
        assert all(v >= 0 for v in s.stages.values())
        assert 0 < s.encoder_share <= 1.0
        assert s.limiting_stage in ("encode", "decode", "write")
        assert "limiting stage" in s.stage_line()
