"""delit infer and the Delighter API: output files and sizes, failures, name collisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cli.app import main
from delit_cache.infer.delighter import Delighter, collect_inputs, output_names, to_image_tensor
from delit_cache.models import DelitConfig, create_heads
from delit_cache.models.pretrained import save_heads

SMALL = DelitConfig(extractor_width=32, extractor_blocks=1, flat_width=32, env_width=32, env_dim=64)
SIZE = 32  # model size for these tests


@pytest.fixture(scope="module")
def heads_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "heads.safetensors"
    return save_heads(create_heads(SMALL, seed=0), path, extra={"image_size": SIZE})


@pytest.fixture(scope="module")
def delighter(heads_file, tiny_vae):
    return Delighter.from_pretrained(heads_file, tiny_vae, device="cpu", batch_size=2)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth uint8 RGB photo [h,w,3]."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 4, 4, generator=gen)
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear")[0]
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Odd-sized photos, same-stem photos in two folders, one unreadable file."""
    root = tmp_path_factory.mktemp("photos")
    (root / "a").mkdir()
    (root / "b" / "deep").mkdir(parents=True)
    Image.fromarray(photo(50, 75, 1)).save(root / "wide.png")  # 75 wide x 50 high
    Image.fromarray(photo(41, 23, 2)).save(root / "a" / "face.jpg", quality=95)
    Image.fromarray(photo(30, 30, 3)).save(root / "b" / "deep" / "face.png")
    (root / "b" / "broken.png").write_bytes(b"this is not a png")
    (root / "b" / "notes.txt").write_text("ignored: not an image suffix")
    return root


def test_infer_writes_three_files_per_input_and_reports_failures(
    inputs, heads_file, tiny_vae_pth, tmp_path, capsys
):
    out = tmp_path / "out"
    args = [
        "infer", str(inputs / "wide.png"), str(inputs / "a"), str(inputs / "b"),
        "--checkpoint", str(heads_file), "--vae", str(tiny_vae_pth), "--out", str(out),
        "--device", "cpu", "--batch-size", "2",
    ]  # fmt: skip
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1  # one input failed
    broken = [line for line in err.splitlines() if "broken.png" in line]
    assert len(broken) == 1 and broken[0].startswith("error: ")
    assert "3 image(s) done, 1 failed" in err
    expected = {"wide": (50, 75), "a__face": (41, 23), "b__deep__face": (30, 30)}
    names = {p.name for p in out.iterdir()}
    assert names == {f"{n}_{s}" for n in expected for s in ("flat.png", "env.exr", "env.png")}
    from delit_cache.data.imageio import read_hdr, read_ldr

    for name, (h, w) in expected.items():
        assert read_ldr(out / f"{name}_flat.png").shape == (h, w, 3)
        env = read_hdr(out / f"{name}_env.exr")
        assert env.shape == (128, 256, 3) and np.isfinite(env).all() and env.min() >= 0
        fig = read_ldr(out / f"{name}_env.png")
        assert fig.ndim == 3 and fig.shape[1] > fig.shape[0]  # panorama beside the spheres
    # same stem, different folders: distinct outputs with distinct content
    a = read_ldr(out / "a__face_flat.png")
    b = read_ldr(out / "b__deep__face_flat.png")
    assert a.shape != b.shape


