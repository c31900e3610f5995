"""Submission zips for MeViS valid and Ref-YouTube-VOS valid: layout, completeness, CLI."""

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from glus_jax import cli
from glus_jax.eval.submission import SubmissionIncompleteError, check_submission, package_submission


def write_meta(path, videos):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"videos": videos}))


def make_preds(pred, videos, skip=()):
    names = []
    for v, vd in videos.items():
        for e in vd["expressions"]:
            for f in vd["frames"]:
                rel = f"{v}/{e}/{f}.png"
                if rel in skip:
                    continue
                (pred / v / e).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((5, 7), 255 * (len(names) % 2), np.uint8)).save(pred / rel)
                names.append(rel)
    return names


VIDEOS = {
    "a1b2": {"expressions": {"0": {"exp": "x"}, "1": {"exp": "y"}}, "frames": ["00000", "00005", "00010"]},
    "c3": {"expressions": {"0": {"exp": "z"}}, "frames": ["00000", "00001"]},
}


def test_mevis_valid_zip_layout(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    write_meta(root / "mevis" / "valid" / "meta_expressions.json", VIDEOS)
    names = make_preds(pred, VIDEOS)
    (pred / "extra_video" / "0").mkdir(parents=True)  # not in the split: not packaged
    (pred / "extra_video" / "0" / "00000.png").write_bytes(b"x")
    out = package_submission("mevis", pred, root, tmp_path / "out" / "mevis.zip", progress=False)
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(names)  # <video>/<exp_id>/<frame>.png at the root
        assert zf.read("c3/0/00001.png") == (pred / "c3/0/00001.png").read_bytes()
    assert not (tmp_path / "out" / "mevis.zip.partial").exists()


def test_refytvos_valid_zip_layout_without_test_videos(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    meta = root / "Refer-YouTube-VOS" / "meta_expressions"
    write_meta(meta / "valid" / "meta_expressions.json", VIDEOS)
    write_meta(meta / "test" / "meta_expressions.json", {"c3": VIDEOS["c3"]})
    names = make_preds(pred, {"a1b2": VIDEOS["a1b2"]})  # no predictions for the test video
    out = package_submission("refytvos", pred, root, tmp_path / "refytvos.zip", progress=False)
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(f"Annotations/{n}" for n in names)


def test_incomplete_submission_lists_what_is_missing(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    write_meta(root / "mevis" / "valid" / "meta_expressions.json", VIDEOS)
    make_preds(pred, VIDEOS, skip={"a1b2/1/00005.png", "c3/0/00000.png", "c3/0/00001.png"})
    (pred / "a1b2" / "0" / "00010.png").write_bytes(b"")  # empty file counts as missing
    expected = ["a1b2/0/00010.png", "a1b2/1/00005.png", "c3/0/00000.png", "c3/0/00001.png"]
    assert check_submission("mevis", pred, root) == expected
    out = tmp_path / "mevis.zip"
    with pytest.raises(SubmissionIncompleteError) as ei:
        package_submission("mevis", pred, root, out, progress=False)
    assert ei.value.missing == expected
    for m in expected:
        assert m in str(ei.value)
    assert not out.exists()


def test_cli_package(tmp_path, capsys):
    root, pred = tmp_path / "data", tmp_path / "pred"
    write_meta(root / "mevis" / "valid" / "meta_expressions.json", VIDEOS)
    names = make_preds(pred, VIDEOS)
    out = tmp_path / "sub.zip"
    rc = cli.main(["evaluate", "--benchmark", "mevis", "--pred", str(pred), "--data-root", str(root),
                   "--package", str(out), "--no-progress"])
    assert rc == 0 and str(out) in capsys.readouterr().out
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(names)
    (pred / "c3" / "0" / "00001.png").unlink()
    rc = cli.main(["evaluate", "--benchmark", "mevis", "--pred", str(pred), "--data-root", str(root),
                   "--package", str(tmp_path / "sub2.zip"), "--no-progress"])
    assert rc == 2 and "c3/0/00001.png" in capsys.readouterr().err
    rc = cli.main(["evaluate", "--benchmark", "revos", "--pred", str(pred), "--data-root", str(root),
                   "--package", str(tmp_path / "sub3.zip"), "--no-progress"])
    assert rc == 2 and "no server submission format" in capsys.readouterr().err
