"""Table-driven conversion of PyTorch state dicts to Flax NNX parameters.

A conversion is a list of `Rule`s: a regex over the PyTorch key (full match), the Flax target path
("/"-joined, groups substituted as {1}, {2}, ...), and a small named layout transform. A rule with
`stack=N` collects the keys whose group N is a layer index and stacks them along a new leading axis
(scanned layers). Every source key must be consumed or explicitly ignored, every target filled, every
shape equal: anything else raises `ConversionError` listing all problems at once.

Readers: safetensors (preferred), HF sharded `pytorch_model-*.bin` / `model-*.safetensors` with index
json, and `.pt` via `torch.load(weights_only=True)` only: arbitrary pickled objects are refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np


class ConversionError(ValueError):
    """A checkpoint does not match the conversion table or the target model."""


# --------------------------------------------------------------------------- transforms


def identity(x: np.ndarray) -> np.ndarray:
    return x


def linear_t(x: np.ndarray) -> np.ndarray:
    """nn.Linear weight [out, in] -> kernel [in, out]."""
    return np.ascontiguousarray(x.T)


def conv_oihw_to_hwio(x: np.ndarray) -> np.ndarray:
    """nn.Conv2d weight [out, in, kh, kw] -> Flax kernel [kh, kw, in, out]."""
    return np.ascontiguousarray(x.transpose(2, 3, 1, 0))


def conv_transpose_flip(x: np.ndarray) -> np.ndarray:
    """nn.ConvTranspose2d weight [in, out, kh, kw] -> kernel [kh, kw, in, out] for a plain
    (non-transposed-kernel) Flax ConvTranspose: PyTorch's transposed conv is the gradient of a conv,
    which equals a dilated conv with the spatially flipped kernel."""
    return np.ascontiguousarray(x.transpose(2, 3, 0, 1)[::-1, ::-1])


def reshape(*shape: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(x: np.ndarray) -> np.ndarray:
        return x.reshape(shape)

    fn.__name__ = f"reshape{shape}"
    return fn


def squeeze(x: np.ndarray) -> np.ndarray:
    return np.squeeze(x)


@dataclasses.dataclass(frozen=True)
class Rule:
    pattern: str
    target: str
    transform: Callable[[np.ndarray], np.ndarray] = identity
    stack: int | None = None  # regex group holding a layer index to stack over

    def match(self, key: str) -> re.Match | None:
        return re.fullmatch(self.pattern, key)

    def target_for(self, m: re.Match) -> str:
        """The target path with {1}, {2}, ... replaced by the regex groups."""
        return re.sub(r"\{(\d+)\}", lambda g: m.group(int(g.group(1))), self.target)


# ------------------------------------------------------------------------------ readers


def _torch_load(path: Path) -> dict:
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path}: refused to unpickle: it holds objects other than tensors "
            f"(only weights_only loading is allowed): {e}"
        ) from None
    except Exception as e:
        raise ConversionError(f"{path}: cannot read as a PyTorch checkpoint: {e}") from None
    return obj


def _tensors_to_numpy(d: Mapping, path: Path) -> dict[str, np.ndarray]:
    import torch

    out = {}
    for k, v in d.items():
        if not isinstance(v, torch.Tensor):
            raise ConversionError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        if v.dtype == torch.bfloat16:
            v = v.float()
        out[k] = v.detach().cpu().numpy()
    return out


def read_state_dict(path: str | Path, *, subkey: str | None = None) -> dict[str, np.ndarray]:
    """Read a PyTorch/HF checkpoint (file or HF directory) into {key: numpy array}.

    `subkey`: for `.pt` files that wrap the state dict (SAM2's `{"model": ...}`).
    """
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or directory")
    if path.is_dir():
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = path / index_name
            if index.exists():
                try:
                    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                except (json.JSONDecodeError, KeyError) as e:
                    raise ConversionError(f"{index}: malformed index ({e})") from None
                out: dict[str, np.ndarray] = {}
                for f in files:
                    out.update(read_state_dict(path / f))
                return out
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return read_state_dict(path / name)
        shards = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
        if not shards:
            raise ConversionError(f"{path}: no safetensors or pytorch_model*.bin weights found")
        out = {}
        for f in shards:
            out.update(read_state_dict(f))
        return out
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            # bf16 tensors cannot be read by the numpy backend: fall back to torch.
            try:
                from safetensors.torch import load_file as load_torch

                return _tensors_to_numpy(load_torch(str(path)), path)
            except Exception:
                raise ConversionError(f"{path}: cannot read safetensors file: {e}") from None
    obj = _torch_load(path)
    if subkey is not None:
        if not isinstance(obj, Mapping) or subkey not in obj:
            raise ConversionError(f"{path}: expected a dict with key {subkey!r}")
        obj = obj[subkey]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return _tensors_to_numpy(obj, path)


# ---------------------------------------------------------------------------- conversion


def convert(
    source: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    target_shapes: Mapping[str, tuple[int, ...]],
    *,
    ignore: Iterable[str] = (),
    allow_missing: Iterable[str] = (),
    allow_unexpected: bool = False,
    what: str = "checkpoint",
) -> dict[str, np.ndarray]:
    """Convert `source` to {flax_path: array} with shapes exactly `target_shapes`.

    `ignore`: regexes of source keys that are known and deliberately dropped (buffers, unused heads).
    `allow_missing`: regexes of target paths that may stay unfilled (the caller keeps their init).
    """
    rules = list(rules)
    ignore = [re.compile(p) for p in ignore]
    allow_missing = [re.compile(p) for p in allow_missing]
    out: dict[str, np.ndarray] = {}
    stacks: dict[str, dict[int, np.ndarray]] = {}
    unexpected, duplicate = [], []
    for key in source:
        for rule in rules:
            m = rule.match(key)
            if m is None:
                continue
            target = rule.target_for(m)
            value = rule.transform(np.asarray(source[key]))
            if rule.stack is not None:
                layer = int(m.group(rule.stack))
                if layer in stacks.setdefault(target, {}):
                    duplicate.append(key)
                stacks[target][layer] = value
            else:
                if target in out:
                    duplicate.append(key)
                out[target] = value
            break
        else:
            if not any(p.fullmatch(key) for p in ignore):
                unexpected.append(key)
    problems = []
    for target, layers in stacks.items():
        idx = sorted(layers)
        if idx != list(range(len(idx))):
            problems.append(f"  {target}: layer indices {idx} are not 0..{len(idx) - 1}")
            continue
        out[target] = np.stack([layers[i] for i in idx])
    missing = [t for t in target_shapes if t not in out and not any(p.fullmatch(t) for p in allow_missing)]
    extra_targets = [t for t in out if t not in target_shapes]
    shape_errors = [
        f"  {t}: checkpoint gives {tuple(out[t].shape)}, model expects {tuple(target_shapes[t])}"
        for t in out
        if t in target_shapes and tuple(out[t].shape) != tuple(target_shapes[t])
    ]
    if missing:
        problems.append("missing (model parameters no checkpoint key fills):\n" + "\n".join(f"  {t}" for t in missing))
    if unexpected and not allow_unexpected:
        problems.append("unexpected (checkpoint keys no rule consumes):\n" + "\n".join(f"  {k}" for k in unexpected))
    if extra_targets:
        problems.append("rules produced paths the model does not have:\n" + "\n".join(f"  {t}" for t in extra_targets))
    if shape_errors:
        problems.append("mis-shaped:\n" + "\n".join(shape_errors))
    if duplicate:
        problems.append("keys mapped twice:\n" + "\n".join(f"  {k}" for k in duplicate))
    if problems:
        raise ConversionError(f"cannot convert {what}:\n" + "\n".join(problems))
    return out


# --------------------------------------------------------------------- NNX model interface


def path_str(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def param_shapes(model) -> dict[str, tuple[int, ...]]:
    """{"a/b/kernel": shape} for every nnx.Param of `model` (abstract models work too)."""
    from flax import nnx

    return {path_str(p): tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def load_into(model, flat: Mapping[str, np.ndarray], *, what: str = "weights") -> None:
    """Write {path: array} into `model`'s Params in place, keeping each Param's dtype.

    Paths absent from `flat` keep their current value; unknown paths or shape mismatches raise.
    """
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    flat_state = dict(nnx.to_flat_state(state))
    by_str = {path_str(p): p for p in flat_state}
    bad = [k for k in flat if k not in by_str]
    shapes = [
        f"  {k}: {tuple(np.shape(v))} != {tuple(flat_state[by_str[k]].shape)}"
        for k, v in flat.items()
        if k in by_str and tuple(np.shape(v)) != tuple(flat_state[by_str[k]].shape)
    ]
    if bad or shapes:
        msg = [f"cannot load {what}:"]
        if bad:
            msg.append("unknown parameter paths:\n" + "\n".join(f"  {k}" for k in bad))
        if shapes:
            msg.append("mis-shaped:\n" + "\n".join(shapes))
        raise ConversionError("\n".join(msg))
    for k, v in flat.items():
        var = flat_state[by_str[k]]
        var.set_value(jnp.asarray(v, dtype=var.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(flat_state))
