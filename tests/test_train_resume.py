"""Exact resume after a real SIGKILL: `train.loop.train` for 6 steps straight vs 3 steps, the process killed
(SIGKILL from here, while it waits after its step-3 checkpoint was requested, which may still be in
flight), restarted with the same config and workdir, 3 more steps. The final trainable parameters,
optimizer state and contrastive banks are bit-identical, and so is the data order (content hash of every
step's batch). Checkpoints every step, asynchronous, keep 3: the restart resumes from the newest complete
one (step 2 or 3) and replays from there. GLUS-tiny, SAM2 64 px, the golden MeViS video, dropout on.

Slow (three child processes; they share a persistent compilation cache, so only the first compiles the
step): 1.5-3 minutes here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import train_world

pytestmark = pytest.mark.slow

OVERRIDES = ["--config.train.steps=6", "--config.train.ckpt_every=1", "--config.train.keep_checkpoints=3",
             "--config.train.log_every=1", "--config.train.warmup_steps=2", "--config.train.lr=1e-3"]


def _spec(tmp_path, name, model_dir, **extra):
    spec = {"mode": "train", "model_dir": str(model_dir), "workdir": str(tmp_path / f"work_{name}"),
            "log": str(tmp_path / f"{name}.jsonl"), "out": str(tmp_path / f"{name}.npz"),
            "overrides": OVERRIDES, **extra}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _start(spec_path, env):
    return subprocess.Popen([sys.executable, "-m", "tests.train_world", str(spec_path)], env=env,
                            cwd=train_world.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _log(path):
    return [json.loads(line) for line in open(path)]


def test_killed_run_resumes_on_the_same_trajectory(tmp_path):
    model_dir = train_world.model_dir(tmp_path)
    env = train_world.child_env(cache_dir=tmp_path / "jax_cache")

    straight = _start(_spec(tmp_path, "straight", model_dir), env)
    out, _ = straight.communicate(timeout=900)
    assert straight.returncode == 0, out[-4000:]

    marker = tmp_path / "paused"
    first = _start(_spec(tmp_path, "killed", model_dir, pause_after=3, marker=str(marker)), env)
    deadline = time.time() + 900
    while not marker.exists():
        assert first.poll() is None, first.stdout.read()[-4000:]
        assert time.time() < deadline, "the child never reached step 3"
        time.sleep(0.1)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    first.stdout.close()
    killed_log = _log(tmp_path / "killed.jsonl")
    assert [r["step"] for r in killed_log] == [1, 2, 3]

    second = _start(_spec(tmp_path, "killed", model_dir), env)  # same workdir: resumes
    out, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out[-4000:]
    assert "resumed from step" in out

    a, b = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "killed.npz")
    assert int(a["step"]) == int(b["step"]) == 6
    assert int(a["resumed_from"]) == -1 and int(b["resumed_from"]) in (2, 3)
    assert sorted(a.files) == sorted(b.files)
    assert any(k.startswith("banks/") for k in a.files) and any(k.startswith("opt/") for k in a.files)
    for k in a.files:
        if k != "resumed_from":
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)

    # Data order: the same batches at the same steps, before the kill and after the resume.
    ref = {r["step"]: r for r in _log(tmp_path / "straight.jsonl")}
    assert sorted(ref) == [1, 2, 3, 4, 5, 6]
    resumed = _log(tmp_path / "killed.jsonl")[3:]
    assert [r["step"] for r in resumed] == list(range(int(b["resumed_from"]) + 1, 7))
    for r in killed_log + resumed:
        want = ref[r["step"]]
        assert (r["samples"], r["content"]) == (want["samples"], want["content"]), r["step"]
        assert r["loss"] == ref[r["step"]]["loss"], r["step"]
    assert len({r["content"] for r in ref.values()}) == 6  # distinct batches: the order is meaningful
