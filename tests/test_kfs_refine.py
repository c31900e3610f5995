"""Key-frame self-refinement, the selector's training targets and `glus-jax select-key-frames` with the
score files it writes (plumbing on a tiny random GLUS: the masks themselves do not matter)."""

import json
from pathlib import Path

import numpy as np
import pytest

from glus_jax import cli
from glus_jax.data.formats import load_dataset
from glus_jax.data.synthetic import WorldConfig, generate
from glus_jax.eval.metrics import jaccard
from glus_jax.inference import protocol, runner, video_io
from glus_jax.inference.pipeline import GLUSPipeline, SegmentResult
from glus_jax.inference.video_io import read_frames
from glus_jax.kfs import targets as targets_lib
from glus_jax.kfs.self_refine import (
    SelfRefineConfig,
    SelfRefiningPipeline,
    frame_scores,
    mask_agreement,
    self_refine,
)
from glus_jax.models.io import load_model
from tests.glus_fixtures import random_glus_dir

T = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(
        height=40,
        width=56,
        min_frames=T,
        max_frames=T,
        min_objects=2,
        max_objects=3,
        min_expressions=2,
        max_expressions=2,
    )
    generate(root / "mevis", "valid_u", 1, seed=5, config=cfg)
    return root


def seg_always_glus_dir(root: Path) -> Path:
    """The tiny random GLUS, edited so that its LLM answers [SEG] at every step: every input embedding
    (text rows and projected image tokens) gets a large constant component on channel 0, which
    dominates the final-norm state, and lm_head's [SEG] column reads that channel. Inference then takes
    the ordinary path (no fallback recomputation), as a trained GLUS does, with few compiled shapes."""
    import jax.numpy as jnp

    from glus_jax.models.io import save_model

    model, tok, _ = load_model(random_glus_dir(root))
    llm, proj = model.llava.llm, model.llava.mm_projector.fc1
    seg = model.config.seg_token_id

    def edit(var, fn):
        var.set_value(fn(jnp.asarray(var[...])))

    edit(llm.model.embed_tokens, lambda x: x.at[:, 0].set(50.0))
    edit(proj.kernel, lambda x: x.at[:, 0].set(0.0))
    edit(proj.bias, lambda x: x.at[0].set(50.0))
    edit(llm.model.norm.scale, lambda x: x.at[0].set(1.0))
    edit(llm.lm_head.kernel, lambda x: x.at[:, seg].set(0.0).at[0, seg].set(10.0))
    return save_model(root / "seg_glus", model, tok, source={"test": "seg always"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return seg_always_glus_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    # Chunks of one frame: the plain run and every key-frame pass use the same compiled programs.
    model, tok, _ = load_model(model_dir)
    return GLUSPipeline(model, tok, frame_chunk=1, clip_batch=1, llm_batch=1)


@pytest.fixture(scope="module")
def video(world):
    v = load_dataset("mevis", str(world), "valid_u").videos[0]
    return v, read_frames(v.frame_paths, v.name, v.frame_names)


def _result(logits, iou, obj):
    logits = np.asarray(logits, np.float32)
    return SegmentResult(
        "x", logits > 0, logits, np.asarray(iou, np.float32), np.asarray(obj, np.float32), 0, []
    )


def test_frame_scores_by_hand():
    m = np.array([[[1, 0], [0, 0]], [[1, 1], [0, 0]], [[0, 0], [0, 0]]], bool)
    # IoU(m0, m1) = 1/2, IoU(m1, m2) = 0 -> agreement [1/2, (1/2 + 0) / 2, 0]
    np.testing.assert_allclose(mask_agreement(m), [0.5, 0.25, 0.0])
    r = _result(np.where(m, 3.0, -3.0), iou=[0.9, 0.5, 1.2], obj=[0.0, 0.0, 0.0])
    got = frame_scores(r, SelfRefineConfig(min_area=0.1))
    # sigmoid(0) = 0.5; frame 2 has no mask: score 0 whatever its predicted IoU (1.2, clipped to 1).
    np.testing.assert_allclose(got, [(0.9 + 0.5 + 0.5) / 3, (0.5 + 0.5 + 0.25) / 3, 0.0], rtol=1e-6)
    only_iou = frame_scores(r, SelfRefineConfig(w_object=0, w_agreement=0, min_area=0.0))
    np.testing.assert_allclose(only_iou, [0.9, 0.5, 0.0], rtol=1e-6)
    # both neighbours empty never counts as agreement; a lone frame agrees with itself
    np.testing.assert_allclose(mask_agreement(np.zeros((3, 2, 2), bool)), 0.0)
    np.testing.assert_allclose(mask_agreement(np.ones((1, 2, 2), bool)), 1.0)
    with pytest.raises(ValueError, match="weights"):
        SelfRefineConfig(w_iou=0, w_object=0, w_agreement=0)


class _Steered:
    """The real pipeline, with the plain run's own signals replaced so the best frame is known: full
    masks everywhere (agreement 1, present), object logit 0, the given predicted IoU per frame."""

    def __init__(self, pipe, ious):
        self.pipe, self.ious, self.calls = pipe, ious, []

    def segment(self, frames, expressions, key_frames=None):
        self.calls.append((list(expressions), None if key_frames is None else list(key_frames)))
        results = self.pipe.segment(frames, expressions, key_frames=key_frames)
        if key_frames is None:
            for r, iou in zip(results, self.ious):
                r.low_res_logits = np.ones_like(r.low_res_logits)
                r.iou = np.asarray(iou, np.float32)
                r.object_score = np.zeros_like(r.object_score)
        return results


def test_self_refine_propagates_from_the_best_frame_both_ways(pipe, video):
    v, vid = video
    exprs = [e.text for e in v.expressions]  # the same prompts in every test: few compiled LLM shapes
    # Both expressions best at frame 3 (one key-frame group: the plain run's compiled programs serve it).
    ious = [np.linspace(0.1, 0.4, T), np.linspace(0.5, 0.2, T)]
    ious[0][3] = ious[1][3] = 0.95
    steered = _Steered(pipe, ious)
    results, keys, scores = self_refine(steered, vid.frames, exprs)
    assert keys == [3, 3] and scores.shape == (2, T)
    assert keys == [int(np.argmax(s)) for s in scores]
    assert steered.calls == [(exprs, None), (exprs, [3, 3])]  # one plain run, one key-frame run
    direct = pipe.segment(vid.frames, exprs, key_frames=[3, 3])
    for r, d in zip(results, direct):
        assert r.key_frame == 3 and r.masks.shape == (T, *vid.frames.shape[1:3])
        # the passes GLUS really ran: from the key frame to the end, then back to the start
        assert (
            [[s.frame for s in p] for p in r.steps]
            == protocol.key_frame_passes(T, 3)
            == [[3, 4, 5, 6, 7], [3, 2, 1, 0]]
        )
        assert all(s.generated_token == pipe.config.seg_token_id for p in r.steps for s in p)
        np.testing.assert_array_equal(d.low_res_logits, r.low_res_logits)


def test_self_refine_keeps_the_plain_run_where_frame_0_is_best():
    class Fake:
        """Plain run: expression 0 found in frame 2 only, expression 1 nowhere (all scores 0 -> frame 0)."""

        def __init__(self):
            self.calls = []

        def segment(self, frames, expressions, key_frames=None):
            self.calls.append((list(expressions), None if key_frames is None else list(key_frames)))
            out = []
            for x in expressions:
                logits = np.full((len(frames), 4, 4), -1.0, np.float32)
                if x == "a":
                    logits[2] = 1.0
                out.append(_result(logits, np.full(len(frames), 0.5), np.zeros(len(frames))))
            return out

    fake = Fake()
    _, keys, scores = self_refine(fake, np.zeros((5, 8, 8, 3), np.uint8), ["a", "b"])
    assert keys == [2, 0] and not scores[1].any()
    assert fake.calls == [(["a", "b"], None), (["a"], [2])]


def test_self_refining_pipeline_wraps_segment(world, tmp_path):
    class Fake:
        """Its plain run finds the object in the last frame only; it records every call."""

        config = "cfg"

        def __init__(self):
            self.calls = []

        def segment(self, frames, expressions, key_frames=None):
            self.calls.append(None if key_frames is None else list(key_frames))
            n, h, w = frames.shape[:3]
            logits = np.full((n, 4, 4), -1.0, np.float32)
            logits[-1] = 1.0
            out = [_result(logits, np.full(n, 0.5), np.zeros(n)) for _ in expressions]
            for r in out:
                r.masks = np.zeros((n, h, w), bool)
            return out

    fake = Fake()
    wrapped = SelfRefiningPipeline(fake)
    assert wrapped.config == "cfg"
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    wrapped.segment(frames, ["a"], key_frames=[0])  # zeros = no explicit key frame (the runner's default)
    assert wrapped.last_key_frames == [3] and fake.calls == [None, [3]]
    with pytest.raises(ValueError, match="key frames"):
        wrapped.segment(frames, ["a"], key_frames=[2])
    # what `glus-jax segment --self-refine` would run: the dataset runner over the wrapper
    jobs = runner.dataset_jobs("mevis", world, "valid_u")
    fake.calls.clear()
    stats = runner.run_jobs(wrapped, jobs, tmp_path, progress=False)
    assert stats["expressions"] == len(jobs) and fake.calls == [None, [T - 1] * len(jobs)]
    assert all(video_io.is_done(tmp_path, j.video, j.exp_id) for j in jobs)


def test_targets_are_per_frame_jaccard_and_resume(pipe, world, video, tmp_path, monkeypatch):
    v, vid = video
    out = tmp_path / "targets.json"
    data = targets_lib.make_targets(pipe, "mevis", world, "valid_u", out=out, progress=False)
    loaded = targets_lib.load_targets(out)
    assert set(loaded["entries"]) == {f"{v.name}_{e.exp_id}" for e in v.expressions}
    results = pipe.segment(vid.frames, [e.text for e in v.expressions])
    for i, (e, r) in enumerate(zip(v.expressions, results)):
        entry = loaded["entries"][f"{v.name}_{e.exp_id}"]
        gt = np.stack([v.expression_mask(i, t) for t in range(T)]) > 0
        assert entry["frames"] == list(v.frame_names) and entry["expression"] == e.text
        np.testing.assert_allclose(entry["iou"], jaccard(gt, r.masks), atol=1e-6)
        assert entry["present"] == gt.reshape(T, -1).any(axis=1).tolist()
    assert loaded["entries"] == json.loads(json.dumps(data["entries"]))
    # a second run over a complete file recomputes nothing
    monkeypatch.setattr(pipe, "segment", lambda *a, **k: pytest.fail("resumed targets re-segmented"))
    again = targets_lib.make_targets(pipe, "mevis", world, "valid_u", out=out, progress=False)
    assert again["entries"] == loaded["entries"]
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {**loaded, "entries": {"v_0": {"frames": ["0"], "iou": [], "present": [True], "expression": "x"}}}
        )
    )
    with pytest.raises(targets_lib.TargetsError, match="v_0"):
        targets_lib.load_targets(bad)


