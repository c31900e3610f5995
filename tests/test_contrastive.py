"""Contrastive loss + [SEG]-token bank against a Python/PyTorch transcription of utils/seg_token_bank.py,
utils/contrastive_loss.py and the call site in model/GLUS.py (generate_masks), with the same random
choices passed to both sides."""

import random
from collections import Counter, deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn.functional import cosine_similarity as csim

from glus_jax.train import contrastive as C

D = 13  # odd embedding width

# A MeViS-like meta (the reference reads meta_expressions.json): per video, exp_id -> obj_id list.
META = {
    "va": {"0": ["1"], "1": ["1"], "2": ["2"], "3": ["2", "1"], "4": ["1", "2"]},
    "vb": {"0": ["5"], "1": ["5"], "2": ["5"], "3": ["6"]},
    "vc": {"0": ["1"], "1": ["2"], "2": ["3"]},
}
FRAMES = [f"{i:05d}" for i in range(8)]
DATASET_IDS = {"mevis": 0, "youtube": 1}
VIDEO_IDS = {"va": 0, "vb": 1, "vc": 2, "yv": 3}


def _object_sets(video):
    table = {}
    return {
        e: table.setdefault(tuple(sorted(int(o) for o in objs)), len(table))
        for e, objs in META[video].items()
    }


# ----------------------------------------------------------------------------- reference transcription


class RefBank:
    """utils/seg_token_bank.py: a deque of at most 512 dicts; only 'mevis' str_ids are stored."""

    def __init__(self, max_bank_size=512):
        self.bank = deque([])
        self.max_bank_size = max_bank_size

    def update(self, str_id, frame_id, seg_token):
        dataset, vid, exp_id = str_id.split("_", 2)
        if dataset != "mevis":
            return
        self.bank.append(
            {"dataset": dataset, "video": vid, "exp_id": exp_id, "frame_id": frame_id, "seg_token": seg_token}
        )
        while len(self.bank) > self.max_bank_size:
            self.bank.popleft()


class RefContrastive:
    """utils/contrastive_loss.py with the random calls routed to an explicit random.Random whose draws
    are recorded (random.choice(seq) == seq[randrange(len(seq))])."""

    def __init__(self, taw=0.07):
        self.vid2exp2positives = {}
        for vid, exps in META.items():
            metas = [
                {"video": vid, "exp_id": e, "obj_id": np.array(sorted(int(x) for x in o))}
                for e, o in exps.items()
            ]
            self.vid2exp2positives[vid] = {
                r["exp_id"]: [
                    m
                    for m in metas
                    if np.array_equal(m["obj_id"], r["obj_id"]) and m["exp_id"] != r["exp_id"]
                ]
                for r in metas
            }
        self.taw = taw
        self.seg_token_bank = RefBank(512)

    def get_loss(self, curr_dt, rnd):
        bank = self.seg_token_bank.bank
        dataset, vid, exp_id, token = (
            curr_dt["dataset"],
            curr_dt["video"],
            curr_dt["exp_id"],
            curr_dt["seg_token"],
        )
        if dataset != "mevis" or vid not in self.vid2exp2positives:
            return None, None
        positive_set = {
            (m["video"], m["exp_id"], curr_dt["frame_id"]) for m in self.vid2exp2positives[vid][exp_id]
        }
        positives = [
            dt["seg_token"] for dt in bank if (dt["video"], dt["exp_id"], dt["frame_id"]) in positive_set
        ]
        negatives = [
            dt["seg_token"]
            for dt in bank
            if (dt["video"], dt["exp_id"], dt["frame_id"]) not in positive_set
            and (dt["video"] != vid or dt["exp_id"] != exp_id)
        ]
        if len(positives) == 0 or len(negatives) < 128:
            return None, None
        neg_indices = [rnd.randint(0, len(negatives) - 1) for _ in range(128)]
        negs = torch.stack([negatives[i] for i in neg_indices], dim=0)
        pos_index = rnd.randrange(len(positives))
        pos_emb = positives[pos_index]
        neg_sum = torch.sum(torch.exp(csim(negs, token.unsqueeze(0)) / self.taw))
        pos_sum = torch.exp(csim(pos_emb.unsqueeze(0), token.unsqueeze(0)) / self.taw)[0]
        return -torch.log(pos_sum / (neg_sum + pos_sum)), (neg_indices, pos_index)


