"""The key-frame selector on a tiny random GLUS: candidate frames, prompts with [SCORE], static shapes,
what is trained, the L1 training loop, save/load, and `glus-jax select-key-frames --selector`."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from glus_jax import cli
from glus_jax.data.formats import load_dataset
from glus_jax.data.synthetic import WorldConfig, generate
from glus_jax.data.tokenizer import IMAGE_TOKEN_INDEX
from glus_jax.inference import protocol
from glus_jax.inference.video_io import read_frames
from glus_jax.kfs import selector as S
from glus_jax.kfs import targets as targets_lib
from glus_jax.kfs import train as train_lib
from glus_jax.models.io import load_model
from tests.glus_fixtures import random_glus_dir

K = 4
CFG = S.SelectorConfig(num_candidates=K, head_hidden=32)
TRAIN = train_lib.TrainConfig(steps=40, batch_size=2, lr=3e-3, warmup_steps=2, jitter=False, log_every=20)


def lively_glus_dir(root):
    """The tiny random GLUS with unit norm scales and 4x query/key kernels. The shared fixture draws
    every weight, norm scales included, from N(0, 0.05): its LLM attends almost uniformly, and its
    states at the K [SCORE] positions differ by < 0.01 %, which no few-step training can separate.
    With unit norms (the usual initialisation) and sharper attention they differ as in a real LLM."""
    from glus_jax.layers.norm import LayerNorm, RMSNorm
    from glus_jax.models.io import save_model

    model, tok, _ = load_model(random_glus_dir(root))
    for _, mod in nnx.iter_graph(model):
        if isinstance(mod, (RMSNorm, LayerNorm)):
            mod.scale.set_value(np.ones(mod.scale.shape, np.float32))
    attn = model.llava.llm.model.layers.self_attn
    for proj in (attn.q_proj, attn.k_proj):
        proj.kernel.set_value(np.asarray(proj.kernel[...]) * 4.0)
    return save_model(root / "lively_glus", model, tok, source={"test": "lively"})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return lively_glus_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def glus(model_dir):
    model, tok, _ = load_model(model_dir)
    return model, tok


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    cfg = WorldConfig(
        height=40,
        width=56,
        min_frames=8,
        max_frames=11,
        min_objects=2,
        max_objects=3,
        min_expressions=2,
        max_expressions=2,
    )
    generate(root / "mevis", "train", 2, seed=7, config=cfg)
    return root


def _fixed_targets(world) -> dict:
    """A targets file over the generated split with fixed per-frame IoUs (not GLUS's: a set the selector
    has to fit): rising over the video for one expression of each video, falling for the other."""
    entries = {}
    for v in load_dataset("mevis", str(world), "train").videos:
        for j, e in enumerate(v.expressions):
            ramp = np.linspace(0.1, 0.9, v.length)
            entries[f"{v.name}_{e.exp_id}"] = {
                "video": v.name,
                "exp_id": e.exp_id,
                "expression": e.text,
                "frames": list(v.frame_names),
                "iou": (ramp if j % 2 == 0 else ramp[::-1]).round(3).tolist(),
                "present": [True] * v.length,
            }
    return {
        "format": targets_lib.TARGETS_FORMAT,
        "version": 1,
        "model": "",
        "dataset": {"benchmark": "mevis", "root": str(world), "split": "train"},
        "entries": entries,
    }


@pytest.fixture(scope="module")
def trained(glus, world, tmp_path_factory):
    model, tok = glus
    out = tmp_path_factory.mktemp("sel") / "selector"
    sel, stok, report = train_lib.train_from_targets(
        model, tok, _fixed_targets(world), out, selector_config=CFG, train_config=TRAIN, log=None
    )
    return sel, stok, report, out


def test_candidate_frames_cover_the_video_uniformly():
    np.testing.assert_array_equal(S.candidate_frames(16, 8), [1, 3, 5, 7, 9, 11, 13, 15])
    np.testing.assert_array_equal(S.candidate_frames(5, 8), [0, 0, 1, 2, 2, 3, 4, 4])  # short: repeats
    np.testing.assert_array_equal(S.candidate_frames(1, 3), [0, 0, 0])
    rng = np.random.default_rng(0)
    for t in (5, 8, 13, 40):
        for _ in range(20):
            c = S.candidate_frames(t, 8, rng)
            seg = np.arange(8)
            assert len(c) == 8 and np.all(np.diff(c) >= 0)
            assert np.all(c >= np.floor(seg * t / 8)) and np.all(
                c <= np.maximum(np.ceil((seg + 1) * t / 8) - 1, 0)
            )


def test_prompt_has_one_score_token_per_frame(glus):
    _, tok = glus
    n_before = len(tok)
    stok = S.with_score_token(tok)
    assert len(tok) == n_before and tok.token_to_id(S.SCORE_TOKEN) is None  # the input is not changed
    score_id = stok.token_to_id(S.SCORE_TOKEN)
    assert score_id == n_before == 515  # after [SEG], <im_start>, <im_end>
    cfg = S.SelectorConfig(num_candidates=3, score_token_id=score_id, length_bucket=16)
    enc = S.encode_prompts(stok, ["The red ball.", "the two squares moving to the left"], cfg)
    ids, mask, index = enc["input_ids"], enc["attention_mask"], enc["score_index"]
    assert ids.shape[1] % 16 == 0 and index.shape == (2, 3)
    for row, m, idx in zip(ids, mask, index):
        assert (row == IMAGE_TOKEN_INDEX).sum() == 3 and np.all(row[idx] == score_id)
        assert np.all(row[~m] == stok.pad_id) and idx.max() < m.sum()
    text = stok.decode([int(i) for i in ids[0][mask[0]] if i >= 0])
    assert "the red ball in the Reference Video" in text and text.count(S.SCORE_TOKEN) == 3
    with pytest.raises(S.SelectorError, match="score_token_id"):
        S.encode_prompts(tok, ["x"], cfg)  # a tokenizer without [SCORE]


def test_selector_starts_from_glus_and_has_static_shapes(glus):
    model, tok = glus
    sel, stok = S.from_glus(model, tok, CFG)
    # trained: the LoRA adapters (q_proj, v_proj), the [SCORE] row and the head; nothing else
    trained = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(sel, S.trainable_filter()))}
    assert trained == {
        "llava/llm/model/layers/self_attn/q_proj/lora_a",
        "llava/llm/model/layers/self_attn/q_proj/lora_b",
        "llava/llm/model/layers/self_attn/v_proj/lora_a",
        "llava/llm/model/layers/self_attn/v_proj/lora_b",
        "score_embed",
        "score_head/fc1/kernel",
        "score_head/fc1/bias",
        "score_head/fc2/kernel",
        "score_head/fc2/bias",
    }
    assert sel.llava.llm.model.layers.self_attn.q_proj.lora_a.shape == (2, 64, 8)
    assert sel.llava.llm.model.layers.self_attn.q_proj.lora_scale == 2.0  # alpha 16 / r 8
    assert not np.any(np.asarray(sel.llava.llm.model.layers.self_attn.v_proj.lora_b[...]))  # B = 0
    # GLUS's weights are shared, not copied; the [SCORE] row starts as the [SEG] row
    assert sel.llava.llm.model.embed_tokens.get_value() is model.llava.llm.model.embed_tokens.get_value()
    np.testing.assert_array_equal(
        sel.score_embed[...], model.llava.llm.model.embed_tokens[...][tok.seg_token_id]
    )

    pred = S.SelectorPredictor(sel, stok, batch=2)
    frames = np.random.default_rng(1).integers(0, 255, (9, 30, 44, 3), np.uint8)
    cand, s = pred.scores(frames, ["the red ball", "a blue square", "the star"])  # 3 rows: 2 padded batches
    np.testing.assert_array_equal(cand, S.candidate_frames(9, K))
    assert s.shape == (3, K) and s.dtype == np.float32 and np.all(np.isfinite(s))
    compiled = S._score._cache_size()
    _, alone = pred.scores(frames, ["a blue square"])  # same length bucket: no new program
    assert S._score._cache_size() == compiled
    np.testing.assert_allclose(alone[0], s[1], rtol=1e-5, atol=1e-6)  # batching and padding change nothing
    keys, cand2, s2 = pred.select(frames, ["the red ball"])
    assert keys == [int(cand2[np.argmax(s2[0])])]


def test_training_reduces_l1_and_trains_only_the_adapters(glus, trained):
    model, _ = glus
    sel, _, report, _ = trained
    assert report["examples"] == 4
    assert report["l1_after"] < 0.3 * report["l1_before"], report
    assert np.isfinite([h["loss"] for h in report["history"]]).all()
    assert np.any(np.asarray(sel.llava.llm.model.layers.self_attn.q_proj.lora_b[...]))  # LoRA moved
    base = model.llava.llm.model.layers.self_attn.q_proj.kernel
    assert sel.llava.llm.model.layers.self_attn.q_proj.kernel.get_value() is base.get_value()  # frozen


def test_train_step_is_pure_and_compiled_once(glus, world, trained):
    model, tok = glus
    sel, stok = S.from_glus(model, tok, CFG)
    examples = train_lib.examples_from_targets(_fixed_targets(world))
    feats = train_lib.FeatureCache(sel)
    prompts = train_lib._prompt_rows(stok, sel, examples)
    max_len = S.spliced_length(prompts["input_ids"].shape[1], CFG, sel.llava.config.tokens_per_image)
    graphdef, params, frozen = nnx.split(sel, S.trainable_filter(), ...)
    tx = train_lib.make_optimizer(TRAIN)  # the fixture's config: the same optimizer object
    step = train_lib.make_train_step(graphdef, tx, max_len)
    batch = train_lib.make_batch(examples, [0, 3], prompts, feats, K, np.random.default_rng(0))
    assert batch["features"].shape == (2, K, 64, 64) and batch["target"].shape == (2, K)
    compiled = train_lib.train_step._cache_size()
    p0 = jax.tree.map(np.array, params)
    outs = []
    for _ in range(2):  # same inputs, same key -> same result; donated params are copies
        new, _, m = step(
            jax.tree.map(jax.numpy.array, params), frozen, tx.init(params), batch, jax.random.key(0)
        )
        outs.append((jax.tree.map(np.asarray, new), float(m["loss"])))
    assert train_lib.train_step._cache_size() == compiled  # static shapes: the fixture's program
    assert outs[0][1] == outs[1][1] and np.isfinite(outs[0][1])
    jax.tree.map(np.testing.assert_array_equal, outs[0][0], outs[1][0])
    jax.tree.map(np.testing.assert_array_equal, p0, jax.tree.map(np.asarray, params))  # inputs untouched


def test_absent_frames_get_the_absent_score(world):
    data = _fixed_targets(world)
    key = min(data["entries"])
    data["entries"][key]["present"][1] = False
    ex = {e.key: e for e in train_lib.examples_from_targets(data)}[key]
    assert ex.target[1] == 0.0 and ex.target[0] == np.float32(data["entries"][key]["iou"][0])
    kept = {e.key: e for e in train_lib.examples_from_targets(data, absent_score=None)}[key]
    assert kept.target[1] == np.float32(data["entries"][key]["iou"][1])


def test_save_load_round_trip_and_cli(glus, trained, world, model_dir, tmp_path):
    model, _ = glus
    sel, stok, _, out = trained
    sel2, tok2 = S.load_selector(out, model)
    assert tok2.token_to_id(S.SCORE_TOKEN) == stok.token_to_id(S.SCORE_TOKEN) and sel2.config == sel.config
    v = load_dataset("mevis", str(world), "train").videos[0]
    frames = read_frames(v.frame_paths, v.name, v.frame_names).frames
    exprs = [e.text for e in v.expressions]
    keys, _, s = S.SelectorPredictor(sel, stok).select(frames, exprs)
    keys2, _, s2 = S.SelectorPredictor(sel2, tok2).select(frames, exprs)
    np.testing.assert_allclose(s2, s, rtol=1e-5, atol=1e-6)
    assert keys2 == keys

    scores = tmp_path / "scores.json"
    rc = cli.main(
        [
            "select-key-frames",
            "--model",
            str(model_dir),
            "--dataset",
            str(world),
            "--split",
            "train",
            "--selector",
            str(out),
            "--out",
            str(scores),
            "--no-progress",
        ]
    )
    assert rc == 0
    raw = json.loads(scores.read_text())
    assert all(isinstance(x, str) for x in raw.values())
    got = protocol.load_score_json(scores)
    for e, k in zip(v.expressions, keys):
        assert got[f"{v.name}_{e.exp_id}"] == protocol.frame_number(v.frame_names[k])
        assert protocol.key_frame_index(got, v.name, e.exp_id, v.frame_names) == k

    # a selector trained on another architecture is refused
    other = model_dir.parent / "other"
    import shutil

    import yaml

    shutil.copytree(out, other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["llava"]["llama"]["hidden_size"] = 96
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(S.SelectorError, match="another LLaVA"):
        S.load_selector(other, model)
