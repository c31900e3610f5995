"""Two JAX processes on localhost (`jax.distributed` over gloo, one CPU device each) train GLUS-tiny
together with `train.loop.train`: mesh fsdp = 2, one sample per process and micro-batch (global batch 2).
Each process reads its own data shard (process p gets global samples 2k + p), the two shards together are
exactly the batches a single process with 2 devices reads, both processes end with the same parameters,
and those equal the single-process run's (same criterion as test_train_sharded: entries within 1e-5 except
<= 0.01% float-noise entries within 2 lr). The run checkpoints (orbax, per-process grain state) and at
the end exports the LoRA-merged model directory: gathered to process 0, written by it alone (one directory,
nothing temporary left), loadable, LoRA merged from the final adapters. A single process then exports it
again from the 2-process checkpoint (`--export-only`): the same parameters.

Slow (three child processes, two compiling in parallel): 2-4 minutes here.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import train_world

pytestmark = pytest.mark.slow

OVERRIDES = ["--config.train.steps=3", "--config.train.batch_size=1", "--config.train.ckpt_every=2",
             "--config.train.log_every=1", "--config.train.warmup_steps=0", "--config.train.lr=1e-3",
             "--config.mesh.shape=[1,-1,1]"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(specs, envs, cwd):
    procs = []
    for path, env in zip(specs, envs):
        cmd = [sys.executable, "-m", "tests.train_world", str(path)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


def _log(path):
    return [json.loads(line) for line in open(path)]


def test_two_processes_train_together_on_disjoint_shards(tmp_path):
    model_dir = str(train_world.model_dir(tmp_path))
    port = _free_port()
    specs = []
    for pid in range(2):
        spec = {"mode": "train", "model_dir": model_dir, "workdir": str(tmp_path / "work_multi"),
                "log": str(tmp_path / f"multi{pid}.jsonl"), "out": str(tmp_path / "multi.npz"),
                "overrides": OVERRIDES, "export": True, "coordinator": f"127.0.0.1:{port}",
                "num_processes": 2, "process_id": pid}
        specs.append(tmp_path / f"multi{pid}.json")
        specs[-1].write_text(json.dumps(spec))
    _run(specs, [train_world.child_env(devices=1)] * 2, train_world.ROOT)

    single = {"mode": "train", "model_dir": model_dir, "workdir": str(tmp_path / "work_single"),
              "log": str(tmp_path / "single.jsonl"), "out": str(tmp_path / "single.npz"),
              "overrides": OVERRIDES}
    (tmp_path / "single.json").write_text(json.dumps(single))
    _run([tmp_path / "single.json"], [train_world.child_env(devices=2)], train_world.ROOT)

    logs = [_log(tmp_path / f"multi{p}.jsonl") for p in range(2)]
    ref = _log(tmp_path / "single.jsonl")
    assert [r["step"] for r in ref] == [1, 2, 3]
    for step in range(3):
        (s0,), (s1,) = logs[0][step]["samples"], logs[1][step]["samples"]  # one micro-batch per step
        assert s0 == [2 * step] and s1 == [2 * step + 1]  # process p reads global samples 2k + p
        assert [sorted(s0 + s1)] == ref[step]["samples"]
        assert logs[0][step]["loss"] == logs[1][step]["loss"]  # one global loss
        np.testing.assert_allclose(logs[0][step]["loss"], ref[step]["loss"], rtol=1e-5)

    p0, p1 = np.load(tmp_path / "multi.p0.npz"), np.load(tmp_path / "multi.p1.npz")
    want = np.load(tmp_path / "single.npz")
    assert int(p0["step"]) == int(want["step"]) == 3
    lr, total, loose = 1e-3, 0, 0
    for k in want.files:
        if k in ("step", "resumed_from", "export_dir"):
            continue
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
        diff = np.abs(p0[k].astype(np.float64) - want[k])
        if k.startswith("params/"):
            total += diff.size
            loose += int((diff > 1e-5).sum())
            assert diff.max() <= 2 * lr, (k, diff.max())
        elif k.startswith("banks/"):
            assert diff.max() <= 1e-5, k
    assert loose <= 1e-4 * total, (loose, total)

    ckpt = tmp_path / "work_multi" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["2", "3"]
    assert sorted(p.name for p in (ckpt / "3" / "data").glob("process_*.json")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    from glus_jax.models.io import load_model

    # Exported at the end of the run by process 0 alone, the other waiting: one model directory and no
    # temporary or replaced one beside it; both processes return its path.
    work = tmp_path / "work_multi"
    assert sorted(p.name for p in work.iterdir() if "model" in p.name) == ["model"]
    assert str(p0["export_dir"]) == str(p1["export_dir"]) == str((work / "model").absolute())
    model, _, stored = load_model(work / "model")
    assert stored["source"]["trained_steps"] == 3 and model.config.llava.llama.lora_rank == 0
    # Merged LoRA: W + A B * alpha / r of the trained adapters (the final state, gathered).
    pre = "params/llava/llm/model/layers/self_attn/q_proj"
    base = np.asarray(train_world.load_base_kernel(model_dir, "q_proj"))
    delta = p0[f"{pre}/lora_a/value"] @ p0[f"{pre}/lora_b/value"] * 2.0
    merged = np.asarray(model.llava.llm.model.layers.self_attn.q_proj.kernel[...])
    np.testing.assert_allclose(merged, base + delta, atol=1e-6, rtol=0)
    lm_head = np.asarray(model.llava.llm.lm_head.kernel[...])
    np.testing.assert_array_equal(lm_head, p0["params/llava/llm/lm_head/kernel/value"])

    # --export-only from the 2-process checkpoint in one process rewrites it with the same parameters.
    export = {"mode": "export", "model_dir": model_dir, "workdir": str(work), "overrides": OVERRIDES}
    (tmp_path / "export.json").write_text(json.dumps(export))
    _run([tmp_path / "export.json"], [train_world.child_env(devices=1)], train_world.ROOT)
    again, _, stored = load_model(work / "model")
    assert stored["source"]["checkpoint_step"] == 3
    assert sorted(p.name for p in work.iterdir() if "model" in p.name) == ["model"]
    again_q = np.asarray(again.llava.llm.model.layers.self_attn.q_proj.kernel[...])
    np.testing.assert_array_equal(again_q, merged)
    np.testing.assert_array_equal(np.asarray(again.llava.llm.lm_head.kernel[...]), lm_head)