def ref_step(ref, batch, embeds, rnd, weight=0.1):
    """GLUS.py generate_masks: update the bank with every [SEG] embedding, then score each one."""
    for (str_ids, frames), emb in zip(batch, embeds):
        for i, sid in enumerate(str_ids):
            for j, fr in enumerate(frames):
                ref.seg_token_bank.update(sid, fr, emb[i * len(frames) + j].clone().detach())
    total, cnt, per_query = 0.0, 0, []
    for (str_ids, frames), emb in zip(batch, embeds):
        for i, sid in enumerate(str_ids):
            for j, fr in enumerate(frames):
                dt = dict(zip(("dataset", "video", "exp_id"), sid.split("_", 2)))
                dt["frame_id"], dt["seg_token"] = fr, emb[i * len(frames) + j]
                loss, draws = ref.get_loss(dt, rnd)
                per_query.append((loss, draws))
                if loss is not None:
                    total += loss
                    cnt += 1
    if cnt > 1:
        return total / cnt * weight, per_query
    return None, per_query


# ----------------------------------------------------------------------------- batches


def random_batch(rnd, n_samples=2, max_exp=3):
    """[(str_ids, frame names)] per sample and our padded keys / validity [n_samples * max_exp * 4]."""
    batch, keys, valid = [], [], []
    for _ in range(n_samples):
        if rnd.random() < 0.2:  # a Ref-YouTube-VOS sample: neither banked nor scored
            ds, vid, exps = "youtube", "yv", ["0", "1"]
        else:
            ds, vid = "mevis", rnd.choice(sorted(META))
            all_exps = list(META[vid])
            exps = rnd.sample(all_exps, max_exp) if len(all_exps) >= max_exp else all_exps
        start = rnd.randint(0, len(FRAMES) - 4)
        frames = FRAMES[start : start + 4]
        batch.append(([f"{ds}_{vid}_{e}" for e in exps], frames))
        sets = _object_sets(vid) if ds == "mevis" else {"0": 0, "1": 1}
        for i in range(max_exp):
            for j in range(4):
                if i < len(exps):
                    keys.append([DATASET_IDS[ds], VIDEO_IDS[vid], int(exps[i]), sets[exps[i]], start + j])
                    valid.append(ds == "mevis")
                else:
                    keys.append([0, 0, 0, 0, 0])
                    valid.append(False)
    return batch, np.asarray(keys, np.int32), np.asarray(valid)


def _ours_from_ref_embeds(batch, embeds, max_exp=3):
    out = np.zeros((len(batch), max_exp, 4, D), np.float32)
    for b, ((sids, _), e) in enumerate(zip(batch, embeds)):
        out[b, : len(sids)] = e.detach().numpy().reshape(len(sids), 4, D)
    return out.reshape(-1, D)


def _ranks_from_ref(batch, per_query, max_exp=3):
    """Our [Q, 128] / [Q] draws from the reference's recorded ones (padded queries get zeros)."""
    neg = np.zeros((len(batch) * max_exp * 4, 128), np.int32)
    pos = np.zeros((len(batch) * max_exp * 4,), np.int32)
    applied = np.zeros(len(neg), bool)
    losses = np.zeros(len(neg), np.float32)
    k = 0
    for b, (sids, frames) in enumerate(batch):
        for i in range(len(sids)):
            for j in range(len(frames)):
                q = (b * max_exp + i) * 4 + j
                loss, draws = per_query[k]
                k += 1
                if loss is not None:
                    neg[q], pos[q], applied[q], losses[q] = draws[0], draws[1], True, loss.item()
    return neg, pos, applied, losses


# ----------------------------------------------------------------------------- tests


