"""Smoke test of the inference benchmark (benchmarks/inference.py): the whole measurement, end to end, on
the `micro` config (GLUS-tiny's architecture with SAM2 at 256 px) and 4 frames, in quick mode (no memory
subprocesses, no GLUS-S split). It checks the JSON contract and that both sides produce the same masks from
the same weights, with every step emitting [SEG] (the calibrated lm_head row) on both sides.
"""

import json

from benchmarks import inference
from benchmarks.inference import CONTRACT_KEYS


def test_inference_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--config", "micro", "--frames", "4", "--quick", "--json", str(out), "--workdir", str(tmp_path / "work")]
    assert inference.main(argv) == 0
    r = json.loads(out.read_text())
    missing = [k for k in CONTRACT_KEYS if k not in r]
    assert not missing, missing
    assert r["frames"] == 4 and r["ours_fps"] > 0 and r["reference_fps"] > 0
    assert abs(r["speedup"] - r["ours_fps"] / r["reference_fps"]) < 1e-9 * r["speedup"]
    assert r["seg_emitted"] == {"ours": 4, "reference": 4, "steps": 4}
    assert r["masks_equal_fraction"] > 0.999
    # FLOPs: ours saves CLIP (once per frame) and the shared prefix; SAM2 work is the same.
    assert 0 < r["ours_flops_per_frame"] < r["reference_flops_per_frame"]
    assert r["ours_flops_by_stage"]["clip"] < r["reference_flops_by_stage"]["clip"] / 4
    assert set(r["ours_stage_seconds"]) >= {"clip", "llm", "sam2_trunk", "propagation", "total"}
    assert r["compile_seconds"] > 0
