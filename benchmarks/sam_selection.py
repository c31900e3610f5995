"""Does the world model's SAM2, trained from scratch, learn to *select* the object a prompt points at?

  .venv/bin/python -m benchmarks.sam_selection [--steps 600] [--batch 8] [--lr 1e-3] [--torch]
                                               [--prompt point|appearance] [--prompt-scale 1.0]
                                               [--bce-weight 2.0] [--dice-weight 0.5]
                                               [--image-features hiera|oracle] [--oracle-shape-scale 1.0]
                                               [--out runs/sam_selection]

A diagnostic for issue #8, at ~1 min per 400 steps instead of a 20-minute world-model run. It trains the
SAM2 of the `synthetic_world` preset (image encoder, prompt encoder, mask decoder; empty memory, as on a
clip's first frame) alone on SAM2's own task: frames of generated training videos, one positive point
drawn uniformly inside one object's visible mask, that mask as the target, GLUS's mask losses (BCE and
dice, weights as given). Every `--log-every` steps it prints, over the masks of those steps (mask =
logits > 0):

- `iou`: against the prompted object (what selection needs);
- `iou_all`: against the union of every object in the frame. Near 1 with `iou` near the `all_objects`
  reference: the decoder segments objects but ignores the prompt.

and beside them two references on the same prompts: `all_objects` (the IoU of the union of all objects
with the prompted one: a perfect segmenter that ignores the prompt) and `disk` (the best disk of a fixed
radius around the point: a decoder that uses the point but not the image).

`--torch` trains the PyTorch `sam2` package's SAM2 of the same sizes (its own random init, the same
optimizer, schedule and losses) on the very same pixels and points, and prints its figures beside ours: if
both stall the same way, the cause is SAM2's design at this size, not the port.

`--prompt appearance` replaces the point by what a perfect LLM could say about the target: a learned
colour vector plus a learned shape vector (init N(0, prompt_scale^2) at the decoder's width), given to the
decoder as GLUS gives its [SEG] prompt. Its reference is `lookalikes`: the IoU of the union of every
object of the target's colour and shape, the best a selection by appearance can do.

Each logged row (and, in full, the end of the run) also says where the predicted pixels of those
steps fall (mean share per non-empty mask): the target, its lookalikes, objects of the target's colour
but another shape, of its shape but another colour, other objects, background. With `--prompt
appearance` the two middle shares say whether the decoder selects by colour, by shape, or by both.

`--image-features oracle` replaces the image encoder by perfect features: at every level SAM2's decoder
reads (the stride-16 embedding and the two high-resolution maps) a learned vector for each pixel's colour
plus `--oracle-shape-scale` times a learned vector for its shape (background: a vector of its own). With
scale 1 the decoder is told both attributes as loudly; smaller scales mimic an encoder whose features
carry shape more weakly than colour. Every run ends with what the stride-16 image embedding the decoder
read carries (`spread` in the JSON): over object tokens of 128 training frames (whole batches, so fewer
when --batch does not divide 128), the spread of its per-colour and per-shape means around the overall
mean, and the shape spread with the shape labels shuffled (what sampling noise alone gives).

Data: `--data` (MeViS layout, default runs/world_data/mevis, split train; generated with
`glus-jax generate-data --root runs/world_data/mevis --split train --videos 400 --seed 0` when absent).
Writes OUT/sam_selection.json: the settings, references and the logged rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from glus_jax.data import synthetic
from glus_jax.eval.metrics import jaccard
from glus_jax.models import glus as glus_lib
from glus_jax.models.sam2.sam2 import SAM2Model
from glus_jax.train import losses
from glus_jax.train import optimizer as opt_lib

DISK_RADII = (4, 6, 8, 10, 12, 16)


class PointPrompts:
    """Random (frame, object mask, all-objects mask) triples from generated videos, frames cached."""

    def __init__(self, root: Path, split: str, num_videos: int, seed: int):
        self.root, self.split = root, split
        self.info = synthetic.load_info(root, split)
        self.videos = list(self.info["videos"])[:num_videos]
        self.rng = np.random.default_rng(seed)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        first = self.info["videos"][self.videos[0]]
        self.frame_size = (first["height"], first["width"])

    def _video(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._cache:
            _, masks, _ = synthetic.load_object_masks(self.root, self.split, name, self.info)
            paths = sorted((self.root / self.split / "JPEGImages" / name).glob("*.jpg"))  # zero-padded names
            frames = np.stack([np.asarray(Image.open(p)) for p in paths])
            if len(frames) != masks.shape[1]:
                raise ValueError(f"{paths[0].parent}: {len(frames)} frames, masks for {masks.shape[1]}")
            self._cache[name] = (frames, np.asarray(masks, bool))
        return self._cache[name]

    def batch(self, n: int) -> tuple[np.ndarray, ...]:
        """(frames [n, H, W, 3] uint8, target masks [n, H, W], all-objects masks [n, H, W], the masks of
        every object that looks like the target [n, H, W], the target's (colour, shape) indices [n, 2],
        the masks of the objects that share only its colour [n, H, W], only its shape [n, H, W], and
        every pixel's attributes [n, 2, H, W]: 1 + colour index, 1 + shape index, 0 on background)."""
        samples = []
        while len(samples) < n:
            name = self.videos[self.rng.integers(len(self.videos))]
            video, masks = self._video(name)
            t, o = self.rng.integers(len(video)), self.rng.integers(len(masks))
            if masks[o, t].sum() >= 4:  # not out of view or a sliver
                samples.append(self.sample(name, t, o))
        return tuple(np.stack(field) for field in zip(*samples))

    def sample(self, name: str, t: int, o: int) -> tuple[np.ndarray, ...]:
        """One of :meth:`batch`'s rows: object `o` of video `name` at frame `t`."""
        video, masks = self._video(name)
        looks = [self._appearance(name, i) for i in range(len(masks))]
        (colour, shape), here = looks[o], masks[:, t]
        lookalikes = synthetic.target_lookalike_masks([o], looks, here, ("color", "shape"))
        colour_only = [i for i, (c, s) in enumerate(looks) if c == colour and s != shape]
        shape_only = [i for i, (c, s) in enumerate(looks) if s == shape and c != colour]
        attributes = np.zeros((2, *here.shape[1:]), np.int32)
        for mask, look in zip(here, looks):  # visible masks are disjoint: the order does not matter
            attributes[:, mask] = np.add(look, 1)[:, None]
        return (video[t], here[o], here.any(0), lookalikes, np.array(looks[o], np.int32),
                here[colour_only].any(0), here[shape_only].any(0), attributes)

    def _appearance(self, video: str, index: int) -> tuple[int, int]:
        obj = list(self.info["videos"][video]["objects"].values())[index]
        return list(synthetic.COLORS).index(obj["color"]), synthetic.SHAPES.index(obj["shape"])


class AppearancePrompt(nnx.Module):
    """The `--prompt appearance` prompt: a learned colour vector plus a learned shape vector, the sparse
    prompt a perfect LLM could hand SAM2 for "the <colour> <shape>" (random init at the decoder's width)."""

    def __init__(self, dim: int, scale: float, rngs: nnx.Rngs):
        self.colour = nnx.Param(scale * jax.random.normal(rngs.params(), (len(synthetic.COLORS), dim)))
        self.shape = nnx.Param(scale * jax.random.normal(rngs.params(), (len(synthetic.SHAPES), dim)))

    def __call__(self, attrs: jax.Array) -> jax.Array:
        return self.colour[...][attrs[:, 0]] + self.shape[...][attrs[:, 1]]


def attributes_at_cells(attributes, h: int, w: int):
    """The pixel attributes [n, 2, H, W] at the centre of each cell of an h x w grid: [n, 2, h, w]."""
    rows = ((np.arange(h) + 0.5) * attributes.shape[2] / h).astype(int)
    cols = ((np.arange(w) + 0.5) * attributes.shape[3] / w).astype(int)
    return attributes[:, :, rows][:, :, :, cols]


class OracleFeatures(nnx.Module):
    """`--image-features oracle`: SAM2's image features made of each pixel's attributes. Per feature
    level, a learned vector per colour plus `shape_scale` x a learned vector per shape (index 0, the
    background, has its own), read at the centre of each cell of that level's grid."""

    def __init__(self, levels: list[tuple[int, int]], shape_scale: float, rngs: nnx.Rngs):
        self.sizes, self.shape_scale = [size for size, _ in levels], shape_scale
        n_colours, n_shapes = len(synthetic.COLORS) + 1, len(synthetic.SHAPES) + 1

        def vectors(n):
            return nnx.List([nnx.Param(jax.random.normal(rngs.params(), (n, c))) for _, c in levels])

        self.colour, self.shape = vectors(n_colours), vectors(n_shapes)

    def __call__(self, attributes: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """attributes [n, 2, H, W] -> (stride-16 embedding [n, h, w, C], high-resolution maps)."""
        levels = []
        for size, colour, shape in zip(self.sizes, self.colour, self.shape):
            grid = attributes_at_cells(attributes, size, size)
            levels.append(colour[...][grid[:, 0]] + self.shape_scale * shape[...][grid[:, 1]])
        return levels[0], tuple(levels[1:])


def attribute_spread(features: np.ndarray, attributes: np.ndarray, seed: int = 0) -> dict[str, float]:
    """How much of a feature map [n, h, w, C] the pixels' colour and shape explain on object cells: the
    RMS distance of the per-colour (per-shape) mean feature from the overall mean, over the cells
    (attributes [n, 2, H, W] as in :meth:`PointPrompts.batch`, read at each cell's centre), and the shape
    spread again with the shape labels shuffled (what finite samples give without any shape signal)."""
    grid = attributes_at_cells(attributes, *features.shape[1:3])
    on_object = grid[:, 0] > 0
    f, colour, shape = features[on_object], grid[:, 0][on_object], grid[:, 1][on_object]
    mean = f.mean(0)

    def spread(labels):
        means = {v: f[labels == v].mean(0) for v in np.unique(labels)}
        return float(np.sqrt(np.mean([np.sum((means[v] - mean) ** 2) for v in labels])))

    shuffled = np.random.default_rng(seed).permutation(shape)
    return {"cells": int(len(f)), "colour": spread(colour), "shape": spread(shape),
            "shape_shuffled": spread(shuffled)}


def draw_points(masks: jax.Array, key: jax.Array) -> jax.Array:
    """One pixel uniformly inside each mask [N, H, W] (non-empty) as (x, y): [N, 2]."""
    n, _, w = masks.shape
    flat = jnp.argmax(jnp.where(masks, jax.random.gumbel(key, masks.shape), -jnp.inf).reshape(n, -1), axis=-1)
    return jnp.stack([flat % w, flat // w], axis=-1).astype(jnp.float32)


def disk_reference(points: np.ndarray, targets: np.ndarray) -> dict[int, float]:
    """Mean IoU of a disk of each radius around the points (x, y) against the targets."""
    h, w = targets.shape[1:]
    yy, xx = np.mgrid[:h, :w]
    out = {}
    for r in DISK_RADII:
        disks = (yy - points[:, 1, None, None]) ** 2 + (xx - points[:, 0, None, None]) ** 2 <= r * r
        out[r] = float(np.mean(jaccard(targets, disks)))
    return out


SHARES = ("target", "lookalikes", "same_colour", "same_shape", "other_objects", "background")


def pixel_shares(pred, targets, lookalikes, same_colour, same_shape, unions) -> np.ndarray:
    """Where each non-empty mask's predicted pixels fall, as fractions [n, len(SHARES)] summing to 1 per
    row (rows of empty masks dropped): the target, its lookalikes (same colour and shape), objects that
    share only its colour, only its shape, any other object, the background. A pixel counts for the
    first of these that covers it. All inputs [n, H, W] bool."""
    regions, taken = [], np.zeros_like(pred)
    for region in (targets, lookalikes, same_colour, same_shape, unions, np.ones_like(pred)):
        regions.append(region & ~taken)
        taken = taken | region
    counts = np.stack([(pred & r).sum((1, 2)) for r in regions], axis=1).astype(np.float64)
    total = counts.sum(1, keepdims=True)
    predicted = total[:, 0] > 0
    return counts[predicted] / total[predicted]


def torch_trainer(args, schedule):
    """The same training on the PyTorch `sam2` package's SAM2 of the same sizes (its own random init):
    a step (pixels [N, S, S, 3], targets, unions, points [N, 2] in SAM2 pixels) -> [loss, iou, iou_all]."""
    import dataclasses

    import torch
    import torch.nn.functional as F

    from benchmarks.configs import TINY
    from benchmarks.torch_reference import build_sam2_base

    cfg = glus_lib.synthetic_world().sam2
    torch.manual_seed(args.seed)
    sam = build_sam2_base(dataclasses.replace(TINY.sam2, image_size=cfg.image_size).yaml())
    sam.train()
    params = [p for p in sam.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    lr_at = torch.optim.lr_scheduler.LambdaLR(opt, lambda count: float(schedule(count)) / args.lr)

    def step(pixels, targets, unions, points):
        n = len(points)
        backbone = sam.forward_image(torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2))
        _, feats, _, sizes = sam._prepare_backbone_features(backbone)
        maps = [f.permute(1, 2, 0).reshape(n, -1, *hw) for f, hw in zip(feats, sizes)]
        image = maps[-1] + sam.no_mem_embed.view(1, -1, 1, 1)  # directly_add_no_mem_embed
        sparse, dense = sam.sam_prompt_encoder(
            points=(torch.from_numpy(points[:, None]).float(), torch.ones(n, 1, dtype=torch.int32)), boxes=None, masks=None
        )
        low = sam.sam_mask_decoder(
            image_embeddings=image, image_pe=sam.sam_prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=False, repeat_image=False, high_res_features=maps[:-1],
        )[0]
        logits = F.interpolate(low, targets.shape[1:], mode="bilinear", align_corners=False)[:, 0]
        t = torch.from_numpy(targets).float()
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean((1, 2)).mean()
        p = logits.sigmoid()
        dice = (1 - (2 * (p / 1000 * t).sum((1, 2)) + 1e-6) / ((p / 1000).sum((1, 2)) + (t / 1000).sum((1, 2)) + 1e-6)).mean()
        loss = args.bce_weight * bce + args.dice_weight * dice
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_at.step()
        pred = (logits > 0).detach().numpy()
        return [loss.item(), float(np.mean(jaccard(targets, pred))), float(np.mean(jaccard(unions, pred)))]

    return step


def save_with_sam(path: Path, sam: SAM2Model, settings: dict) -> None:
    """A `synthetic_world` model directory at `path`: random LLaVA, this SAM2."""
    from glus_jax.data.synthetic_tokenizer import world_tokenizer_dir
    from glus_jax.data.tokenizer import GLUSTokenizer
    from glus_jax.models import io

    model = glus_lib.GLUS(glus_lib.synthetic_world(image_size=sam.cfg.image_size), rngs=nnx.Rngs(0))
    model.visual_model = sam
    tokenizer = GLUSTokenizer.from_dir(world_tokenizer_dir(), add_glus_tokens=False)
    io.save_model(path, model, tokenizer, source={"benchmarks.sam_selection": settings})


class Trainee(nnx.Module):
    """What the optimizer trains: SAM2, the appearance prompt vectors with `--prompt appearance`, and the
    oracle's feature vectors with `--image-features oracle`."""

    def __init__(self, sam: SAM2Model, appearance: AppearancePrompt | None, oracle: OracleFeatures | None):
        self.sam, self.appearance, self.oracle = sam, appearance, oracle

    def image_features(self, pixels: jax.Array, attributes: jax.Array) -> tuple[jax.Array, tuple]:
        """(stride-16 embedding, high-resolution maps) the decoder reads: the encoder's or the oracle's."""
        if self.oracle is not None:
            return self.oracle(attributes)
        feats = self.sam.encode_image(pixels)
        return feats.vision_features, feats.high_res_feats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("runs/world_data/mevis"))
    p.add_argument("--videos", type=int, default=100, help="training videos the frames come from")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--bce-weight", type=float, default=2.0)
    p.add_argument("--dice-weight", type=float, default=0.5)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", choices=("point", "appearance"), default="point",
                   help="point: a positive point in the target; appearance: a learned colour + shape vector")
    p.add_argument("--prompt-scale", type=float, default=1.0, help="init scale of the appearance vectors")
    p.add_argument("--image-features", choices=("hiera", "oracle"), default="hiera",
                   help="oracle: learned colour + shape vectors per pixel instead of the image encoder")
    p.add_argument("--oracle-shape-scale", type=float, default=1.0,
                   help="with --image-features oracle: the shape vectors' weight against the colour's")
    p.add_argument("--torch", action="store_true", help="also train the sam2 package's twin on the same prompts")
    p.add_argument("--out", type=Path, default=Path("runs/sam_selection"))
    p.add_argument("--save", type=Path, help="also write a world-model directory holding the trained SAM2 "
                   "(random LLM), for `glus-jax train --config.model.sam2_from=DIR`")
    args = p.parse_args(argv)

    if not (args.data / "train" / "synthetic.json").exists():
        synthetic.generate(args.data, "train", 400, 0)
    data = PointPrompts(args.data, "train", args.videos, args.seed)
    cfg = glus_lib.synthetic_world().sam2
    size = cfg.image_size
    if args.save and args.image_features != "hiera":
        p.error("--save writes the trained image encoder: not with --image-features oracle")
    if args.torch and (args.prompt != "point" or args.image_features != "hiera"):
        p.error("--torch trains point prompts on the image encoder's features only")
    rngs = nnx.Rngs(args.seed)
    sam = SAM2Model(cfg, rngs=rngs)
    appearance = None
    if args.prompt == "appearance":
        appearance = AppearancePrompt(cfg.hidden_dim, args.prompt_scale, rngs)
    oracle = None
    if args.image_features == "oracle":
        probe = sam.encode_image(jnp.zeros((1, size, size, 3)))  # the feature levels' sizes and widths
        levels = [(x.shape[1], x.shape[-1]) for x in (probe.vision_features, *probe.high_res_feats)]
        oracle = OracleFeatures(levels, args.oracle_shape_scale, rngs)
    trainee = Trainee(sam, appearance, oracle)
    opt_cfg = opt_lib.OptimizerConfig(lr=args.lr, warmup_steps=min(100, args.steps // 4), total_steps=args.steps)
    opt = nnx.Optimizer(trainee, opt_lib.make_optimizer(opt_cfg), wrt=nnx.Param)

    scale = size / np.asarray(data.frame_size[::-1], np.float32)  # frame (x, y) -> SAM2 pixels
    torch_step = torch_trainer(args, opt_lib.lr_schedule(opt_cfg)) if args.torch else None

    @nnx.jit
    def step(trainee, opt, pixels, targets, points, attrs, attributes):
        def loss_fn(trainee):
            sam = trainee.sam
            embedding, high_res = trainee.image_features(pixels, attributes)
            if args.prompt == "point":
                prompt = {"points": ((points * scale)[:, None], jnp.ones((len(points), 1), jnp.int32))}
            else:
                prompt = {"text_embeds": trainee.appearance(attrs)}
            out = sam.decode(sam.add_no_mem_embed(embedding), high_res, training=True, **prompt)
            logits = glus_lib.upsample_logits(out.masks[:, 0], targets.shape[1:])
            t = targets.astype(jnp.float32)
            bce = jnp.mean(losses.per_mask_bce(logits, t))
            dice = jnp.mean(losses.per_mask_dice(logits, t))
            return args.bce_weight * bce + args.dice_weight * dice, logits > 0

        (loss, pred), grads = nnx.value_and_grad(loss_fn, has_aux=True)(trainee)
        opt.update(trainee, grads)
        return loss, pred

    draw = jax.jit(draw_points)
    preprocess = jax.jit(lambda frames: glus_lib.sam_preprocess(frames, size))
    rows, window, shares_window = [], [], []
    seen = {"points": [], "targets": [], "unions": [], "lookalikes": []}
    t0 = time.perf_counter()
    for i in range(args.steps):
        frames, targets, unions, lookalikes, attrs, same_colour, same_shape, attributes = data.batch(
            args.batch
        )
        points = draw(jnp.asarray(targets), jax.random.key(i))
        pixels = preprocess(jnp.asarray(frames))
        loss, pred = step(trainee, opt, pixels, jnp.asarray(targets), points, jnp.asarray(attrs),
                          jnp.asarray(attributes))
        pred = np.asarray(pred)
        metrics = [float(loss), float(np.mean(jaccard(targets, pred))), float(np.mean(jaccard(unions, pred)))]
        if torch_step is not None:
            metrics += torch_step(np.asarray(pixels), targets, unions, np.asarray(points) * scale)
        window.append(metrics)
        seen["points"].append(np.asarray(points))
        seen["targets"].append(targets)
        seen["unions"].append(unions)
        seen["lookalikes"].append(lookalikes)
        shares_window.append(pixel_shares(pred, targets, lookalikes, same_colour, same_shape, unions))
        if (i + 1) % args.log_every == 0:
            m = np.mean(window, axis=0)
            per_mask = np.concatenate(shares_window)
            mean = per_mask.mean(0) if len(per_mask) else np.full(len(SHARES), np.nan)
            shares = dict(zip(SHARES, mean.tolist()))
            row = {"step": i + 1, "loss": m[0], "iou": m[1], "iou_all": m[2], "shares": shares,
                   "seconds": time.perf_counter() - t0}
            line = (f"step {i + 1:5d}  loss {m[0]:.4f}  iou {m[1]:.3f}  iou_all {m[2]:.3f}  "
                    f"same colour {shares['same_colour']:.3f}  same shape {shares['same_shape']:.3f}")
            if torch_step is not None:
                row.update(torch_loss=m[3], torch_iou=m[4], torch_iou_all=m[5])
                line += f"  | PyTorch sam2: loss {m[3]:.4f}  iou {m[4]:.3f}  iou_all {m[5]:.3f}"
            rows.append(row)
            print(line, flush=True)
            window, shares_window = [], []
    targets = np.concatenate(seen["targets"])
    all_objects = float(np.mean(jaccard(targets, np.concatenate(seen["unions"]))))
    disk = disk_reference(np.concatenate(seen["points"]), targets)
    lookalikes = float(np.mean(jaccard(targets, np.concatenate(seen["lookalikes"]))))
    best_r = max(disk, key=disk.get)
    print(f"references on the same prompts: all_objects iou {all_objects:.3f}, "
          f"disk iou {disk[best_r]:.3f} (radius {best_r}), lookalikes iou {lookalikes:.3f}")
    # The last logged window: what the masks have learnt to select by, not how they started.
    shares = rows[-1]["shares"] if rows else dict.fromkeys(SHARES, float("nan"))
    last = f"steps {rows[-1]['step'] - args.log_every + 1}-{rows[-1]['step']}" if rows else "no logged steps"
    print(f"predicted pixels, {last}: "
          + ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in shares.items()))
    embed = nnx.jit(lambda trainee, pixels, attributes: trainee.image_features(pixels, attributes)[0])
    features, attributes = [], []
    for _ in range(128 // args.batch):
        frames, *_, batch_attributes = data.batch(args.batch)
        pixels = preprocess(jnp.asarray(frames))
        features.append(np.asarray(embed(trainee, pixels, jnp.asarray(batch_attributes))))
        attributes.append(batch_attributes)
    spread = attribute_spread(np.concatenate(features), np.concatenate(attributes), args.seed)
    print(f"image embedding on {spread['cells']} object cells: colour spread {spread['colour']:.3f}, "
          f"shape spread {spread['shape']:.3f} ({spread['shape_shuffled']:.3f} with shuffled shape labels)")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "references": {"all_objects": all_objects, "disk": disk, "lookalikes": lookalikes},
              "rows": rows, "shares": shares, "spread": spread}
    tmp = args.out / "sam_selection.json.partial"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, args.out / "sam_selection.json")
    if args.save:
        save_with_sam(args.save, trainee.sam, result["settings"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