def test_infer_exit_0_when_all_succeed(inputs, heads_file, tiny_vae_pth, tmp_path, capsys):
    code = main(
        ["infer", str(inputs / "wide.png"), "--checkpoint", str(heads_file), "--vae",
         str(tiny_vae_pth), "--out", str(tmp_path), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    assert "1 image(s) done, 0 failed" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_infer_bad_checkpoint_exits_2(inputs, tiny_vae_pth, tmp_path, capsys):
    code = main(
        ["infer", str(inputs / "wide.png"), "--checkpoint", str(tiny_vae_pth), "--vae",
         str(tiny_vae_pth), "--out", str(tmp_path / "o")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "o").exists()


def test_delighter_call_accepts_arrays_pil_and_tensors(delighter):
    img = photo(50, 75, 1)
    from_pil = to_image_tensor(Image.fromarray(img))
    assert torch.equal(from_pil, to_image_tensor(img))
    results = [delighter(img), delighter(torch.from_numpy(img).permute(2, 0, 1).float() / 255.0)]
    for r in results:
        assert r.flat.shape == (50, 75, 3) and r.flat.dtype == np.float32
        assert 0.0 <= r.flat.min() and r.flat.max() <= 1.0
        assert r.env.shape == (128, 256, 3) and r.env.dtype == np.float32
        assert np.isfinite(r.env).all() and r.env.min() >= 0
    np.testing.assert_allclose(results[1].flat, results[0].flat, atol=1e-5)
    np.testing.assert_allclose(results[1].env, results[0].env, rtol=1e-4, atol=1e-5)


def test_untrained_delighter_returns_the_photo_through_the_codec(delighter, tiny_vae):
    """Untrained heads: flat = restore(decode(encode(letterboxed photo)))."""
    img = to_image_tensor(photo(50, 75, 1))
    square, placement = delighter.transform(img)
    expected = delighter.transform.restore(tiny_vae.roundtrip(square[None])[0], placement)
    got = delighter(img).flat
    np.testing.assert_allclose(got, expected.permute(1, 2, 0).numpy(), atol=1e-4)


def test_batched_equals_one_by_one(delighter):
    """Two photos of different sizes in one batch give what each gives alone."""
    images = [to_image_tensor(photo(47, 33, 5)), to_image_tensor(photo(20, 64, 6))]
    batched = delighter.predict(images)  # batch size 2: one batch
    for im, res in zip(images, batched, strict=True):
        single = delighter(im)
        assert res.flat.shape == (*im.shape[1:], 3)
        np.testing.assert_allclose(res.flat, single.flat, atol=1e-4)
        np.testing.assert_allclose(res.env, single.env, rtol=1e-3, atol=1e-4)
    assert not np.allclose(batched[0].env, batched[1].env)


def test_output_names_disambiguate_same_stems(tmp_path):
    paths = [
        tmp_path / "x" / "face.png",
        tmp_path / "y" / "face.png",
        tmp_path / "z" / "face.png",
        tmp_path / "z" / "face.jpg",
        tmp_path / "solo.png",
    ]
    names = output_names(paths)
    assert len(set(names.values())) == len(paths)
    assert names[paths[0]] == "x__face" and names[paths[4]] == "solo"
    assert names[paths[2]] == "z__face_png" and names[paths[3]] == "z__face_jpg"


def test_collect_inputs_recurses_sorts_and_reports_missing(inputs, tmp_path):
    files, problems = collect_inputs([inputs / "b", inputs / "wide.png", tmp_path / "nope.png"])
    assert [p.name for p in files] == ["broken.png", "face.png", "wide.png"]
    assert len(problems) == 1 and "nope.png" in problems[0]


def test_to_image_tensor_layouts():
    hwc = np.zeros((5, 7, 3), np.uint8)
    hwc[..., 1] = 255
    x = to_image_tensor(hwc)
    assert x.shape == (3, 5, 7) and x[1].min() == 1.0 and x[0].max() == 0.0
    assert to_image_tensor(np.zeros((5, 7), np.float32)).shape == (3, 5, 7)
    assert to_image_tensor(np.zeros((5, 7, 4), np.uint8)).shape == (3, 5, 7)
    assert to_image_tensor(torch.rand(3, 5, 7)).shape == (3, 5, 7)
    assert to_image_tensor(torch.rand(5, 7, 3)).shape == (3, 5, 7)
    with pytest.raises(TypeError):
        to_image_tensor("not an image")


def test_infer_checkpoint_takes_every_heads_form(inputs, heads_file, tiny_vae_pth, tmp_path):
    """--checkpoint: a save_pretrained folder, a heads file and a run folder give one result."""
    from delit_cache.models.pretrained import load_heads

    folder = load_heads(heads_file).save_pretrained(tmp_path / "pretrained", {"image_size": SIZE})
    flats = []
    for i, source in enumerate((folder, heads_file, heads_file.parent)):
        out = tmp_path / f"out{i}"
        args = ["infer", str(inputs / "wide.png"), "--checkpoint", str(source)]
        assert main([*args, "--vae", str(tiny_vae_pth), "--out", str(out), "--device", "cpu"]) == 0
        flats.append(np.asarray(Image.open(out / "wide_flat.png")))
    assert all(np.array_equal(flats[0], f) for f in flats[1:])


def test_infer_checkpoint_folder_without_config_is_one_error_line(
    inputs, heads_file, tiny_vae_pth, tmp_path, capsys
):
    from delit_cache.models.pretrained import load_heads

    folder = load_heads(heads_file).save_pretrained(tmp_path / "pretrained")
    (folder / "config.json").unlink()
    args = ["infer", str(inputs / "wide.png"), "--checkpoint", str(folder)]
    code = main([*args, "--vae", str(tiny_vae_pth), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "without config.json" in err[0]


def test_infer_imports_only_what_it_needs(tmp_path):
    """The start-up path: no DiffSynth package, transformers, torchvision, zarr, webdataset
    or tensorboard for `delit infer` (they cost seconds of import time)."""
    import subprocess
    import sys

    Image.fromarray(photo(40, 40, seed=1)).save(tmp_path / "p.png")
    args = [str(tmp_path / "p.png"), "--vae", "demo", "--checkpoint", "demo", "--size", "32"]
    args += ["--out", str(tmp_path / "o"), "--device", "cpu"]
    code = (
        "import sys; from delit_cli.app import main; "
        f"assert main({['infer', *args]!r}) == 0; "
        "heavy = ('diffsynth', 'transformers', 'torchvision', 'zarr', 'webdataset', "
        "'tensorboard'); bad = [m for m in heavy if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "o" / "p_flat.png").is_file()


def test_flip_average_is_mirror_equivariant_and_the_mean_of_both_passes(delighter):
    """With ``flip_average`` the answer for the mirror image is the mirrored answer (the
    task's symmetry, which the plain pass of this random model lacks), and it is the mean of
    the plain passes on the photo and on its mirror image, each mapped back."""
    from delit_cache.lighting.envmap import mirror_env

    model = delighter.model
    gen = torch.Generator().manual_seed(3)
    x = torch.nn.functional.interpolate(
        torch.rand(2, 3, 4, 4, generator=gen), size=(SIZE, SIZE), mode="bilinear"
    )
    avg, avg_m = model.infer(x, flip_average=True), model.infer(x.flip(-1), flip_average=True)
    torch.testing.assert_close(avg_m["flat"], avg["flat"].flip(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(avg_m["env"], mirror_env(avg["env"]), atol=1e-4, rtol=1e-4)
    plain, plain_m = model.infer(x), model.infer(x.flip(-1))
    assert not torch.allclose(plain_m["env"], mirror_env(plain["env"]), atol=1e-3)
    mean_flat = 0.5 * (plain["flat"] + plain_m["flat"].flip(-1))
    mean_env = 0.5 * (plain["env"] + mirror_env(plain_m["env"]))
    torch.testing.assert_close(avg["flat"], mean_flat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(avg["env"], mean_env, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(avg["env_code"], plain["env_code"], atol=1e-5, rtol=1e-5)
    assert avg["flat"].shape == x.shape and avg["env_code"].shape[0] == 2


def test_infer_flip_average_flag(inputs, heads_file, tiny_vae_pth, tmp_path):
    """``--flip-average`` writes the same files; the flat-lit image is the averaged one."""
    plain, flipped = tmp_path / "plain", tmp_path / "flip"
    base = ["infer", str(inputs / "b" / "deep" / "face.png"), "--checkpoint", str(heads_file)]
    base += ["--vae", str(tiny_vae_pth), "--device", "cpu"]
    assert main([*base, "--out", str(plain)]) == 0
    assert main([*base, "--out", str(flipped), "--flip-average"]) == 0
    names = sorted(p.name for p in flipped.iterdir())
    assert names == sorted(p.name for p in plain.iterdir()) and len(names) == 3
    a = np.asarray(Image.open(plain / "face_flat.png"), dtype=np.float32)
    b = np.asarray(Image.open(flipped / "face_flat.png"), dtype=np.float32)
    assert a.shape == b.shape and np.abs(a - b).max() > 0


def test_infer_an_output_that_cannot_be_written_fails_that_photo_only(
    inputs, heads_file, tiny_vae_pth, tmp_path, capsys
):
    """A folder where one photo's env map should go: that photo fails in one line naming the
    file (not its temp name), none of its three outputs stays, the others are written, exit 1."""
    out = tmp_path / "out"
    (out / "wide_env.exr").mkdir(parents=True)
    args = [
        "infer", str(inputs / "wide.png"), str(inputs / "a"),
        "--checkpoint", str(heads_file), "--vae", str(tiny_vae_pth), "--out", str(out),
        "--device", "cpu", "--batch-size", "2",
    ]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "wide" in ln]
    assert line.startswith("error: ") and f"{out / 'wide_env.exr'}: Is a directory" in line
    assert ".tmp" not in err and "1 image(s) done, 1 failed" in err
    names = {p.name for p in out.iterdir()}
    assert names == {"wide_env.exr", "face_flat.png", "face_env.exr", "face_env.png"}


def test_infer_unwritable_out_is_one_line_naming_the_folder(
    inputs, heads_file, tiny_vae_pth, tmp_path, capsys, monkeypatch
):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "out"
    args = [
        "infer", str(inputs / "wide.png"), "--checkpoint", str(heads_file),
        "--vae", str(tiny_vae_pth), "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {out}: cannot write into this folder (Permission denied)"]
    assert not out.exists()  # made for the run, removed when nothing could be written