def test_matches_reference_over_many_steps():
    """35 steps of 2 samples (24 queries each, some padded, ~20% from another dataset): the bank fills
    past 512 and evicts; per step the applied flags, per-query losses, batch loss and bank match."""
    rnd_batches, rnd_draws = random.Random(0), random.Random(1)
    torch.manual_seed(0)
    ref = RefContrastive()
    bank = C.init_bank(D)
    update = jax.jit(C.bank_update)
    losses_fn = jax.jit(C.query_losses_from_draws)
    n_applied_steps = 0
    for step in range(35):
        batch, keys, valid = random_batch(rnd_batches)
        embeds = [torch.randn(len(s) * 4, D) for s, _ in batch]
        ref_loss, per_query = ref_step(ref, batch, embeds, rnd_draws)
        ours_e = jnp.asarray(_ours_from_ref_embeds(batch, embeds))
        bank = update(bank, ours_e, jnp.asarray(keys), jnp.asarray(valid))
        # the bank in age order equals the reference deque
        order = np.asarray(C.age_order(bank))[: int(bank.valid.sum())]
        want = np.stack([dt["seg_token"].numpy() for dt in ref.seg_token_bank.bank])
        np.testing.assert_array_equal(np.asarray(bank.embeds)[order], want)
        neg, pos, applied_ref, losses_ref = _ranks_from_ref(batch, per_query)
        per, applied = losses_fn(
            bank, ours_e, jnp.asarray(keys), jnp.asarray(valid), jnp.asarray(neg), jnp.asarray(pos)
        )
        np.testing.assert_array_equal(np.asarray(applied), applied_ref, err_msg=f"step {step}")
        np.testing.assert_allclose(np.asarray(per), losses_ref, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
        loss, used = C.reduce_query_losses(per, applied)
        assert bool(used) == (ref_loss is not None), step
        if ref_loss is not None:
            np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
            n_applied_steps += 1
        else:
            assert float(loss) == 0.0
    assert len(ref.seg_token_bank.bank) == 512 and bool(bank.valid.all())
    assert n_applied_steps >= 10  # the comparison exercised the loss, not just the skips


def test_gradient_matches_torch():
    """Gradient w.r.t. the batch's [SEG] embeddings: the banked copies are detached on both sides."""
    rnd = random.Random(3)
    torch.manual_seed(1)
    ref = RefContrastive()
    bank = C.init_bank(D)
    for _ in range(12):  # warm the bank past 128 negatives
        batch, keys, valid = random_batch(rnd)
        embeds = [torch.randn(len(s) * 4, D) for s, _ in batch]
        ref_step(ref, batch, embeds, random.Random(0))
        bank = C.bank_update(
            bank, jnp.asarray(_ours_from_ref_embeds(batch, embeds)), jnp.asarray(keys), jnp.asarray(valid)
        )
    # a batch with positives inside itself: va exps 0 and 1 (same object) at the same frames
    batch = [
        (["mevis_va_0", "mevis_va_1", "mevis_va_2"], FRAMES[2:6]),
        (["mevis_vb_0", "mevis_vb_3"], FRAMES[0:4]),
    ]
    keys, valid = [], []
    for sids, frames in batch:
        for i in range(3):
            for j in range(4):
                if i < len(sids):
                    _, vid, e = sids[i].split("_", 2)
                    keys.append([0, VIDEO_IDS[vid], int(e), _object_sets(vid)[e], FRAMES.index(frames[j])])
                else:
                    keys.append([0, 0, 0, 0, 0])
                valid.append(i < len(sids))
    keys, valid = jnp.asarray(keys, jnp.int32), jnp.asarray(valid)
    embeds = [torch.randn(len(s) * 4, D, requires_grad=True) for s, _ in batch]
    ref_loss, per_query = ref_step(ref, batch, embeds, random.Random(5))
    assert ref_loss is not None
    ref_loss.backward()
    neg, pos, _, _ = _ranks_from_ref(batch, per_query)

    def f(e):
        b = C.bank_update(bank, e, keys, valid)
        per, applied = C.query_losses_from_draws(b, e, keys, valid, jnp.asarray(neg), jnp.asarray(pos))
        return C.reduce_query_losses(per, applied)[0]

    e0 = jnp.asarray(_ours_from_ref_embeds(batch, [e.detach() for e in embeds]))  # padded rows are zeros
    loss, g = jax.jit(jax.value_and_grad(f))(e0)
    np.testing.assert_allclose(float(loss), ref_loss.item(), rtol=1e-5)
    g = np.asarray(g).reshape(2, 3, 4, D)
    assert np.isfinite(g).all() and (g[1, 2] == 0).all()  # padding: zero gradient, no NaN
    for b, e in enumerate(embeds):
        np.testing.assert_allclose(
            g[b, : len(batch[b][0])].reshape(-1, D), e.grad.numpy(), rtol=1e-4, atol=1e-6
        )


_update = jax.jit(C.bank_update)
_select = jax.jit(C.select_candidates)
_masks = jax.jit(C.candidate_masks)


def _bank_with(entries, d=4, n=160):
    """A bank holding ``entries`` [(key, valid)] (padded to n rows so one compilation serves all)."""
    entries = entries + [([0, 0, 0, 0, 0], False)] * (n - len(entries))
    keys = jnp.asarray([k for k, _ in entries], jnp.int32)
    emb = jnp.asarray(np.random.default_rng(0).normal(size=(len(entries), d)), jnp.float32)
    return _update(C.init_bank(d, 512), emb, keys, jnp.asarray([v for _, v in entries]))


def test_skip_rules():
    q = jnp.asarray([0, 1, 2, 0, 3], jnp.int32)  # video 1, exp 2, object set 0, frame 3
    pos = ([0, 1, 5, 0, 3], True)  # other exp, same set, same frame
    not_pos = [([0, 1, 5, 0, 4], True), ([0, 1, 6, 1, 3], True)]  # other frame / other object set: negatives
    own = [([0, 1, 2, 0, 3], True), ([0, 1, 2, 0, 1], True)]  # own expression at any frame: neither
    invalid = ([0, 2, 9, 0, 3], False)
    other_videos = [([0, 7 + i, 0, 0, 3], True) for i in range(126)]

    def run(entries):
        bank = _bank_with(entries)
        _, _, applied = _select(bank, q, jnp.zeros(128, jnp.int32), jnp.int32(0))
        p, n = _masks(bank, q)
        return bool(applied), int(p.sum()), int(n.sum())

    assert run([pos] + not_pos + own + [invalid] + other_videos) == (True, 1, 128)
    assert run([pos] + not_pos[:1] + own + [invalid] + other_videos) == (False, 1, 127)  # 127 negatives
    assert run(not_pos + own + other_videos + [([0, 99, 0, 0, 0], True)]) == (False, 0, 129)  # no positive
    # query_valid False -> not computed even with candidates
    bank = _bank_with([pos] + not_pos + other_videos)
    _, applied = jax.jit(C.query_losses)(
        bank, jnp.ones((1, 4)), q[None], jnp.array([False]), jax.random.key(0)
    )
    assert not bool(applied[0])


def test_reduction_needs_more_than_one_query():
    loss, used = C.reduce_query_losses(jnp.array([2.0, 5.0, 7.0]), jnp.array([False, True, False]))
    assert not bool(used) and float(loss) == 0.0  # GLUS.py: contrastive_loss_cnt > 1
    loss, used = C.reduce_query_losses(jnp.array([2.0, 5.0, 7.0]), jnp.array([True, True, False]))
    assert bool(used) and float(loss) == pytest.approx(0.1 * 3.5)


def test_random_draws_are_uniform_over_candidates():
    """With the rng version every drawn negative is a negative, uniformly over the 130 of them, and the
    positive is uniform over the 3 positives."""
    q = jnp.asarray([0, 1, 2, 0, 3], jnp.int32)
    entries = [([0, 1, 5 + i, 0, 3], True) for i in range(3)]
    entries += [([0, 10 + i, 0, 0, 3], True) for i in range(130)]
    entries += [([0, 1, 2, 0, j], True) for j in range(5)]  # own expression
    bank = _bank_with(entries)
    neg_ranks, pos_ranks = C.draw_ranks(jax.random.key(4), 200)
    pos_slot, neg_slots, applied = jax.jit(jax.vmap(C.select_candidates, (None, None, 0, 0)))(
        bank, q, neg_ranks, pos_ranks
    )
    assert bool(applied.all())
    neg_slots = np.asarray(neg_slots).ravel()
    assert set(neg_slots) <= set(range(3, 133))
    counts = Counter(neg_slots.tolist())
    n, p = neg_slots.size, 1 / 130
    assert all(abs(counts[s] - n * p) < 5 * np.sqrt(n * p * (1 - p)) for s in range(3, 133))
    pc = Counter(np.asarray(pos_slot).tolist())
    assert set(pc) == {0, 1, 2} and all(abs(pc[s] - 200 / 3) < 5 * np.sqrt(200 * 2 / 9) for s in range(3))


def test_fifo_wraps_and_age_order():
    d, size = 3, 8
    bank = C.init_bank(d, size)
    emb = jnp.arange(30 * d, dtype=jnp.float32).reshape(30, d)
    keys = jnp.zeros((30, 5), jnp.int32)
    written = []
    for lo, hi, valid in [(0, 6, [1, 0, 1, 1, 1, 0]), (6, 12, [1] * 6), (12, 18, [0, 1, 0, 0, 0, 1])]:
        bank = _update(bank, emb[lo:hi], keys[lo:hi], jnp.asarray(valid, bool))
        written += [i for i, v in zip(range(lo, hi), valid) if v]
        order = np.asarray(C.age_order(bank))[: int(bank.valid.sum())]
        np.testing.assert_array_equal(np.asarray(bank.embeds)[order], np.asarray(emb)[written[-size:]])
    with pytest.raises(ValueError, match="cannot append 9 entries"):
        C.bank_update(bank, emb[:9], keys[:9], jnp.ones(9, bool))


def test_update_and_loss_jits():
    rnd = random.Random(7)
    bank = C.init_bank(D)
    step = jax.jit(C.update_and_loss)
    used_any = False
    for s in range(20):
        _, keys, valid = random_batch(rnd)
        e = jnp.asarray(np.random.default_rng(s).normal(size=(len(keys), D)), jnp.float32)
        bank, loss, used = step(bank, e, jnp.asarray(keys), jnp.asarray(valid), jax.random.key(s))
        assert np.isfinite(float(loss))
        used_any |= bool(used)
    assert used_any
    a = step(bank, e, jnp.asarray(keys), jnp.asarray(valid), jax.random.key(1))[1]
    b = step(bank, e, jnp.asarray(keys), jnp.asarray(valid), jax.random.key(1))[1]
    assert float(a) == float(b)  # a pure function of the key
