"""The experiment config declares every key the code reads, and each key can be overridden from the
`glus-jax train` command line (configs/base.py, glus_jax/config.py, glus_jax/train/cli.py).

A key read by the code but missing from configs/base.py can not be set with `--config.a.b=...` (the
override parser rejects unknown keys), so the scan below walks the source of glus_jax/ for every read
of the experiment config (`config.<section>.<key>`, `<alias>.<key>` after `alias = config.<section>`,
`_get(<alias>, "<key>", ...)`, `<alias>["<key>"]`, `<alias>.get("<key>")`) and checks it against
`base_config()`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from configs.base import base_config
from glus_jax import cli as glus_cli
from glus_jax.config import ConfigError, load_experiment_config
from glus_jax.data import pipeline
from glus_jax.models import glus as glus_lib
from glus_jax.train import loop

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.py"
SECTIONS = tuple(base_config().keys())


def _section(node: ast.AST) -> str | None:
    """'data' for the expression `config.data` (the experiment config is always named `config`)."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "config"
        and node.attr in SECTIONS
    ):
        return node.attr
    return None


def _aliases(fn: ast.AST) -> dict[str, str]:
    """{name: section} of `t = config.train` / `t, d = config.train, config.data` in a function."""
    out = {}
    for node in ast.walk(fn):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        if isinstance(target, ast.Name) and _section(value):
            out[target.id] = _section(value)
        elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            for t, v in zip(target.elts, value.elts):
                if isinstance(t, ast.Name) and _section(v):
                    out[t.id] = _section(v)
    return out


def config_reads(path: Path) -> set[tuple[str, str, int]]:
    """(section, key, line) of every experiment-config read in a source file."""
    tree = ast.parse(path.read_text(), str(path))
    reads = set()

    def group(node, aliases):
        if isinstance(node, ast.Name) and node.id in aliases:
            return aliases[node.id]
        return _section(node)

    def const(node):
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    scopes = [(tree, {})] + [
        (fn, _aliases(fn)) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    for scope, aliases in scopes:
        for node in ast.walk(scope):
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id == "_get" and len(node.args) >= 2:
                    sec, key = group(node.args[0], aliases), const(node.args[1])
                elif isinstance(f, ast.Attribute) and f.attr == "get" and node.args:
                    sec, key = group(f.value, aliases), const(node.args[0])
                else:
                    continue
            elif isinstance(node, ast.Subscript):
                sec, key = group(node.value, aliases), const(node.slice)
            elif isinstance(node, ast.Attribute) and node.attr not in ("get", "items", "keys", "values"):
                sec, key = group(node.value, aliases), node.attr
            else:
                continue
            if sec and key:
                reads.add((sec, key, node.lineno))
    return reads


def test_every_config_read_is_declared_in_base_config():
    base = base_config()
    reads = {}
    for path in sorted((ROOT / "glus_jax").rglob("*.py")):
        for sec, key, line in config_reads(path):
            reads.setdefault((sec, key), []).append(f"{path.relative_to(ROOT)}:{line}")
    # The scan sees the reads of the loop (attributes of aliases) and of the pipeline (`_get` with defaults).
    for expected in [("train", "lr"), ("data", "root"), ("data", "image_size"), ("data", "tfds_dir"),
                     ("data", "num_threads"), ("model", "init_from"), ("mesh", "rules"), ("mesh", "shape")]:
        assert expected in reads, expected
    missing = {k: v for k, v in reads.items() if k[1] not in base[k[0]]}
    assert not missing, f"read but not declared in configs/base.py: {missing}"


def _override_value(current):
    """(command-line text, parsed value) of a different value of `current`'s type."""
    if isinstance(current, bool):
        return str(not current).lower(), not current
    if isinstance(current, int):
        return str(current + 3), current + 3
    if isinstance(current, float):
        return repr(current / 2 + 0.25), current / 2 + 0.25
    if isinstance(current, str):
        return "override_text", "override_text"
    if isinstance(current, tuple):
        if not current:  # mesh.rules: pairs of (logical axis, mesh axes)
            return "[[batch, [data, fsdp]], [seq, null]]", (["batch", ["data", "fsdp"]], ["seq", None])
        if isinstance(current[0], str):
            return "aa,bb,cc", ("aa", "bb", "cc")
        if isinstance(current[0], int):
            return "[5, 7]", (5, 7)
    raise AssertionError(f"no override value for {current!r}")


def _leaves(cfg, prefix=""):
    for k, v in cfg.items():
        if hasattr(v, "items"):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def test_every_key_overrides_from_the_train_command_line(monkeypatch, tmp_path):
    """All declared keys at once through `glus-jax train` (argparse -> load_experiment_config)."""
    base = dict(_leaves(load_experiment_config(TINY)))
    args, expected = [], {}
    for key, current in base.items():
        text, value = _override_value(current)
        args.append(f"--config.{key}={text}")
        expected[key] = value
    seen = {}

    def fake_train(config, workdir, **kwargs):
        seen["config"], seen["workdir"] = config, workdir
        return loop.TrainResult(state=None, setup=None, history=[], resumed_from=None, export_dir=None)

    monkeypatch.setattr(loop, "train", fake_train)
    rc = glus_cli.main(["train", "--config", str(TINY), "--workdir", str(tmp_path), *args])
    assert rc == 0 and seen["workdir"] == str(tmp_path)
    got = dict(_leaves(seen["config"]))
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == value and type(got[key]) is type(base[key]), (key, got[key], value)


def test_data_overrides_reach_the_pipeline_and_the_model():
    cfg = load_experiment_config(
        TINY,
        ["--config.data.image_size=96", "--config.data.max_mask_size=40,56", "--config.data.num_threads=3",
         "--config.data.prefetch=5", "--config.data.clip_image_size=112", "--config.data.source=tfds",
         "--config.data.tfds_dir=/nowhere/tfds", "--config.mesh.rules=[[batch, [data, fsdp]], [seq, null]]"],
    )
    p = pipeline.pipeline_config(cfg, batch_size=2)
    assert (p.image_size, p.clip_image_size, p.max_mask_size, p.num_threads, p.prefetch) == (
        96, 112, (40, 56), 3, 5)
    sources = pipeline.make_sources(cfg)
    got = [(type(s).__name__, s.name, s.data_dir) for s in sources]
    assert got == [("TFDSSource", "mevis", "/nowhere/tfds")]
    assert loop.mesh_rules(cfg) == (("batch", ("data", "fsdp")), ("seq", None))
    # The model's CLIP is 224 px: a different data.clip_image_size is refused before any work.
    with pytest.raises(ConfigError, match="data.clip_image_size 112"):
        loop.training_model_config(glus_lib.tiny(), cfg)
    cfg.data.clip_image_size = 224
    model_cfg = loop.training_model_config(glus_lib.tiny(), cfg)
    assert model_cfg.sam2.image_size == 96 and model_cfg.llava.clip.image_size == 224
    assert loop.mesh_rules(load_experiment_config(TINY)) == loop.sharding_lib.DEFAULT_RULES
