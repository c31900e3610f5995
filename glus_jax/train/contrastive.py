"""GLUS's object contrastive loss with its [SEG]-token bank, as a fixed-size array state.

Ports ``utils/seg_token_bank.py`` (a FIFO deque of at most 512 detached [SEG] embeddings) and
``utils/contrastive_loss.py`` + the call site in ``model/GLUS.py: generate_masks``:

1. Every [SEG] embedding of the batch (one per sample, expression and query frame, in that order) is
   appended to the bank, detached; the bank keeps the newest 512. Only MeViS entries are stored.
2. Then, for each of those embeddings (the query), with q = (video, expression, object set, frame):
   - positives: bank entries of the same video and frame from *another* expression with the same object
     set (sorted obj_id lists equal);
   - negatives: every other entry except those of the query's own (video, expression), at any frame;
   - skipped when there is no positive or fewer than 128 negatives; otherwise one positive uniformly and
     128 negatives uniformly *with replacement* from the lists (in bank order, oldest first), and
     ``-log(e^{cos(q,p)/tau} / (sum_k e^{cos(q,n_k)/tau} + e^{cos(q,p)/tau}))``, tau = 0.07.
3. The batch loss is the mean over the queries that got a loss, times the weight 0.1, and is used only
   when *more than one* query got one (``contrastive_loss_cnt > 1`` in GLUS.py).

Keys are int32 rows ``[dataset, video, expression, object_set, frame]`` (:data:`KEY_*` index them):
any ints that are equal iff the reference's strings are (dataset name, video name, exp_id, sorted obj
ids, frame name). The reference only banks and queries MeViS: callers pass ``valid`` / ``query_valid``
False for other datasets. Everything is jittable: fixed shapes, no Python branching on data.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

KEY_DATASET, KEY_VIDEO, KEY_EXPRESSION, KEY_OBJECT_SET, KEY_FRAME = range(5)
NUM_KEY_FIELDS = 5

BANK_SIZE = 512
NUM_NEGATIVES = 128
TAU = 0.07
WEIGHT = 0.1  # train_ds.py --contrastive_loss_weight
_COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps


class SegTokenBank(NamedTuple):
    """Ring buffer of [SEG] embeddings.

    embeds [S, D] float32, keys [S, 5] int32, valid [S] bool, ptr [] int32 (next slot to write).
    Slots fill 0, 1, ... and then wrap, overwriting the oldest; so the entries in age order start at
    ``ptr`` when the bank is full and at 0 otherwise.
    """

    embeds: jax.Array
    keys: jax.Array
    valid: jax.Array
    ptr: jax.Array


def init_bank(dim: int, size: int = BANK_SIZE) -> SegTokenBank:
    """An empty bank for embeddings of width ``dim``."""
    return SegTokenBank(
        embeds=jnp.zeros((size, dim), jnp.float32),
        keys=jnp.zeros((size, NUM_KEY_FIELDS), jnp.int32),
        valid=jnp.zeros((size,), bool),
        ptr=jnp.zeros((), jnp.int32),
    )


def bank_update(bank: SegTokenBank, embeds: jax.Array, keys: jax.Array, valid: jax.Array) -> SegTokenBank:
    """Appends the valid rows of embeds [N, D] / keys [N, 5] in order (FIFO, oldest evicted).

    Embeddings are stored detached (``stop_gradient``), as the reference's ``.clone().detach()``.
    N must not exceed the bank size (static check).
    """
    size = bank.valid.shape[0]
    n = embeds.shape[0]
    if n > size:
        raise ValueError(f"cannot append {n} entries at once to a bank of {size}")
    valid = valid.astype(bool)
    offset = jnp.cumsum(valid.astype(jnp.int32)) - 1
    slot = jnp.where(valid, (bank.ptr + offset) % size, size)  # size = out of range: dropped
    e = jax.lax.stop_gradient(embeds).astype(bank.embeds.dtype)
    return SegTokenBank(
        embeds=bank.embeds.at[slot].set(e, mode="drop"),
        keys=bank.keys.at[slot].set(keys.astype(jnp.int32), mode="drop"),
        valid=bank.valid.at[slot].set(True, mode="drop"),
        ptr=(bank.ptr + jnp.sum(valid.astype(jnp.int32))) % size,
    )


def age_order(bank: SegTokenBank) -> jax.Array:
    """[S] slot indices from the oldest entry to the newest (invalid slots last when not full)."""
    size = bank.valid.shape[0]
    start = jnp.where(jnp.all(bank.valid), bank.ptr, 0)
    return (start + jnp.arange(size)) % size


def candidate_masks(bank: SegTokenBank, query_key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(positive [S], negative [S]) bank masks for one query key [5]."""
    k = bank.keys
    q = query_key
    same_video = (k[:, KEY_DATASET] == q[KEY_DATASET]) & (k[:, KEY_VIDEO] == q[KEY_VIDEO])
    same_exp = same_video & (k[:, KEY_EXPRESSION] == q[KEY_EXPRESSION])
    positive = (
        bank.valid
        & same_video
        & (k[:, KEY_FRAME] == q[KEY_FRAME])
        & (k[:, KEY_OBJECT_SET] == q[KEY_OBJECT_SET])
        & ~same_exp
    )
    negative = bank.valid & ~positive & ~same_exp
    return positive, negative


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    """cos(a[i], b) for a [N, D], b [D], each norm clamped at 1e-8 as torch does."""
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    # Normalise first, then dot (torch's order; keeps the value in [-1, 1]). sqrt(max(|x|^2, eps^2))
    # equals max(|x|, eps) but has a finite gradient at x = 0 (zero-padded queries).
    na = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=-1, keepdims=True), _COS_EPS**2))
    nb = jnp.sqrt(jnp.maximum(jnp.sum(b * b), _COS_EPS**2))
    return (a / na) @ (b / nb)


