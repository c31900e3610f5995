"""Shared pieces of the training tests: the GLUS-tiny model directory, small configs, and a child-process
entry point (`python -m tests.train_world SPEC.json`) for the tests that need fresh processes (fake device
counts, SIGKILL, jax.distributed).

The training tests run GLUS-tiny (the oracle's weights) with SAM2 at 64 px instead of 1024 (the SAM2
parameters do not depend on the input size) on the MeViS-layout golden video (one 10-frame 96x128 video,
3 expressions) or a generated synthetic dataset, so that a step takes about half a second on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.golden_model import GOLDEN, convert_glus_tiny  # noqa: E402

# MeViS layout: mevis/train/{JPEGImages, meta_expressions.json, mask_dict.json}
GOLDEN_DATA = GOLDEN / "data_video"
IMAGE_SIZE = 64


def model_dir(root: str | Path) -> Path:
    """GLUS-tiny converted from the golden pieces and saved as a model directory under `root` (once)."""
    from glus_jax.models.io import save_model

    path = Path(root) / "glus_tiny_model"
    if not (path / "COMPLETE").exists():
        model, tok, source = convert_glus_tiny(Path(root) / "src")
        save_model(path, model, tok, source=source)
    return path


def load_base_kernel(model_dir: str | Path, proj: str) -> np.ndarray:
    """The stored (pre-training) kernel [L, in, out] of a LLaMA attention projection of a model directory."""
    from glus_jax.models.io import load_model

    model, _, _ = load_model(model_dir)
    return np.asarray(getattr(model.llava.llm.model.layers.self_attn, proj).kernel[...])


def tiny_config(init_from: str | Path, data_root: str | Path = GOLDEN_DATA, overrides=(), **data):
    """configs/tiny.py for the tests: the model directory, the data root, SAM2 at 64 px, masks up to the
    frame size of the data (`data` fields override, e.g. max_mask_size=(40, 56))."""
    from glus_jax.config import load_experiment_config

    cfg = load_experiment_config(
        ROOT / "configs" / "tiny.py",
        [f"--config.model.init_from={init_from}", f"--config.data.root={data_root}", *overrides],
    )
    # The tests' sizes: SAM2 at 64 px, the GT canvas of the golden video's 96 x 128 frames.
    cfg.data.image_size = data.pop("image_size", IMAGE_SIZE)
    cfg.data.max_mask_size = tuple(data.pop("max_mask_size", (96, 128)))
    for k, v in data.items():
        cfg.data[k] = v
    return cfg


def child_env(cache_dir: str | Path | None = None, devices: int | None = None) -> dict:
    """Environment of a child process: repo on the path, optional fake CPU devices, a shared persistent
    compilation cache (children running the same program compile it once)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_PLATFORMS"] = "cpu"
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if cache_dir is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


def flat_arrays(tree, prefix: str) -> dict[str, np.ndarray]:
    """{prefix/path: host array} of a pytree (gathered across processes when needed)."""
    import jax
    from jax.experimental import multihost_utils

    from glus_jax.train.state import to_nested

    if jax.process_count() > 1:
        tree = multihost_utils.process_allgather(tree, tiled=True)
    out = {}

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        else:
            out[path] = np.asarray(node)

    walk(to_nested(tree), prefix)
    return out


def run_child(spec: dict) -> None:
    """Train per `spec` (see the tests): writes one json line per step to spec["log"] and the final
    trainable params, banks and step to spec["out"] (npz). spec["pause_after"]: after that step, write
    spec["marker"] and wait to be killed."""
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    if spec.get("coordinator"):
        from glus_jax.train.cli import initialize_distributed

        initialize_distributed(spec["coordinator"], spec["num_processes"], spec["process_id"])
    from glus_jax.train import loop

    cfg = tiny_config(spec["model_dir"], spec.get("data_root", GOLDEN_DATA), spec.get("overrides", ()),
                      **spec.get("data", {}))
    log_path = Path(spec["log"])
    pause_after = spec.get("pause_after")

    def on_step(step, state, batch, metrics):
        digest = hashlib.sha1()
        for k in ("input_ids", "gt_masks", "sam_pixels", "clip_pixels"):
            digest.update(np.ascontiguousarray(batch[k]).tobytes())
        with open(log_path, "a") as f:
            f.write(json.dumps({"step": step, "process": jax.process_index(),
                                "samples": np.asarray(batch["sample_index"]).tolist(),
                                "content": digest.hexdigest(), "loss": metrics["loss"]}) + "\n")
        if pause_after is not None and step == pause_after:
            Path(spec["marker"]).write_text(str(os.getpid()))
            while True:  # the parent SIGKILLs us here (a checkpoint write may still be in flight)
                time.sleep(1)

    result = loop.train(cfg, spec["workdir"], on_step=on_step, export=spec.get("export", False))
    state = result.state
    arrays = {**flat_arrays(state.params, "params"), **flat_arrays(state.banks, "banks"),
              **flat_arrays(state.opt_state, "opt")}
    arrays["step"] = np.asarray(int(state.step))
    arrays["resumed_from"] = np.asarray(-1 if result.resumed_from is None else result.resumed_from)
    arrays["export_dir"] = np.asarray(str(result.export_dir or ""))
    out = Path(spec["out"])
    if jax.process_count() > 1:
        out = out.with_name(f"{out.stem}.p{jax.process_index()}{out.suffix}")
    np.savez(out, **arrays)