def test_select_key_frames_cli_round_trip(model_dir, world, video, tmp_path, monkeypatch):
    """Both CLIs with GLUS replaced by a recorder whose plain run finds expression i only in frame 3 + i
    (the real propagation is checked above); the score file is the reference's and is read back."""
    v, _ = video
    seen = []

    def recording(self, frames, expressions, key_frames=None):
        seen.append(None if key_frames is None else list(key_frames))
        n, h, w = frames.shape[:3]
        out = []
        for i, x in enumerate(expressions):
            logits = np.full((n, 4, 4), -1.0, np.float32)
            logits[3 + i] = 1.0
            z = np.zeros(n, np.float32)
            out.append(SegmentResult(x, np.zeros((n, h, w), bool), logits, z + 0.5, z, 0, []))
        return out

    monkeypatch.setattr(GLUSPipeline, "segment", recording)
    scores_path, detail_path = tmp_path / "scores.json", tmp_path / "frames.json"
    common = ["--model", str(model_dir), "--dataset", str(world), "--split", "valid_u", "--no-progress"]
    rc = cli.main(
        ["select-key-frames", *common, "--out", str(scores_path), "--frame-scores", str(detail_path)]
    )
    assert rc == 0 and seen == [None]  # self-refine by default; only the plain run is needed for the choice
    raw = json.loads(scores_path.read_text())
    names = [f"{v.name}_{e.exp_id}" for e in v.expressions]
    assert raw == {n: str(protocol.frame_number(v.frame_names[3 + i])) for i, n in enumerate(names)}
    detail = json.loads(detail_path.read_text())
    assert detail["method"] == "self-refine"
    for i, (n, e) in enumerate(zip(names, v.expressions)):
        assert int(np.argmax(detail["expressions"][n]["scores"])) == 3 + i
        got = protocol.load_score_json(scores_path)
        assert protocol.key_frame_index(got, v.name, e.exp_id, v.frame_names) == 3 + i

    # `glus-jax segment --key-frames` reads our file and published ones (str or int frame numbers).
    published = tmp_path / "published.json"
    published.write_text(json.dumps({names[0]: "5", names[1]: 3}))
    for path, want in ((scores_path, [3, 4]), (published, [5, 3])):
        seen.clear()
        out = tmp_path / f"masks_{path.stem}"
        rc = cli.main(["segment", *common, "--out", str(out), "--key-frames", str(path)])
        assert rc == 0 and seen == [want]
        assert sorted(p.stem for p in (out / v.name / v.expressions[0].exp_id).glob("*.png")) == list(
            v.frame_names
        )


def test_select_key_frames_cli_errors(model_dir, world, tmp_path):
    argv = ["select-key-frames", "--model", str(model_dir), "--dataset", str(world), "--split", "valid_u",
            "--out", str(tmp_path / "s.json")]
    with pytest.raises(SystemExit, match="needs --selector"):
        cli.main([*argv, "--method", "selector"])
    with pytest.raises(Exception, match="absent"):
        cli.main([*argv, "--selector", str(tmp_path / "absent")])
    assert not Path(tmp_path / "s.json").exists()
