"""TFDS builds of RefVOS datasets: built from generated MeViS / Ref-YouTube-VOS files, read back through
tfds.data_source, the videos equal the raw readers' and the pipeline gives identical batches."""

import json
import os
import pickle

import numpy as np
import pytest

from glus_jax.data import formats, image_ops, pipeline, rle, sampling, tfds_builder
from glus_jax.data.formats import DataFormatError
from glus_jax.data.pipeline import FileSource, PipelineConfig
from glus_jax.data.tfds_builder import TFDSSource
from glus_jax.data.tokenizer import GLUSTokenizer
from tests.conftest import GOLDEN
from tests.test_pipeline import CFG, RATES, assert_batches_equal, file_sources, take, write_datasets

NAMES = ("mevis", "refyoutube_vos")


@pytest.fixture(scope="module")
def tok():
    return GLUSTokenizer.from_dir(GOLDEN / "tok_glus_tiny")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = write_datasets(str(tmp_path_factory.mktemp("refvos")))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    for name in NAMES:
        path = tfds_builder.prepare(name, root, data_dir)
        assert any(f.startswith("glus_refvos-train.array_record") for f in os.listdir(path)), os.listdir(path)
    return root, data_dir


def tfds_sources(data_dir):
    return [TFDSSource(n, data_dir) for n in NAMES]


def test_records_equal_the_raw_videos(built):
    root, data_dir = built
    for name in NAMES:
        raw = formats.load_dataset(name, root)
        src = TFDSSource(name, data_dir)
        ds = src.dataset
        assert len(ds.videos) == len(raw.videos) and ds.name == name
        for v, r in zip(ds.videos, raw.videos):
            assert (v.name, v.frame_names, v.expressions) == (r.name, r.frame_names, r.expressions)
            assert v.object_set_ids == r.object_set_ids and v.str_id(0) == r.str_id(0)
            for f in range(r.length):
                assert v.frame_size(f) == r.frame_size(f)
                np.testing.assert_array_equal(src.read_frame(v, f), image_ops.decode_image(r.frame_paths[f]))
                for e in range(len(r.expressions)):
                    np.testing.assert_array_equal(v.expression_mask(e, f), r.expression_mask(e, f))
        # drawable videos from the build's metadata = the sampler's rule on the raw data
        for cfg in (CFG.sampling, sampling.SamplingConfig(query_frames=5)):
            np.testing.assert_array_equal(src.eligible(cfg), sampling.eligible_videos(raw, cfg))
    # the overlap of 'both boxes' (two objects) sums to 2 in the records too (quirk Q9)
    va = TFDSSource("mevis", data_dir).dataset.videos[0]
    assert va.name == "va" and va.expression_mask(1, 0).max() == 2


def test_pipeline_over_tfds_equals_files(built, tok):
    root, data_dir = built
    # files in this process vs records read by 2 worker processes (the sources pickle as their arguments)
    want = take(iter(pipeline.make_dataset(file_sources(root), RATES, tok, CFG)), 4)
    assert {int(d) for b in want for d in b["dataset_id"]} == {0, 1}
    it = iter(
        pipeline.make_dataset(
            tfds_sources(data_dir), RATES, tok, PipelineConfig(**{**CFG.__dict__, "num_workers": 2})
        )
    )
    try:
        got = take(it, 4)
    finally:
        it.close()
    assert_batches_equal(got, want)


def test_tfds_source_state_restore_and_config(built, tok):
    root, data_dir = built
    from configs.tiny import get_config

    c = get_config()
    c.data.source = "tfds"
    c.data.tfds_dir = data_dir
    c.data.datasets = NAMES
    c.data.sample_rates = RATES
    c.data.seed = CFG.seed
    c.data.image_size = CFG.image_size
    c.data.max_mask_size = CFG.max_mask_size
    it = pipeline.make_train_iterator(c, tok, process_index=1, process_count=2, batch_size=2)
    take(it, 2)
    state = it.get_state()
    after = take(it, 2)
    fresh = pipeline.make_train_iterator(c, tok, process_index=1, process_count=2, batch_size=2)
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 2), after)
    files = iter(pipeline.make_dataset(file_sources(root), RATES, tok, CFG, process_index=1, process_count=2))
    assert_batches_equal(take(files, 4)[2:], after)


def test_source_pickles_as_its_arguments(built):
    _, data_dir = built
    src = TFDSSource("mevis", data_dir)
    src.dataset.videos[0]  # opened and cached here
    data = pickle.dumps(src)
    assert len(data) < 500
    clone = pickle.loads(data)
    assert clone.dataset.videos[1].name == src.dataset.videos[1].name


def test_missing_build_and_split(tmp_path, built):
    with pytest.raises(DataFormatError, match="no TFDS build of mevis.*prepare-tfds"):
        _ = TFDSSource("mevis", str(tmp_path)).dataset
    with pytest.raises(DataFormatError, match="no split 'valid'"):
        _ = TFDSSource("mevis", built[1], "valid").dataset


def test_malformed_mask_fails_the_build_naming_the_file(tmp_path):
    root = write_datasets(str(tmp_path / "data"))
    path = os.path.join(root, "mevis", "train", "mask_dict.json")
    with open(path) as f:
        masks = json.load(f)
    first = next(iter(masks))
    masks[first][-1] = rle.encode(np.ones((3, 3), np.uint8))  # last frame: wrong size
    with open(path, "w") as f:
        json.dump(masks, f)
    with pytest.raises(DataFormatError, match=r"mask_dict\.json: anno_id .*differs from the frame size"):
        tfds_builder.prepare("mevis", root, str(tmp_path / "tfds"))


def test_cli_builds(tmp_path):
    from glus_jax import cli

    root = write_datasets(str(tmp_path / "data"))
    out = str(tmp_path / "tfds")
    assert (
        cli.main(["prepare-tfds", "--dataset", "refyoutube_vos", "--dataset-dir", root, "--data-dir", out])
        == 0
    )
    assert [v.name for v in TFDSSource("refyoutube_vos", out).dataset.videos] == ["ya"]
    assert FileSource("refyoutube_vos", root).dataset.videos[0].name == "ya"