def _kth_in_order(mask_in_age_order: jax.Array, order: jax.Array, ranks: jax.Array) -> jax.Array:
    """Slots of the ranks-th True entries (0-based) of a mask listed in age order."""
    cum = jnp.cumsum(mask_in_age_order.astype(jnp.int32))
    # First position whose running count reaches rank + 1 (= the number of positions before it).
    pos = jnp.sum(cum < (ranks[..., None] + 1), axis=-1)
    return order[jnp.clip(pos, 0, order.shape[0] - 1)]


def select_candidates(
    bank: SegTokenBank,
    query_key: jax.Array,
    neg_ranks: jax.Array,
    pos_rank: jax.Array,
    num_negatives: int = NUM_NEGATIVES,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(pos_slot [], neg_slots [num_negatives], applied []) for one query key [5].

    ``neg_ranks`` [num_negatives] / ``pos_rank`` [] index the query's negatives / positives in bank age
    order (oldest first), i.e. the reference's ``negatives[random.randint(0, len - 1)]`` and
    ``random.choice(positives)``; ranks are taken modulo the list lengths. ``applied`` is False (and the
    slots meaningless) when there is no positive or fewer than ``num_negatives`` negatives.
    """
    order = age_order(bank)
    pos, neg = candidate_masks(bank, query_key)
    n_pos = jnp.sum(pos.astype(jnp.int32))
    n_neg = jnp.sum(neg.astype(jnp.int32))
    applied = (n_pos > 0) & (n_neg >= num_negatives)
    neg_slots = _kth_in_order(neg[order], order, neg_ranks % jnp.maximum(n_neg, 1))
    pos_slot = _kth_in_order(pos[order], order, pos_rank % jnp.maximum(n_pos, 1))
    return pos_slot, neg_slots, applied


def draw_ranks(
    rng: jax.Array, num_queries: int, num_negatives: int = NUM_NEGATIVES
) -> tuple[jax.Array, jax.Array]:
    """Uniform (neg_ranks [Q, num_negatives], pos_ranks [Q]) for :func:`select_candidates`: ints below
    2^30, so that modulo a list length (<= bank size) the bias is below 2^-20."""
    k_neg, k_pos = jax.random.split(rng)
    neg_ranks = jax.random.randint(k_neg, (num_queries, num_negatives), 0, 1 << 30)
    pos_ranks = jax.random.randint(k_pos, (num_queries,), 0, 1 << 30)
    return neg_ranks, pos_ranks


def query_losses_from_draws(
    bank: SegTokenBank,
    query_embeds: jax.Array,
    query_keys: jax.Array,
    query_valid: jax.Array,
    neg_ranks: jax.Array,
    pos_ranks: jax.Array,
    *,
    tau: float = TAU,
    num_negatives: int = NUM_NEGATIVES,
) -> tuple[jax.Array, jax.Array]:
    """Per-query losses [Q] (0 where not computed) and whether each was computed [Q].

    query_embeds [Q, D], query_keys [Q, 5], query_valid [Q]; neg_ranks [Q, num_negatives], pos_ranks [Q]
    as in :func:`select_candidates`.
    """

    def one(e, key, ok, nr, pr):
        pos_slot, neg_slots, applied = select_candidates(bank, key, nr, pr, num_negatives)
        applied = applied & ok
        sim = _cosine(bank.embeds[jnp.concatenate([pos_slot[None], neg_slots])], e) / tau
        # -log(e^p / (sum e^n + e^p)) = logsumexp([p, n...]) - p
        loss = jax.nn.logsumexp(sim) - sim[0]
        return jnp.where(applied, loss, 0.0), applied

    return jax.vmap(one)(query_embeds, query_keys, query_valid.astype(bool), neg_ranks, pos_ranks)


def query_losses(
    bank: SegTokenBank,
    query_embeds: jax.Array,
    query_keys: jax.Array,
    query_valid: jax.Array,
    rng: jax.Array,
    *,
    tau: float = TAU,
    num_negatives: int = NUM_NEGATIVES,
) -> tuple[jax.Array, jax.Array]:
    """:func:`query_losses_from_draws` with uniform draws from ``rng`` (a jax PRNG key)."""
    neg_ranks, pos_ranks = draw_ranks(rng, query_keys.shape[0], num_negatives)
    return query_losses_from_draws(
        bank,
        query_embeds,
        query_keys,
        query_valid,
        neg_ranks,
        pos_ranks,
        tau=tau,
        num_negatives=num_negatives,
    )


def reduce_query_losses(
    losses: jax.Array, applied: jax.Array, weight: float = WEIGHT
) -> tuple[jax.Array, jax.Array]:
    """GLUS.py's batch reduction: ``weight * mean`` over computed queries, used only when more than one
    query was computed. Returns (loss, applied); loss is 0 when not applied."""
    cnt = jnp.sum(applied.astype(jnp.int32))
    use = cnt > 1
    loss = weight * jnp.sum(jnp.where(applied, losses, 0.0)) / jnp.maximum(cnt, 1)
    return jnp.where(use, loss, 0.0), use


def contrastive_loss(
    bank: SegTokenBank,
    query_embeds: jax.Array,
    query_keys: jax.Array,
    rng: jax.Array,
    query_valid: jax.Array | None = None,
    *,
    tau: float = TAU,
    weight: float = WEIGHT,
    num_negatives: int = NUM_NEGATIVES,
) -> tuple[jax.Array, jax.Array]:
    """(weighted loss [], was_applied []) for the queries [Q, D] / keys [Q, 5] against ``bank``.

    Call it with the bank *after* :func:`bank_update` with the same batch, as GLUS does (see
    :func:`update_and_loss`)."""
    if query_valid is None:
        query_valid = jnp.ones(query_keys.shape[:1], bool)
    losses, applied = query_losses(
        bank, query_embeds, query_keys, query_valid, rng, tau=tau, num_negatives=num_negatives
    )
    return reduce_query_losses(losses, applied, weight)


def update_and_loss(
    bank: SegTokenBank,
    embeds: jax.Array,
    keys: jax.Array,
    valid: jax.Array,
    rng: jax.Array,
    *,
    tau: float = TAU,
    weight: float = WEIGHT,
    num_negatives: int = NUM_NEGATIVES,
) -> tuple[SegTokenBank, jax.Array, jax.Array]:
    """One training step's contrastive part, in the reference's order: append the batch's [SEG]
    embeddings [N, D] (flattened sample, expression, query frame), then score each of them.
    Returns (new bank, weighted loss, applied)."""
    new_bank = bank_update(bank, embeds, keys, valid)
    loss, applied = contrastive_loss(
        new_bank, embeds, keys, rng, valid, tau=tau, weight=weight, num_negatives=num_negatives
    )
    return new_bank, loss, applied
