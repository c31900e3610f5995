"""Config plumbing: strict dataclass round trip, experiment configs and command-line overrides."""

import dataclasses
from pathlib import Path

import pytest

from glus_jax.config import ConfigError, from_dict, load_experiment_config, load_yaml, save_yaml, to_dict

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Inner:
    dims: tuple[int, ...] = (1, 2)
    name: str = "a"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outer:
    depth: int = 2
    scale: float = 0.5
    flag: bool = False
    inner: Inner = Inner()
    window: tuple[int, int] | None = None


def test_dataclass_roundtrip_through_yaml(tmp_path):
    cfg = Outer(depth=3, scale=2.0, inner=Inner(dims=(4, 5, 6), name="b"), window=(7, 7))
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(Outer, tmp_path / "c.yaml") == cfg
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"depht": 3}, "unknown keys ['depht']"),
        ({"depth": "3"}, "Outer.depth: expected int"),
        ({"flag": 1}, "Outer.flag: expected bool"),
        ({"inner": {"dims": [1, "x"]}}, "Outer.inner.dims[1]: expected int"),
        ({"inner": {"nme": "x"}}, "Outer.inner: unknown keys ['nme']"),
        ({"window": [1, 2, 3]}, "Outer.window"),
    ],
)
def test_from_dict_rejects_bad_keys_and_types(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data)
    assert message in str(e.value)


def test_malformed_yaml_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("depth: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: malformed YAML"):
        load_yaml(Outer, p)


@pytest.mark.parametrize("name", ["glus_s", "glus_a", "tiny"])
def test_experiment_configs_load(name):
    cfg = load_experiment_config(ROOT / "configs" / f"{name}.py")
    assert cfg.train.lr == 3e-4 and cfg.data.context_frames == 4 and cfg.data.question_frames == 4


def test_overrides_apply_with_declared_types():
    cfg = load_experiment_config(
        ROOT / "configs" / "tiny.py",
        ["--config.train.lr=1e-4", "--config.data.datasets=mevis,revos", "--config.mesh.shape=[2,-1,1]",
         "--config.train.contrastive=false", "--config.train.steps=7"],
    )
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.data.datasets == ("mevis", "revos")
    assert cfg.mesh.shape == (2, -1, 1)
    assert cfg.train.contrastive is False and cfg.train.steps == 7


@pytest.mark.parametrize("text", ["('visual_model',)", "['visual_model']", "visual_model", "(visual_model)"])
def test_tuple_overrides_accept_python_and_yaml_literals(text):
    """A Python tuple literal, as configs/*.py write them, must not be split on its comma into
    "('visual_model'" and ")" (which named no parameter and silently trained nothing)."""
    cfg = load_experiment_config(ROOT / "configs" / "tiny.py", [f"--config.train.trainable={text}"])
    assert cfg.train.trainable == ("visual_model",)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.lrr=1", "unknown key 'train.lrr'"),
        ("--config.nope.x=1", "unknown key 'nope'"),
        ("--config.train.steps=abc", "--config.train.steps: expected int"),
        ("--config.train.contrastive=maybe", "expected a bool"),
        ("--config.train.steps", "expected --config.key=value"),
    ],
)
def test_override_errors_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_experiment_config(ROOT / "configs" / "tiny.py", [override])
    assert message in str(e.value)
