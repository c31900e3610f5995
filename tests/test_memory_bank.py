"""GLUS memory bank: frame selection (hand-computed from GLUS `get_visual_embs`), the fixed-size ring
buffer against an unbounded dict bank, and memory conditioning (no_mem_embed / masked attention)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from glus_jax.models.sam2 import memory_bank as mb
from glus_jax.models.sam2.memory_attention import MemoryAttention, MemoryAttentionConfig


def selected(frame_id: int, stride: int, num_maskmem: int = 7) -> list[int]:
    ids, ok = mb.select_memory_frames(frame_id, num_maskmem, stride)
    return [int(i) for i, k in zip(np.asarray(ids), np.asarray(ok)) if k]


# Hand-computed from the reference loop: for t_rel = 7..2, ((f-2)//r)*r - (t_rel-2)*r; then f-1.
STRIDE_1 = {
    0: [],
    1: [0],
    2: [0, 1],
    3: [0, 1, 2],
    6: [0, 1, 2, 3, 4, 5],
    7: [0, 1, 2, 3, 4, 5, 6],
    8: [1, 2, 3, 4, 5, 6, 7],
    20: [13, 14, 15, 16, 17, 18, 19],
}
STRIDE_3 = {
    0: [],
    1: [0],  # (1-2)//3 = -1 -> -3: skipped
    2: [0, 1],
    3: [0, 2],
    4: [0, 3],
    5: [0, 3, 4],
    6: [0, 3, 5],
    7: [0, 3, 6],
    8: [0, 3, 6, 7],
    9: [0, 3, 6, 8],
    10: [0, 3, 6, 9],
    11: [0, 3, 6, 9, 10],
    17: [0, 3, 6, 9, 12, 15, 16],
    19: [0, 3, 6, 9, 12, 15, 18],
    20: [3, 6, 9, 12, 15, 18, 19],
}


@pytest.mark.parametrize("stride,table", [(1, STRIDE_1), (3, STRIDE_3)], ids=["stride1", "stride3"])
def test_selection_hand_computed(stride, table):
    for frame_id, expected in table.items():
        assert selected(frame_id, stride) == expected, frame_id


def test_selection_frames_0_to_20_properties():
    for stride in (1, 2, 3, 5):
        for f in range(21):
            ids = selected(f, stride)
            assert ids == sorted(set(ids)), (f, stride)  # oldest first, no duplicates
            assert all(0 <= i < f for i in ids)
            assert (f - 1 in ids) == (f >= 1)
            assert all(i % stride == 0 for i in ids if i != f - 1)  # strided frames are multiples of r
            assert len(ids) <= 7


def test_selection_matches_the_oracle_run():
    """inference_steps.json 'memory_frames_used' of the oracle's inference (mem_stride 3)."""
    used = [[], [0], [0, 1], [0, 2], [0, 3], [0, 3, 4], [0, 3, 5], [0, 3, 6], [0, 3, 6, 7], [0, 3, 6, 8]]
    assert [selected(f, 3) for f in range(10)] == used


def test_selection_traced_in_jit():
    fn = jax.jit(lambda f, r: mb.select_memory_frames(f, 7, r))
    ids, ok = fn(jnp.int32(20), jnp.int32(3))
    assert np.asarray(ids).tolist() == [3, 6, 9, 12, 15, 18, 19] and bool(np.all(ok))
    ids, ok = fn(jnp.int32(1), jnp.int32(3))
    assert np.asarray(ok).tolist() == [False] * 6 + [True]


def test_capacity():
    assert mb.bank_capacity(7, 1) == 7
    assert mb.bank_capacity(7, 3) == 19
    with pytest.raises(ValueError):
        mb.bank_capacity(7, 0)


# --------------------------------------------------------------------- ring vs dict


HW, C, B = 3, 2, 2