def sharded_child(spec: dict) -> None:
    """The same train steps on one device and on a (data, fsdp, tensor) mesh of all devices: per-step
    metrics, final trainable params and banks of both to spec["out"] (npz, keys prefixed single/ and
    sharded/), plus the partition specs of a few parameters."""
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    from glus_jax import sharding as sharding_lib
    from glus_jax.data import pipeline
    from glus_jax.train import loop, optimizer as opt_lib, state as state_lib, step as step_lib

    cfg = tiny_config(spec["model_dir"], overrides=spec.get("overrides", ()))
    num_groups, steps = spec["num_groups"], spec["steps"]
    model, tok, _ = loop.build_model(cfg)
    it = pipeline.make_train_iterator(cfg, tok, 0, 1, batch_size=num_groups * int(cfg.train.batch_size))
    batches = [loop.stack_micro_batches([next(it)]) for _ in range(steps)]
    arrays = {}
    for name, shape, devices in [("single", (1, 1, 1), jax.devices()[:1]),
                                 ("sharded", tuple(spec["mesh"]), jax.devices())]:
        mesh = sharding_lib.make_mesh(shape, devices)
        model, _, _ = loop.build_model(cfg)
        sharding_lib.shard_model(model, mesh)
        opt_cfg = loop.optimizer_config(cfg)
        tx, schedule = opt_lib.make_optimizer(opt_cfg), opt_lib.lr_schedule(opt_cfg)
        graphdef, state, sh = state_lib.create_train_state(
            model, tx, num_groups=num_groups, bank_size=int(cfg.train.bank_size), seed=0, mesh=mesh)
        step = step_lib.make_train_step(
            graphdef, tx, schedule, loop.step_config(cfg), mesh=mesh, state_shardings=sh
        )
        for i, b in enumerate(batches):
            gb = loop.global_batch(b, mesh, sharding_lib.DEFAULT_RULES)
            state, metrics = step(state, gb)
            for k, v in jax.device_get(metrics).items():
                arrays[f"{name}/metrics/{i}/{k}"] = np.asarray(v)
        arrays.update(flat_arrays(state.params, f"{name}/params"))
        arrays.update(flat_arrays(state.banks, f"{name}/banks"))
        if name == "sharded":
            layer = state.params["llava"]["llm"]["model"]["layers"]["self_attn"]
            specs = {
                "q_lora_b": layer["q_proj"]["lora_b"].get_value().sharding.spec,
                "lm_head": state.params["llava"]["llm"]["lm_head"]["kernel"].get_value().sharding.spec,
                "embed": state.params["llava"]["llm"]["model"]["embed_tokens"].get_value().sharding.spec,
                "q_kernel": state.frozen["llava"]["llm"]["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
                .get_value().sharding.spec,
                "bank": state.banks.embeds.sharding.spec,
                "batch": gb["sam_pixels"].sharding.spec,
            }
            arrays["specs"] = np.asarray(json.dumps({k: str(v) for k, v in specs.items()}))
    np.savez(spec["out"], **arrays)


def export_child(spec: dict) -> None:
    """`loop.export_from_checkpoint` of spec["workdir"] in this single process (after a multi-process run)."""
    from glus_jax.train import loop

    cfg = tiny_config(spec["model_dir"], spec.get("data_root", GOLDEN_DATA), spec.get("overrides", ()),
                      **spec.get("data", {}))
    print(f"exported {loop.export_from_checkpoint(cfg, spec['workdir'])}", flush=True)


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    {"train": run_child, "sharded": sharded_child, "export": export_child}[spec.get("mode", "train")](spec)
    sys.stdout.flush()
    os._exit(0)  # skip the slow interpreter teardown of JAX / grain threads
