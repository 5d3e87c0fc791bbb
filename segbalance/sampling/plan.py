"""SamplingPlan: the row indices of every epoch, as a pure function of (rows, weights, seed, epoch).

How an epoch is built (see docs/ARCHITECTURE.md, "Sampling"):

* **Counts.** ``exact`` mode: epoch e holds exactly ``quota_g`` samples of group g, the
  largest-remainder rounding of ``p_g * E``. ``random`` mode: the counts of epoch e are one
  multinomial draw ``Multinomial(E, p)`` seeded by ``(seed, e)``; together with the random
  order below this is the same distribution as E independent draws of a group.
* **Which images.** Each group g walks a never-ending stream of its images: permutation 0,
  then permutation 1, ... A group's images are all shown once before any is shown again, so
  repeats are spread evenly. Permutation k of group g is the argsort of 64-bit keys: draws
  ``g * 2^96 + k*n_g ..`` of one PCG64 stream seeded by ``(seed, 0)``. PCG64 jumps ahead
  in O(1), so the cursor of epoch e (``e * quota_g``, or the sum of earlier multinomial
  counts) is reached without replaying anything.
* **Order.** The positions of the epoch are a uniformly random interleaving of the groups
  seeded by ``(seed, e)``; inside it each group keeps its stream order.

* **Per-epoch targets.** :meth:`SamplingPlan.set_target` gives epoch e its own mix p_e
  (adaptive balancing); its counts come from p_e as above, and each group's cursor is the
  sum of the earlier epochs' counts, so the no-repeat-before-all-shown streams carry on
  across changing mixes. Epochs without a target use the plan's own mix; a plan with no
  targets builds exactly the epochs it built before targets existed.

So ``plan.epoch(7)`` is the same whether epochs 0..6 were built or not (resuming), and
costs O(E + sizes of the touched groups) time with vectorised numpy. Plans are identical
across machines for one numpy version; numpy does not promise that ``shuffle``,
``multinomial`` and ``multivariate_hypergeometric`` draw the same across versions, so
resume a run with the numpy it started with.

Example:
    >>> plan = SamplingPlan(np.array([0, 0, 0, 1]), ["a", "b"], balance="uniform")
    >>> plan.quotas
    {'a': 2, 'b': 2}
    >>> sorted(plan.counts(0).values())
    [2, 2]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from segbalance.errors import UserError
from segbalance.sampling.report import REPEAT_WARNING, plan_report, shard_positions
from segbalance.sampling.weights import SamplingWarning, group_probabilities

__all__ = ["REPEAT_WARNING", "SamplingPlan", "largest_remainder", "training_epoch_length"]

# Seed domains: the streams of images, the order inside an epoch, random-mode counts.
_STREAM, _ORDER, _COUNTS = 0, 1, 2
# Positions are interleaved chunk by chunk so the shuffles stay in the CPU cache.
_CHUNK = 1 << 18
# Images of one group are permuted in pieces of at most this many keys (bounds memory).
_PIECE = 1 << 20
# Group g's random keys start at draw g << _GROUP_SHIFT of one PCG64 stream (2^128 long),
# so the streams of up to 2^32 groups never overlap.
_GROUP_SHIFT = 96
# multivariate_hypergeometric (the interleave) needs fewer than 10^9 items.
_MAX_EPOCH = 10**9


def largest_remainder(p: np.ndarray, total: int) -> np.ndarray:
    """Integers summing to ``total`` closest to ``p * total`` (ties: lower index first).

    Example:
        >>> largest_remainder(np.array([0.5, 0.3, 0.2]), 4).tolist()
        [2, 1, 1]
    """
    exact = np.asarray(p, dtype=np.float64) * total
    base = np.floor(exact).astype(np.int64)
    short = int(total - base.sum())
    if short > 0:
        order = np.argsort(-(exact - base), kind="stable")
        base[order[:short]] += 1
    return base


def training_epoch_length(num_rows: int, epoch_length: int | None, batch_size: int) -> int:
    """Samples per training epoch: whole batches, ``ceil((epoch_length or rows) / B) * B``.

    Example:
        >>> training_epoch_length(1105, None, 16)
        1120
    """
    wanted = epoch_length or num_rows
    return -(-wanted // batch_size) * batch_size


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))


def _permutations(keys: np.ndarray, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Row-wise ``argsort(keys)[..., lo:hi]`` of random uint64 keys (rows = permutations).

    The row index is packed into the low bits of each key, so a plain (SIMD) sort does
    the work of an argsort and ties cannot make the result depend on the sort algorithm.
    A short slice of a long row is found by partitioning: O(n) instead of O(n log n).

    Example:
        >>> _permutations(np.array([[30, 10, 20]], dtype=np.uint64) << np.uint64(8)).tolist()
        [[1, 2, 0]]
    """
    n = keys.shape[-1]
    hi = n if hi is None else hi
    mask = np.uint64((1 << max(1, (n - 1).bit_length())) - 1)
    keys &= ~mask
    keys |= np.arange(n, dtype=np.uint64)
    if keys.ndim == 1 and n >= 256 and 4 * (hi - lo) < n:
        keys.partition(sorted({lo, hi - 1}))
        keys = keys[lo:hi]
        keys.sort()
    else:
        keys.sort(axis=-1)
        keys = keys[..., lo:hi]
    keys &= mask
    return keys.view(np.int64)


