"""Video input (frame folders, mp4) and resumable mask output."""

import numpy as np
import pytest
from PIL import Image

from glus_jax.inference import video_io as V


def _frames(t=5, h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (t, h, w, 3), dtype=np.uint8)


def test_frame_folder_sorted_by_name(tmp_path):
    frames = _frames()
    for i in [3, 0, 4, 1, 2]:
        Image.fromarray(frames[i]).save(tmp_path / f"{i:05d}.png")
    v = V.read_video(tmp_path)
    assert v.frame_names == ("00000", "00001", "00002", "00003", "00004")
    np.testing.assert_array_equal(v.frames, frames)


def test_frame_of_another_size_is_named(tmp_path):
    Image.fromarray(_frames(1)[0]).save(tmp_path / "00000.png")
    Image.fromarray(_frames(1, h=21)[0]).save(tmp_path / "00001.png")
    with pytest.raises(V.VideoError, match="00001.png: frame of size 30x21"):
        V.read_video(tmp_path)


def test_empty_corrupt_and_missing_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(V.VideoError, match="holds no frames"):
        V.read_video(tmp_path / "empty")
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(V.VideoError, match="bad.mp4: cannot decode video"):
        V.read_video(tmp_path / "bad.mp4")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "00000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(V.VideoError, match="00000.jpg: cannot decode image"):
        V.read_video(tmp_path / "f")
    with pytest.raises(V.VideoError, match="no such file"):
        V.read_video(tmp_path / "absent.mp4")


def test_mp4_round_trip(tmp_path):
    frames = np.zeros((6, 32, 48, 3), np.uint8)
    frames[:, 8:24, 10:30] = 200
    V.write_overlay_video(tmp_path / "v.mp4", frames, np.zeros((6, 32, 48), bool))
    v = V.read_video(tmp_path / "v.mp4")
    assert v.frames.shape == (6, 32, 48, 3) and v.name == "v"
    assert np.abs(v.frames.astype(int) - frames).mean() < 8  # lossy codec


def test_write_expression_marks_done_last(tmp_path):
    masks = np.zeros((3, 4, 5), bool)
    masks[1, 2, 3] = True
    d = V.write_expression(tmp_path, "vid", "0", ["00000", "00001", "00002"], masks, logits=masks * 2.0 - 1)
    assert V.is_done(tmp_path, "vid", "0")
    png = np.asarray(Image.open(d / "00001.png"))
    assert png.dtype == np.uint8 and png[2, 3] == 255 and png.sum() == 255
    logits = np.load(d / "logits.npz")
    assert sorted(logits.files) == ["00000", "00001", "00002"] and logits["00001"][2, 3] == 1.0
    with pytest.raises(ValueError, match="2 masks for 3 frames"):
        V.write_expression(tmp_path, "vid", "1", ["a", "b", "c"], masks[:2])
    assert not V.is_done(tmp_path, "vid", "1")
