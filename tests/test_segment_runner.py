"""Dataset-split segmentation: resumable outputs, crash safety, sharding over two JAX processes on
localhost, and clear errors for bad inputs (plumbing only: a tiny random model)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from glus_jax.checkpoint import CheckpointError
from glus_jax.data.synthetic import WorldConfig, generate
from glus_jax.inference import runner, video_io
from glus_jax.inference.pipeline import GLUSPipeline
from glus_jax.models.io import load_model
from tests.glus_fixtures import random_glus_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(height=48, width=64, min_frames=8, max_frames=8, min_objects=2, max_objects=3,
                      min_expressions=2, max_expressions=2)
    generate(root / "mevis", "valid_u", 3, seed=1, config=cfg)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_glus_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    model, tok, _ = load_model(model_dir)
    return GLUSPipeline(model, tok)


def test_dataset_jobs_are_sorted_and_sharded_disjointly(world):
    jobs = runner.dataset_jobs("mevis", world, "valid_u")
    assert len(jobs) == 6 and jobs == sorted(jobs, key=lambda j: (j.video, j.exp_id))
    a, b = runner.shard(jobs, 0, 2), runner.shard(jobs, 1, 2)
    assert not set(a) & set(b) and set(a) | set(b) == set(jobs)


def test_resume_skips_done_and_redoes_partial_expressions(world, pipe, tmp_path):
    jobs = runner.dataset_jobs("mevis", world, "valid_u")
    stats = runner.run_jobs(pipe, jobs, tmp_path, progress=False)
    assert stats["expressions"] == 6 and stats["skipped"] == 0
    for j in jobs:
        d = tmp_path / j.video / j.exp_id
        assert sorted(p.stem for p in d.glob("*.png")) == list(j.frame_names)
    # An expression whose marker is gone (killed mid-write) is redone; the others are skipped.
    victim = jobs[3]
    (tmp_path / victim.video / victim.exp_id / video_io.DONE_MARKER).unlink()
    (tmp_path / victim.video / victim.exp_id / f"{victim.frame_names[-1]}.png").unlink()
    stats = runner.run_jobs(pipe, jobs, tmp_path, progress=False)
    assert stats["expressions"] == 1 and stats["skipped"] == 5
    assert video_io.is_done(tmp_path, victim.video, victim.exp_id)


def test_a_crash_leaves_unfinished_expressions_not_done(world, pipe, tmp_path, monkeypatch):
    jobs = runner.dataset_jobs("mevis", world, "valid_u")
    real = pipe.segment
    calls = []

    def flaky(frames, expressions, key_frames=None):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(frames, expressions, key_frames=key_frames)

    monkeypatch.setattr(pipe, "segment", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        runner.run_jobs(pipe, jobs, tmp_path, progress=False)
    done = [video_io.is_done(tmp_path, j.video, j.exp_id) for j in jobs]
    assert done == [True, True, False, False, False, False]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_segment_their_own_shares(world, model_dir, tmp_path):
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "glus_jax.cli", "segment", "--model", str(model_dir), "--dataset", str(world),
             "--split", "valid_u", "--out", str(tmp_path), "--no-progress", "--coordinator", f"127.0.0.1:{port}",
             "--num-processes", "2", "--process-id", str(i)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert all("segmented 3 expression(s)" in out for out, _ in outs)
    jobs = runner.dataset_jobs("mevis", world, "valid_u")
    assert all(video_io.is_done(tmp_path, j.video, j.exp_id) for j in jobs)


def test_expression_file_without_its_video_is_named(world, tmp_path):
    import shutil

    broken = tmp_path / "mevis" / "valid_u"
    shutil.copytree(world / "mevis" / "valid_u", broken)
    meta = json.loads((broken / "meta_expressions.json").read_text())
    victim = sorted(meta["videos"])[0]
    shutil.rmtree(broken / "JPEGImages" / victim)
    with pytest.raises(Exception, match=victim):
        runner.dataset_jobs("mevis", tmp_path, "valid_u")


def test_model_directory_of_another_architecture(model_dir, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["model"]["llava"]["llama"]["intermediate_size"] += 8
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="mis-shaped") as e:
        load_model(other)
    assert "mlp/up_proj/kernel" in str(e.value)
    with pytest.raises(CheckpointError, match="not a model directory"):
        load_model(tmp_path / "absent")


def test_frame_index_accepts_names_and_numbers():
    v = video_io.Video("v", np.zeros((3, 2, 2, 3), np.uint8), ("00000", "00005", "00010"))
    assert runner.frame_index(v, "00005") == 1 and runner.frame_index(v, "00010.jpg") == 2
    assert runner.frame_index(v, "10") == 2
    with pytest.raises(Exception, match="not a frame"):
        runner.frame_index(v, "00003")
