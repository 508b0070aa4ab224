"""Video files round-trip: gif and npy exactly, mp4 exactly in lossless mode and closely by default."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image

from sg2vid_diffusers.video_io import VideoIOError, read_video, to_uint8_frames, write_video

PALETTE = np.array(
    [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (230, 30, 230), (30, 230, 230)],
    dtype=np.uint8,
)


def palette_clip(num_frames: int = 16, height: int = 64, width: int = 64) -> np.ndarray:
    """SG-Shapes-like frames: filled palette squares and discs moving on black, then holding still
    for the last four frames (identical consecutive frames are a GIF-writer trap)."""
    ys, xs = np.mgrid[:height, :width]
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for f in range(num_frames):
        t = min(f, num_frames - 4)
        for k, color in enumerate(PALETTE[:3]):
            cx = 8 + 2 * t + 15 * k
            cy = 10 + 12 * k
            if k == 1:
                mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= 6.5**2
            else:
                mask = (abs(xs - cx) <= 6) & (abs(ys - cy) <= 6)
            frames[f][mask] = color
    return frames


def distance_beyond(a: np.ndarray, b: np.ndarray, radius: float) -> float:
    """Fraction of pixels whose RGB distance exceeds ``radius`` (the conformance metric uses 90)."""
    return float((np.linalg.norm(a.astype(np.float64) - b, axis=-1) > radius).mean())


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("extension", [".gif", ".npy"])
def test_gif_and_npy_round_trips_are_exact(tmp_path, extension):
    frames = palette_clip()
    path = write_video(tmp_path / f"clip{extension}", frames)
    assert path == tmp_path / f"clip{extension}"
    back = read_video(path)
    assert back.dtype == np.uint8
    assert back.shape == frames.shape
    np.testing.assert_array_equal(back, frames)


def test_gif_keeps_every_frame_even_when_consecutive_frames_repeat(tmp_path):
    frames = np.zeros((5, 8, 8, 3), dtype=np.uint8)
    frames[1:4, 2:4, 2:4] = PALETTE[0]  # frames 1, 2, 3 are identical; 0 and 4 are black
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "repeat.gif", frames)), frames)


def test_gif_stores_frame_delay_in_hundredths_of_a_second(tmp_path):
    path = write_video(tmp_path / "clip.gif", palette_clip(num_frames=3), fps=8)
    with Image.open(path) as image:
        assert image.n_frames == 3
        assert image.info["duration"] == 120  # 1/8 s rounded to 12/100 s
        assert image.info["loop"] == 0


def test_gif_is_exact_when_each_frame_has_256_colors_but_the_video_has_more(tmp_path):
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, size=(2, 256, 3), dtype=np.uint8)
    # every frame uses all 256 of its own colours; the two frames share none of them (almost surely)
    frames = np.stack([colors[f][rng.permutation(np.arange(20 * 30) % 256)].reshape(20, 30, 3) for f in range(2)])
    assert len(np.unique(frames.reshape(-1, 3), axis=0)) > 256
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "many.gif", frames)), frames)


def test_gif_quantizes_frames_with_more_than_256_colors(tmp_path):
    ramp = np.linspace(0, 255, 32 * 32 * 3).reshape(1, 32, 32, 3).astype(np.uint8)
    back = read_video(write_video(tmp_path / "ramp.gif", ramp))
    assert back.shape == ramp.shape
    assert np.abs(back.astype(int) - ramp).mean() < 4  # lossy, but a faithful picture


def test_reading_a_gif_with_transparency_returns_rgb(tmp_path):
    path = tmp_path / "foreign.gif"
    first = Image.new("RGBA", (10, 6), (0, 0, 0, 0))
    second = Image.new("RGBA", (10, 6), (230, 30, 30, 255))
    first.save(path, save_all=True, append_images=[second], duration=100, disposal=2)
    back = read_video(path)
    assert back.shape == (2, 6, 10, 3)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back[1], np.broadcast_to(PALETTE[0], (6, 10, 3)))


def test_mp4_default_mode_is_close_to_the_frames(tmp_path):
    frames = palette_clip()
    back = read_video(write_video(tmp_path / "clip.mp4", frames))
    assert back.shape == frames.shape and back.dtype == np.uint8
    error = np.abs(back.astype(int) - frames)
    # Measured: mean 1.5, max 137, 0.7% of pixels past the conformance radius of 90 and 3.2% past
    # 30 (chroma subsampling at shape edges); the bounds leave room for other ffmpeg builds, not
    # for a broken encoder.
    assert error.mean() < 2.5
    assert distance_beyond(back, frames, 90) < 0.02
    assert distance_beyond(back, frames, 30) < 0.06


def test_mp4_lossless_mode_is_exact(tmp_path):
    frames = palette_clip()
    back = read_video(write_video(tmp_path / "clip.mp4", frames, lossless=True))
    np.testing.assert_array_equal(back, frames)


def test_mp4_lossless_mode_is_exact_for_arbitrary_colors(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, size=(4, 16, 24, 3), dtype=np.uint8)
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "noise.mp4", frames, lossless=True)), frames)


def test_mp4_stores_the_frame_rate(tmp_path):
    path = write_video(tmp_path / "clip.mp4", palette_clip(num_frames=6), fps=12)
    num_frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert num_frames == 6
    assert seconds == pytest.approx(6 / 12, abs=0.01)


@pytest.mark.parametrize("height, width", [(30, 50), (21, 33), (1, 1), (64, 48)])
@pytest.mark.parametrize("extension, lossless", [(".mp4", False), (".mp4", True), (".gif", False), (".npy", False)])
def test_any_frame_size_round_trips_in_shape(tmp_path, height, width, extension, lossless):
    frames = palette_clip(num_frames=4, height=height, width=width)
    back = read_video(write_video(tmp_path / f"odd{extension}", frames, lossless=lossless))
    assert back.shape == (4, height, width, 3)
    if extension == ".mp4" and not lossless:
        assert distance_beyond(back, frames, 90) < 0.05
    else:
        np.testing.assert_array_equal(back, frames)


def test_extension_is_case_insensitive(tmp_path):
    frames = palette_clip(num_frames=2)
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "CLIP.GIF", frames)), frames)


def test_write_creates_missing_folders(tmp_path):
    path = write_video(tmp_path / "a" / "b" / "clip.npy", palette_clip(num_frames=2))
    assert path.is_file()


# ---- accepted inputs ---------------------------------------------------------------------------


def test_float_frames_in_unit_range_are_rounded_to_uint8(tmp_path):
    frames = palette_clip(num_frames=3)
    as_float = frames.astype(np.float64) / 255.0
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "f.npy", as_float)), frames)
    np.testing.assert_array_equal(to_uint8_frames(np.full((1, 2, 2, 3), 0.5, np.float16)), np.full((1, 2, 2, 3), 128))


def test_torch_tensors_are_accepted(tmp_path):
    frames = palette_clip(num_frames=3)
    as_uint8 = torch.from_numpy(frames)
    as_bfloat16 = torch.from_numpy(frames).float().div(255).to(torch.bfloat16).requires_grad_()
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "t.gif", as_uint8)), frames)
    back = read_video(write_video(tmp_path / "t.npy", as_bfloat16))
    assert np.abs(back.astype(int) - frames).max() <= 1  # bfloat16 keeps 8 significant bits


def test_a_list_of_frames_is_accepted(tmp_path):
    frames = palette_clip(num_frames=3)
    as_images = [Image.fromarray(frame) for frame in frames]
    np.testing.assert_array_equal(read_video(write_video(tmp_path / "l.gif", as_images)), frames)
    np.testing.assert_array_equal(to_uint8_frames(list(frames)), frames)


# ---- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((4, 8, 8), np.uint8), r"shape \(F, H, W, 3\), got \(4, 8, 8\)"),
        (np.zeros((4, 8, 8, 4), np.uint8), r"got \(4, 8, 8, 4\)"),
        (np.zeros((8, 8, 3), np.uint8), r"single frame"),
        (torch.zeros(4, 3, 8, 8), r"channels-first"),
        (np.zeros((0, 8, 8, 3), np.uint8), r"must not be empty"),
        ([], r"no frames"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 6, 3), np.uint8)], r"differ in shape"),
        (np.zeros((2, 8, 8, 3), np.int64), r"dtype int64"),
        (np.full((2, 8, 8, 3), 1.5), r"\[0, 1\], got values in \[1\.5, 1\.5\]"),
        (np.full((2, 8, 8, 3), np.nan), r"NaN"),
    ],
)
def test_bad_frames_are_refused_and_nothing_is_written(tmp_path, frames, message):
    path = tmp_path / "out" / "bad.mp4"
    with pytest.raises(VideoIOError, match=message) as info:
        write_video(path, frames)
    assert "bad.mp4" in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fps", [0, -1, float("nan"), float("inf"), "8", True])
def test_bad_fps_is_refused(tmp_path, fps):
    with pytest.raises(VideoIOError, match="fps"):
        write_video(tmp_path / "clip.gif", palette_clip(num_frames=2), fps=fps)
    assert folder_listing(tmp_path) == []


def test_unknown_extension_is_refused_on_write_and_read(tmp_path):
    with pytest.raises(VideoIOError, match=r"clip\.avi: unknown video extension '\.avi'"):
        write_video(tmp_path / "clip.avi", palette_clip(num_frames=2))
    (tmp_path / "clip.avi").write_bytes(b"whatever")
    with pytest.raises(VideoIOError, match=r"clip\.avi: unknown video extension"):
        read_video(tmp_path / "clip.avi")
    with pytest.raises(VideoIOError, match="unknown video extension ''"):
        read_video(tmp_path / "clip")


def test_reading_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")


@pytest.mark.parametrize(
    "content, message",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "dtype float32"),
        (np.zeros((8, 8, 3), np.uint8), r"shape \(F, H, W, 3\).*got \(8, 8, 3\)"),
        (np.zeros((2, 8, 8, 4), np.uint8), r"got \(2, 8, 8, 4\)"),
        (np.zeros((0, 8, 8, 3), np.uint8), r"got \(0, 8, 8, 3\)"),
        (np.array([{"frames": 1}], dtype=object), "not a readable .npy"),
        (b"not an npy file", "not a readable .npy"),
    ],
)
def test_bad_npy_content_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content, allow_pickle=True)
    with pytest.raises(VideoIOError, match=message) as info:
        read_video(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["bad.gif", "bad.mp4"])
def test_undecodable_gif_and_mp4_are_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not a video at all")
    with pytest.raises(VideoIOError, match=name):
        read_video(path)


# ---- atomic writes -----------------------------------------------------------------------------


@pytest.fixture
def failing_ffmpeg(tmp_path, monkeypatch):
    """An ffmpeg that writes half a file to its output path, then fails."""
    script = tmp_path / "bin" / "ffmpeg"
    script.parent.mkdir()
    script.write_text('#!/bin/sh\nfor last; do :; done\necho partial > "$last"\necho "boom" >&2\nexit 1\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(script))


def test_failed_mp4_write_leaves_no_file_and_no_temporary(tmp_path, failing_ffmpeg):
    folder = tmp_path / "videos"
    with pytest.raises(OSError, match=r"clip\.mp4: ffmpeg failed .*boom"):
        write_video(folder / "clip.mp4", palette_clip(num_frames=2))
    assert folder_listing(folder) == []


def test_failed_write_keeps_the_previous_file(tmp_path, failing_ffmpeg):
    path = tmp_path / "videos" / "clip.mp4"
    path.parent.mkdir()
    path.write_bytes(b"previous video")
    with pytest.raises(OSError):
        write_video(path, palette_clip(num_frames=2))
    assert path.read_bytes() == b"previous video"
    assert folder_listing(path.parent) == ["clip.mp4"]


def test_failed_npy_write_leaves_no_file_and_no_temporary(tmp_path, monkeypatch):
    def save_half_then_fail(file, array, **kwargs):
        file.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_video(tmp_path / "clip.npy", palette_clip(num_frames=2))
    assert folder_listing(tmp_path) == []


def test_successful_write_leaves_only_the_file(tmp_path):
    for extension in (".mp4", ".gif", ".npy"):
        write_video(tmp_path / f"clip{extension}", palette_clip(num_frames=2))
    assert folder_listing(tmp_path) == ["clip.gif", "clip.mp4", "clip.npy"]
    assert all(os.path.getsize(tmp_path / name) > 0 for name in folder_listing(tmp_path))


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from sg2vid_diffusers.video_io import write_video

    path = tmp_path / "v.npy"
    write_video(path, np.zeros((2, 4, 4, 3), dtype=np.uint8))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_the_package_and_npy_gif_files_need_no_imageio_ffmpeg(tmp_path):
    """imageio-ffmpeg (a 68 MB wheel) is imported only to read or write .mp4: a machine given only the
    wheels it lacks (a lent GPU, docs/training_video.md) runs the recipe's .npy path without it."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['imageio_ffmpeg'] = None\n"  # any import of it fails
        "import numpy as np, sg2vid_diffusers, sg2vid_diffusers.cli, sg2vid_diffusers.data.corpora\n"
        "from sg2vid_diffusers.video_io import read_video, write_video\n"
        f"root = {str(tmp_path)!r}\n"
        "video = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)\n"
        "for ext in ('npy', 'gif'):\n"
        "    write_video(f'{root}/v.{ext}', video); assert read_video(f'{root}/v.{ext}').shape == video.shape\n"
        "try:\n"
        "    write_video(f'{root}/v.mp4', video)\n"
        "except ImportError:\n"
        "    print('mp4 needs it')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mp4 needs it" in result.stdout
