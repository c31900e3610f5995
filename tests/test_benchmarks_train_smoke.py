"""Smoke test of the training benchmark (benchmarks/train.py) in shape-check mode: the tiny config's train
step (SAM2 at 64 px) on a generated dataset is lowered with every scan unrolled and its FLOPs counted;
nothing executes (an executed step needs a ~50 s compilation, too slow for the suite)."""

import json

from benchmarks import train


def test_train_benchmark_counts_the_step(tmp_path):
    out = tmp_path / "train.json"
    argv = ["--config", "tiny", "--shape-check", "--image-size", "64", "--videos", "2",
            "--json", str(out), "--workdir", str(tmp_path / "work")]
    assert train.main(argv) == 0
    r = json.loads(out.read_text())
    assert r["mode"].startswith("shape check") and r["step_seconds"] is None
    assert r["samples_per_step"] == 2 and r["sam2_image_size"] == 64 and not r["remat"]
    assert 0 < r["expressions_per_step"] <= 6
    assert 0 < r["llm_tokens_per_step"] <= r["llm_positions_per_step"]
    # Without remat the executed and the model FLOPs are the same count.
    assert r["model_flops_per_step"] == r["flops_per_step"]
    # Lower bound: the LLaMA blocks' matmuls (2 layers, width 64, MLP 128) forward and backward through
    # the activations (2 x 2 flops per weight per position) over every processed position.
    block_weights = 2 * (4 * 64 * 64 + 3 * 64 * 128)
    assert r["flops_per_step"] > 4 * block_weights * r["llm_positions_per_step"]
    assert r["flop_bound_step_seconds"] == r["flops_per_step"] / r["device_matmul_flops_per_s"]
