"""Kernel microbenchmarks: the operations that decide GLUS's speed, XLA (ours) against PyTorch on the
same device, float32, same shapes as the `small` and `tiny` benchmark configs.

  .venv/bin/python -m benchmarks.kernels [--json FILE] [--repeats 5]

Each kernel is timed as the best of `--repeats` runs after a warm-up (JAX: jitted, until ready). The
shapes (docs/PERFORMANCE.md, "What limits speed now"):
- `matmul_llm`: [3136, 1024] x [1024, 2752], the `small` LLM's MLP projection over one batch of 8
  question windows; `matmul_2048`: the square matmul the FLOP-bound rate is measured with.
- `patch_embed_448` / `patch_embed_1024`: hiera's 7x7 stride-4 convolution from RGB (3 -> 64 channels
  at 448 px for `small`, 3 -> 16 at 1024 px for `tiny`), `lax.conv_general_dilated` as the model runs it.
- `depthwise_7x7`: the memory encoder fuser's CXBlock depthwise convolution (28 x 28 x 128, `small`):
  the model's shifted-sum `depthwise_conv2d`, with XLA's grouped convolution beside it.
- `memory_attention_small` / `memory_attention_tiny`: one memory-attention cross-attention, one 64-wide
  head: 784 queries over 7 x 784 memory tokens (`small`), 4096 over 7 x 4096 (`tiny`);
  `hiera_global_small` / `hiera_global_tiny`: a global hiera block's self-attention (784 tokens x 4
  heads of 64, 4096 tokens x 4 heads of 16). Ours is `glus_jax.layers.dot_product_attention` tiled as
  the model calls it (`block=tile_for(...)`), beside the unfused path and `jax.nn.dot_product_attention`,
  against PyTorch's `scaled_dot_product_attention`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common


def _cases(rng):
    f32 = np.float32

    def randn(*s):
        return rng.standard_normal(s).astype(f32)

    def conv_case(size, cin, cout, k, stride, groups=1):
        x = randn(1, size, size, cin)
        w = randn(k, k, cin // groups, cout)
        flops = 2 * (size // stride) ** 2 * cout * k * k * (cin // groups)
        return {"x": x, "w": w, "stride": stride, "pad": k // 2, "groups": groups, "flops": flops}

    def attn_case(tq, tk, d=64, heads=1):
        q, k, v = randn(1, tq, heads, d), randn(1, tk, heads, d), randn(1, tk, heads, d)
        return {"q": q, "k": k, "v": v, "flops": 4 * tq * tk * d * heads}

    return {
        "matmul_llm": {"a": randn(3136, 1024), "b": randn(1024, 2752), "flops": 2 * 3136 * 1024 * 2752},
        "matmul_2048": {"a": randn(2048, 2048), "b": randn(2048, 2048), "flops": 2 * 2048**3},
        "patch_embed_448": conv_case(448, 3, 64, 7, 4),
        "patch_embed_1024": conv_case(1024, 3, 16, 7, 4),
        "depthwise_7x7": conv_case(28, 128, 128, 7, 1, groups=128),
        "memory_attention_small": attn_case(784, 7 * 784),
        "memory_attention_tiny": attn_case(4096, 7 * 4096),
        "hiera_global_small": attn_case(784, 784, 64, heads=4),
        "hiera_global_tiny": attn_case(4096, 4096, 16, heads=4),
    }


def run(repeats: int, torch_threads: int | None) -> dict:
    import torch

    from glus_jax.layers import dot_product_attention
    from glus_jax.layers.attention import tile_for
    from glus_jax.models.sam2.sam2_utils import depthwise_conv2d

    torch.set_num_threads(torch_threads or os.cpu_count())
    cases = _cases(np.random.default_rng(0))
    out: dict = {}
    for name, c in cases.items():
        row: dict = {"flops": c["flops"]}
        if name.startswith("matmul"):
            a, b = jnp.asarray(c["a"]), jnp.asarray(c["b"])
            f = jax.jit(jnp.matmul)
            row["xla_s"] = common.best_seconds(lambda: f(a, b).block_until_ready(), repeats)
            ta, tb = torch.from_numpy(c["a"]), torch.from_numpy(c["b"])
            row["torch_s"] = common.best_seconds(lambda: ta @ tb, repeats)
        elif "x" in c:
            x, w, s, p, g = jnp.asarray(c["x"]), jnp.asarray(c["w"]), c["stride"], c["pad"], c["groups"]
            f = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
                x, w, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=g))
            conv_s = common.best_seconds(lambda: f(x, w).block_until_ready(), repeats)
            if g > 1:  # the model's depthwise path; XLA's grouped convolution kept for comparison
                d = jax.jit(lambda x, w: depthwise_conv2d(x, w, None, p))
                row["xla_s"] = common.best_seconds(lambda: d(x, w).block_until_ready(), repeats)
                row["xla_lax_conv_s"] = conv_s
            else:
                row["xla_s"] = conv_s
            tx = torch.from_numpy(c["x"]).permute(0, 3, 1, 2).contiguous()
            tw = torch.from_numpy(c["w"]).permute(3, 2, 0, 1).contiguous()
            with torch.inference_mode():
                conv = torch.nn.functional.conv2d
                row["torch_s"] = common.best_seconds(lambda: conv(tx, tw, stride=s, padding=p, groups=g), repeats)
        else:
            q, k, v = (jnp.asarray(c[n]) for n in "qkv")
            block = tile_for(q.shape[0], q.shape[2])
            f = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, block=block))
            row["xla_s"] = common.best_seconds(lambda: f(q, k, v).block_until_ready(), repeats)
            u = jax.jit(lambda q, k, v: dot_product_attention(q, k, v))
            row["xla_unfused_s"] = common.best_seconds(lambda: u(q, k, v).block_until_ready(), repeats)
            g = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v))
            row["xla_jax_nn_s"] = common.best_seconds(lambda: g(q, k, v).block_until_ready(), repeats)
            tq, tk, tv = (torch.from_numpy(c[n]).permute(0, 2, 1, 3).contiguous() for n in "qkv")
            with torch.inference_mode():
                sdpa = torch.nn.functional.scaled_dot_product_attention
                row["torch_s"] = common.best_seconds(lambda: sdpa(tq, tk, tv), repeats)
        row["xla_over_torch"] = row["xla_s"] / row["torch_s"]
        out[name] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=None)
    args = p.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")  # as benchmarks/inference.py runs the model
    kernels = run(args.repeats, args.torch_threads)
    result = {"device": common.device_name(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "load_average_1_5_15min": list(os.getloadavg()), "kernels": kernels}
    print(f"device {result['device']}  XLA_FLAGS={result['xla_flags']!r}")
    print(f"{'kernel':<24}{'XLA ms':>10}{'torch ms':>10}{'XLA/torch':>11}"
          f"{'XLA GFLOP/s':>13}{'torch GFLOP/s':>15}")
    for name, r in kernels.items():
        print(f"{name:<24}{1e3 * r['xla_s']:>10.2f}{1e3 * r['torch_s']:>10.2f}{r['xla_over_torch']:>11.2f}"
              f"{r['flops'] / r['xla_s'] / 1e9:>13.1f}{r['flops'] / r['torch_s'] / 1e9:>15.1f}")
        for key, label in (("xla_unfused_s", "unfused"), ("xla_jax_nn_s", "jax.nn.dot_product_attention"),
                           ("xla_lax_conv_s", "lax grouped convolution")):
            if key in r:
                print(f"{'  ' + label:<24}{1e3 * r[key]:>10.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