def frame_memory(f: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(f)
    return rng.normal(size=(B, HW, C)).astype(np.float32), rng.normal(size=(B, HW, C)).astype(np.float32)


def dict_bank_run(frames, stride, clear_at=(), num_maskmem=7):
    """The reference: a Python dict, GLUS's selection loop, skip absent frames, concatenate oldest first."""
    bank, out = {}, []
    for f, insert in frames:
        if f in clear_at:
            bank.clear()
        ids = []
        for t_pos in range(num_maskmem):
            t_rel = num_maskmem - t_pos
            prev = f - 1 if t_rel == 1 else ((f - 2) // stride) * stride - (t_rel - 2) * stride
            if prev >= 0 and prev in bank:
                ids.append(prev)
        out.append(ids)
        if insert:
            bank[f] = frame_memory(f)
    return out


def ring_bank_run(frames, stride, capacity, clear_at=(), num_maskmem=7):
    """The same frames through the ring buffer inside one lax.scan."""
    fids = jnp.asarray([f for f, _ in frames], jnp.int32)
    inserts = jnp.asarray([ins for _, ins in frames])
    clears = jnp.asarray([f in clear_at for f, _ in frames])
    feats = jnp.asarray(np.stack([frame_memory(f)[0] for f, _ in frames]))
    poss = jnp.asarray(np.stack([frame_memory(f)[1] for f, _ in frames]))

    def step(bank, x):
        f, ins, clr, feat, pos = x
        bank = jax.lax.cond(clr, mb.clear, lambda b: b, bank)
        sel = mb.gather(bank, f, num_maskmem, stride)
        new = mb.insert(bank, f, feat, pos)
        bank = jax.tree.map(lambda a, b: jnp.where(ins, a, b), new, bank)
        return bank, sel

    bank = mb.init_bank(capacity, (B,), HW, C)
    _, sels = jax.jit(lambda b, xs: jax.lax.scan(step, b, xs))(bank, (fids, inserts, clears, feats, poss))
    return sels


def check_ring_equals_dict(frames, stride, capacity, clear_at=()) -> bool:
    expected = dict_bank_run(frames, stride, clear_at)
    sels = ring_bank_run(frames, stride, capacity, clear_at)
    ok = True
    for n, ((f, _), ids) in enumerate(zip(frames, expected)):
        present = np.asarray(sels.present[n])
        got = [int(i) for i, p in zip(np.asarray(sels.frame_ids[n]), present) if p]
        if got != ids:
            ok = False
            continue
        mask = np.asarray(sels.mask[n]).reshape(7, HW)
        mem = np.asarray(sels.memory[n]).reshape(B, 7, HW, C)
        pos = np.asarray(sels.memory_pos[n]).reshape(B, 7, HW, C)
        assert (mask == present[:, None]).all()
        # the present tokens, in order, are exactly the dict bank's concatenation
        want_mem = np.concatenate([frame_memory(i)[0] for i in ids], axis=1) if ids else np.zeros((B, 0, C))
        want_pos = np.concatenate([frame_memory(i)[1] for i in ids], axis=1) if ids else np.zeros((B, 0, C))
        np.testing.assert_array_equal(mem[:, present].reshape(B, -1, C), want_mem)
        np.testing.assert_array_equal(pos[:, present].reshape(B, -1, C), want_pos)
    return ok


def test_ring_equals_dict_40_frames_stride_3_with_missing_frames():
    missing = {5, 9, 17, 30}
    frames = [(f, f not in missing) for f in range(40)]
    assert check_ring_equals_dict(frames, 3, mb.bank_capacity(7, 3))
    # and the capacity is tight: one slot fewer loses a selectable frame
    assert not check_ring_equals_dict(frames, 3, mb.bank_capacity(7, 3) - 1)


def test_ring_equals_dict_stride_1_and_clip_restarts():
    """Training-style clips: ids restart at 0 and the bank is cleared at rel_pos 0."""
    frames = [(f, True) for f in range(4)] * 3 + [(f, True) for f in range(12)]
    expected = dict_bank_run(frames, 1, clear_at=(0,))
    assert expected[:4] == [[], [0], [0, 1], [0, 1, 2]] and expected[4] == []
    assert check_ring_equals_dict(frames, 1, mb.bank_capacity(7, 1), clear_at=(0,))


def test_clear_empties_the_bank():
    bank = mb.init_bank(7, (B,), HW, C)
    for f in range(3):
        bank = mb.insert(bank, f, *map(jnp.asarray, frame_memory(f)))
    assert bool(mb.gather(bank, 3).any)
    bank = mb.clear(bank)
    assert not bool(mb.gather(bank, 3).any)
    assert not bool(np.asarray(bank.valid).any())


# ------------------------------------------------------------------------ conditioning


def test_condition_on_memory():
    cfg = MemoryAttentionConfig(d_model=24, num_layers=2, num_heads=2, dim_feedforward=36, kv_in_dim=20)
    model = MemoryAttention(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    hw = 9
    curr = jnp.asarray(rng.normal(size=(B, hw, 24)), jnp.float32)
    curr_pos = jnp.asarray(rng.normal(size=(B, hw, 24)), jnp.float32)
    no_mem = jnp.asarray(rng.normal(size=(1, 1, 24)), jnp.float32)
    mems = {f: [jnp.asarray(rng.normal(size=(B, hw, 20)), jnp.float32) for _ in range(2)] for f in range(8)}

    @nnx.jit
    def step(model, bank, f):
        sel = mb.gather(bank, f, 7, 3)
        return mb.condition_on_memory(model, curr, curr_pos, sel, no_mem)

    bank = mb.init_bank(mb.bank_capacity(7, 3), (B,), hw, 20)
    # Empty bank: the feature plus no_mem_embed, exactly.
    np.testing.assert_array_equal(np.asarray(step(model, bank, 0)), np.asarray(curr + no_mem[0]))
    for f in range(8):
        if f != 3:  # frame 3 missing
            bank = mb.insert(bank, f, *mems[f])
    out = step(model, bank, 8)  # selects 0, 3, 6, 7 -> 3 absent
    memory = jnp.concatenate([mems[f][0] for f in (0, 6, 7)], axis=1)
    memory_pos = jnp.concatenate([mems[f][1] for f in (0, 6, 7)], axis=1)
    ref = model(curr, memory, curr_pos, memory_pos)
    assert float(jnp.abs(out - ref).max() / jnp.abs(ref).max()) <= 1e-6
    # A bank holding only frame 3: frame 2 selects 0 and 1, neither present -> no_mem_embed.
    empty = mb.clear(bank)
    empty = mb.insert(empty, 3, *mems[3])
    np.testing.assert_array_equal(np.asarray(step(model, empty, 2)), np.asarray(curr + no_mem[0]))