class _Keys:
    """Raw 64-bit draws at any index of the stream PCG64(seed, _STREAM): jumps, no replay."""

    def __init__(self, seed: int) -> None:
        self._bitgen = np.random.PCG64(np.random.SeedSequence((seed, _STREAM)))
        self._at = 0

    def take(self, start: int, count: int) -> np.ndarray:
        """Draws ``start .. start + count`` of the stream."""
        if start != self._at:  # the generator is periodic (2^128), so any jump is forward
            self._bitgen.advance((start - self._at) % (1 << 128))
        self._at = start + count
        return self._bitgen.random_raw(count)


class SamplingPlan:
    """Per-epoch row indices for group-balanced training.

    Args:
        group_ids: group index of each row (``Manifest.group_ids`` of the train split).
        group_names: name of each group index (``Manifest.groups``).
        balance: strategy, see :mod:`segbalance.sampling.weights`.
        weights: optional per-group multipliers by group name.
        mode: ``exact`` (fixed quotas per epoch) or ``random`` (independent draws).
        seed: non-negative integer; fixes every epoch.
        epoch_length: samples per epoch E; default: the number of rows.

    Attributes:
        target: probability of each group. quotas: samples per epoch in exact mode (the
        rounded expectation in random mode). epoch_length: E. sizes: images per group.
    """

    def __init__(
        self,
        group_ids: Sequence[int] | np.ndarray,
        group_names: Sequence[str],
        balance: str = "uniform",
        weights: Mapping[str, float] | None = None,
        mode: Literal["exact", "random"] | str = "exact",
        seed: int = 0,
        epoch_length: int | None = None,
    ) -> None:
        ids = np.asarray(group_ids)
        names = [str(g) for g in group_names]
        if ids.ndim != 1 or ids.size == 0:
            raise UserError("a sampling plan needs at least one row (the split is empty?)")
        if not np.issubdtype(ids.dtype, np.integer):
            raise UserError(f"group ids must be integers, got dtype {ids.dtype}")
        if len(set(names)) != len(names):
            raise UserError(f"group names must be unique, got {names}")
        if ids.min() < 0 or ids.max() >= len(names):
            raise UserError(f"group ids must lie in 0..{len(names) - 1} ({len(names)} groups)")
        if mode not in ("exact", "random"):
            raise UserError(f"sampling mode '{mode}' is unknown; valid: exact, random")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise UserError(f"seed must be an integer >= 0, got {seed!r}")
        if epoch_length is not None and (
            not isinstance(epoch_length, int | np.integer) or epoch_length < 1
        ):
            raise UserError(f"epoch_length must be a positive integer, got {epoch_length!r}")
        if int(epoch_length or ids.size) >= _MAX_EPOCH:  # numpy's hypergeometric limit
            raise UserError(f"epoch_length must be below {_MAX_EPOCH:,}; use shorter epochs")
        self.group_names = names
        self.balance, self.mode, self.seed = balance, str(mode), int(seed)
        self.weights = dict(weights or {})
        self.num_rows = int(ids.size)
        self.epoch_length = int(epoch_length or ids.size)
        self._n = np.bincount(ids, minlength=len(names)).astype(np.int64)
        # Rows of group g are _rows[_start[g]:_start[g + 1]], in row order.
        # int16 ids make the stable sort a radix sort (10x faster on millions of rows).
        small = ids.astype(np.int16) if len(names) <= 2**15 else ids
        self._rows = np.argsort(small, kind="stable").astype(np.int64, copy=False)
        self._start = np.concatenate([[0], np.cumsum(self._n)])
        self.sizes = dict(zip(names, self._n.tolist(), strict=True))
        self.target = group_probabilities(self.sizes, balance, weights)
        self._p = np.array([self.target[g] for g in names])
        self._quota = largest_remainder(self._p, self.epoch_length)
        self.quotas = dict(zip(names, self._quota.tolist(), strict=True))
        self._cum: tuple[int, np.ndarray] = (0, np.zeros(len(names), np.int64))
        self._cache: tuple[int, np.ndarray] | None = None
        # epoch -> (its probabilities, its exact-mode quotas); absent: the plan's own mix.
        self._targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        starved = [
            g for g, p, q in zip(names, self._p, self._quota, strict=True) if p > 0 and q == 0
        ]
        if starved and self.mode == "exact":
            warnings.warn(
                f"epoch length {self.epoch_length} is too short to give {len(starved)} "
                f"group(s) a sample per epoch ({', '.join(starved[:10])}); raise epoch_length",
                SamplingWarning,
                stacklevel=2,
            )

    # ---------------------------------------------------------------------------- targets
    def set_target(
        self, e: int, target: Mapping[str, float] | Sequence[float] | np.ndarray
    ) -> None:
        """Sample epoch e from the mix ``target`` (by group name or in group order).

        Raises:
            UserError: a wrong length, a negative or non-finite value, no mass, or mass on a
                group without images.
        """
        e = self._check_epoch(e)
        if isinstance(target, Mapping):
            target = [float(target.get(g, 0.0)) for g in self.group_names]
        p = np.asarray(target, dtype=np.float64)
        if p.shape != self._p.shape or not np.isfinite(p).all() or (p < 0).any():
            raise UserError(f"epoch {e}: a target needs {len(self._p)} finite values >= 0")
        if not p.sum() > 0 or (p[self._n == 0] > 0).any():
            raise UserError(f"epoch {e}: a target must put its mass on groups with images")
        p = p / p.sum()
        self._targets[e] = (p, largest_remainder(p, self.epoch_length))
        # Epoch e and every later cursor may change: forget what was built from them.
        if self._cum[0] > e:
            self._cum = (0, np.zeros_like(self._cum[1]))
        if self._cache is not None and self._cache[0] >= e:
            self._cache = None

    def target_of(self, e: int) -> dict[str, float]:
        """The mix epoch e samples from (its target, else the plan's own)."""
        p = self._targets.get(self._check_epoch(e), (self._p, self._quota))[0]
        return dict(zip(self.group_names, p.tolist(), strict=True))

    # ----------------------------------------------------------------------------- counts
    def _counts(self, e: int) -> np.ndarray:
        """Samples of each group in epoch e."""
        p, quota = self._targets.get(e, (self._p, self._quota))
        if self.mode == "exact":
            return quota.copy()
        return _rng(self.seed, _COUNTS, e).multinomial(self.epoch_length, p)

    def _offsets(self, e: int) -> np.ndarray:
        """Stream position of each group at the start of epoch e (samples used before)."""
        if self.mode == "exact" and not any(prev < e for prev in self._targets):
            return self._quota * e  # closed form while every earlier epoch has the base mix
        done, cum = self._cum
        if done > e:  # asked for an earlier epoch: recount from 0 (counts only, O(G) each)
            done, cum = 0, np.zeros_like(cum)
        cum = cum.copy()
        for prev in range(done, e):
            cum += self._counts(prev)
        self._cum = (e, cum)
        return cum

    def counts(self, e: int) -> dict[str, int]:
        """Realised samples per group in epoch e (what :meth:`epoch` holds)."""
        return dict(zip(self.group_names, self._counts(self._check_epoch(e)).tolist(), strict=True))

    @staticmethod
    def _check_epoch(e: int) -> int:
        if isinstance(e, bool) or not isinstance(e, int | np.integer) or e < 0:
            raise UserError(f"epoch must be an integer >= 0, got {e!r}")
        return int(e)

    # ----------------------------------------------------------------------------- epochs
    def _stream(self, keys: _Keys, g: int, begin: int, end: int) -> np.ndarray:
        """Rows at positions begin..end of group g's never-ending stream of permutations.

        Permutation k is the argsort of raw draws ``k*n .. (k+1)*n`` of group g's part of
        the PCG64 stream, reached with ``advance`` (no replay). A permutation only partly
        used is found by partitioning, so a big group with a small quota costs O(n).
        """
        n = int(self._n[g])
        first, last = begin // n, (end - 1) // n
        at = (g << _GROUP_SHIFT) + first * n  # draw index of permutation `first`
        parts = []
        k, per_piece = first, max(1, _PIECE // n)
        while k <= last:  # pieces of whole permutations, trimmed to begin..end
            m = min(per_piece, last + 1 - k)
            lo, hi = max(begin - k * n, 0), min(end - k * n, m * n)
            block = keys.take(at, m * n)
            if m == 1:
                parts.append(_permutations(block, lo, hi))
            else:
                parts.append(_permutations(block.reshape(m, n)).ravel()[lo:hi])
            k, at = k + m, at + m * n
        rows = self._rows[self._start[g] : self._start[g + 1]]
        return rows[parts[0] if len(parts) == 1 else np.concatenate(parts)]

    def epoch(self, e: int) -> np.ndarray:
        """Row indices (into the rows given) of epoch e, length ``epoch_length``.

        Example:
            >>> plan = SamplingPlan([0, 1, 1, 1], ["a", "b"], seed=3)
            >>> np.bincount(np.asarray([0, 1, 1, 1])[plan.epoch(5)]).tolist()
            [2, 2]
        """
        e = self._check_epoch(e)
        if self._cache is not None and self._cache[0] == e:
            return self._cache[1]
        counts, offsets = self._counts(e), self._offsets(e)
        active = np.flatnonzero(counts)
        # streams holds each group's samples of this epoch, group after group.
        streams = np.empty(self.epoch_length, dtype=np.int64)
        seg = np.concatenate([[0], np.cumsum(counts)])
        keys = _Keys(self.seed)
        for g in active:
            begin = int(offsets[g])
            streams[seg[g] : seg[g + 1]] = self._stream(keys, int(g), begin, begin + int(counts[g]))
        out = self._interleave(counts, seg, streams, _rng(self.seed, _ORDER, e))
        out.flags.writeable = False
        self._cache = (e, out)
        return out

    def _interleave(
        self, counts: np.ndarray, seg: np.ndarray, streams: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        """Uniformly random order of the groups, each group keeping its stream order.

        Chunk c takes a multivariate-hypergeometric share of what is left of every group
        (exactly the law of a full shuffle), shuffled inside the chunk.
        """
        out = np.empty(self.epoch_length, dtype=np.int64)
        left = counts.copy()
        used = np.zeros_like(counts)
        label_type = np.int16 if len(counts) < 2**15 else np.int32
        labels_all = np.arange(len(counts), dtype=label_type)
        for lo in range(0, self.epoch_length, _CHUNK):
            size = min(_CHUNK, self.epoch_length - lo)
            take = (
                left.copy()
                if size == left.sum()
                else rng.multivariate_hypergeometric(left, size, method="marginals")
            )
            labels = np.repeat(labels_all, take)
            rng.shuffle(labels)
            where = np.argsort(labels, kind="stable")  # positions grouped by group, in order
            first = np.cumsum(take) - take
            src = np.repeat(seg[:-1] + used - first, take) + np.arange(size)
            out[lo : lo + size][where] = streams[src]
            used += take
            left -= take
        return out

    def shard(
        self, e: int, global_batch_size: int, num_replicas: int, replica_id: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """This replica's share of epoch e: global positions and their row indices.

        Inside each global batch of B positions replica r reads
        ``np.array_split(batch_positions, R)[r]``, so the replicas together read every
        position once and each global batch keeps the planned mix.

        Example:
            >>> plan = SamplingPlan([0, 0, 1, 1], ["a", "b"])
            >>> plan.shard(0, 4, 2, 1)[0].tolist()
            [2, 3]
        """
        positions = shard_positions(self.epoch_length, global_batch_size, num_replicas, replica_id)
        return positions, self.epoch(e)[positions]

    # ----------------------------------------------------------------------------- report
    def report(self, epochs: int | Sequence[int]) -> dict[str, Any]:
        """The realised mix of the given epochs (an int n means epochs 0..n-1), JSON-able.

        Per group: images, target probability, samples per epoch, mean showings of each
        image per epoch and ``repeat_warning`` when that exceeds :data:`REPEAT_WARNING`.
        """
        return plan_report(self, epochs)

    def steps(self, batch_size: int) -> int:
        """Batches per epoch: ``ceil(epoch_length / batch_size)``."""
        return math.ceil(self.epoch_length / batch_size)
