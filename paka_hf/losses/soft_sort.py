r"""Differentiable sorting: a relaxed bitonic sorting network that returns a soft permutation matrix.

NeCo (Pariza et al., ICLR 2025) sorts each row of patch-to-reference similarities with the relaxed
sorting networks of Petersen et al. ("Monotonic differentiable sorting networks", ICLR 2022; the
``diffsort`` package, ``DiffSortNet('bitonic', n, steepness=s)`` with its default Cauchy relaxation).
This module computes the same thing (same network, same relaxation, same rule for lengths that are not
powers of two) without ``diffsort``'s dense 0/1 matrices: bitonic comparators pair wire ``i`` with ``i + span``,
so each layer is a reshape of the rows into ``(groups, 2, span)`` and element-wise arithmetic, ``O(n²)`` per
row for the permutation matrix instead of ``diffsort``'s ``O(n³)`` matrix products.

One comparator on wires ``a < b`` with values ``x_a, x_b`` and steepness ``s``:

.. math::

    \alpha = \tfrac{1}{\pi} \arctan\big(s\,(x_b - x_a)\big) + \tfrac12 \qquad (\approx P[x_a < x_b])

    \min = \alpha x_a + (1 - \alpha) x_b, \qquad \max = (1 - \alpha) x_a + \alpha x_b

The minimum goes to wire ``a`` in an ascending block and to ``b`` in a descending one. The columns of
the permutation matrix ``P`` (``(R, n, n)``, starting from the identity) are mixed the same way, so that
``x_sorted = x @ P`` (``P[r, i, j]``: weight of input ``i`` at sorted position ``j``). Every comparator
is a convex mix of two columns with weights summing to one in both directions, so ``P`` stays doubly
stochastic (rows and columns sum to 1) at every layer; as ``s → ∞`` it tends to the hard permutation.
The Cauchy relaxation's heavy tails keep every entry of ``P`` strictly positive in exact arithmetic,
which keeps ``log P`` finite for NeCo's cross-entropy.

Lengths ``n`` that are not a power of two: the network is built for ``2^k ≥ n`` wires; the first
``2^k − n`` wires are absent and every comparator that touches one is dropped (the real wire passes
through), as ``diffsort.networks.bitonic_network`` does. Here the absent wires are carried as padding and a
dropped comparator gets the weight that leaves both wires in place, so they never mix with the real ones.
The tests check that the network still sorts.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import nn

__all__ = ["bitonic_layers", "soft_sort"]


@cache
def bitonic_layers(
    n: int,
) -> tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]:
    """The bitonic network on ``n`` wires, one entry per layer (``k(k+1)/2`` layers, ``k = ⌈log₂ n⌉``).

    Each layer is ``(a, b, min_to, max_to, order)``: comparator ``c`` reads wires ``a[c] < b[c]`` and writes
    the soft minimum to ``min_to[c]`` and the maximum to ``max_to[c]``; ``order`` lists, for every output
    wire, its index in ``[minima..., maxima..., untouched wires...]`` (the untouched wires in ascending
    order), so a layer is one concatenation and one gather.

    Args:
        n: the number of wires.

    Returns:
        One ``(a, b, min_to, max_to, order)`` tuple of int tuples per layer; none for ``n = 1``.

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"a sorting network needs n >= 1 wires, got {n}")
    blocks = max(0, math.ceil(math.log2(n)))
    width = 2**blocks
    absent = width - n  # wires 0 .. absent-1 of the full network do not exist
    layers = []
    for block in range(blocks):
        for step in range(block + 1):
            span = 2 ** (block - step)
            a, b, min_to, max_to = [], [], [], []
            for start in range(0, width, 2 * span):
                for offset in range(span):
                    lo, hi = start + offset, start + offset + span
                    if lo < absent or hi < absent:
                        continue  # touches an absent wire: the real one (if any) passes through
                    descending = (lo // 2 ** (block + 1)) % 2 == 1
                    a.append(lo - absent)
                    b.append(hi - absent)
                    min_to.append((hi if descending else lo) - absent)
                    max_to.append((lo if descending else hi) - absent)
            touched = set(a) | set(b)
            untouched = [w for w in range(n) if w not in touched]
            source = min_to + max_to + untouched  # output wire of each entry of the concatenation
            order = [0] * n
            for position, wire in enumerate(source):
                order[wire] = position
            layers.append((tuple(a), tuple(b), tuple(min_to), tuple(max_to), tuple(order)))
    return tuple(layers)


@cache
def _layer_plans(n: int) -> tuple[tuple[int, torch.Tensor, torch.Tensor], ...]:
    """Per layer of the padded network (``2^k`` wires, the absent ones first): ``span``, and per comparator
    laid out as ``(groups, span)``: the sign of the comparison (−1 where the block is descending) and whether
    it is dropped (it touches an absent wire)."""
    blocks = max(0, math.ceil(math.log2(n)))
    width, absent = 2**blocks, 2**blocks - n
    plans = []
    for block in range(blocks):
        for step in range(block + 1):
            span = 2 ** (block - step)
            lo = torch.arange(width).view(width // (2 * span), 2, span)[
                :, 0
            ]  # (groups, span): wire a of each comparator
            sign = 1.0 - 2.0 * ((lo // 2 ** (block + 1)) % 2).float()
            dropped = lo < absent  # b = a + span >= a: a comparator touches an absent wire iff a is absent
            plans.append((span, sign, dropped))
    return tuple(plans)


def soft_sort(x: torch.Tensor, steepness: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Relaxed ascending sort of each row of ``x`` ``(R, n)``.

    Returns ``(sorted, perm)``: ``sorted`` ``(R, n)`` (the soft-sorted values, ``= x @ perm``) and ``perm``
    ``(R, n, n)``, doubly stochastic, ``perm[r, i, j]`` = weight of input ``i`` at position ``j``.
    Computed in ``x``'s dtype; differentiable in ``x``.

    Args:
        x: ``(R, n)`` rows to sort.
        steepness: the comparators' steepness (> 0); larger is closer to a hard sort.

    Returns:
        ``(sorted, perm)`` as above.

    Raises:
        ValueError: ``x`` is not 2-D, or ``steepness`` is not positive.
    """
    if x.ndim != 2:
        raise ValueError(f"soft_sort sorts the rows of a (R, n) tensor, got shape {tuple(x.shape)}")
    if not steepness > 0:
        raise ValueError(f"steepness must be > 0, got {steepness}")
    rows, n = x.shape
    width = 2 ** max(0, math.ceil(math.log2(n)))
    absent = width - n
    values = nn.functional.pad(x, (absent, 0))  # (R, W): absent wires first; their comparators are dropped
    # Rows of ``perm`` are inputs, columns positions; a layer mixes columns only, so the absent inputs' rows
    # (which never reach a real position) are left out from the start.
    perm = torch.eye(width, dtype=x.dtype, device=x.device)[absent:].expand(rows, n, width)
    for span, sign, dropped in _layer_plans(n):
        groups = width // (2 * span)
        pairs = values.view(rows, groups, 2, span)
        a, b = pairs[:, :, 0], pairs[:, :, 1]
        # keep = weight of each wire's own value in its output: α = P[a < b] in an ascending block, 1 − α in a
        # descending one (atan is odd), 1 for a dropped comparator (both wires pass through)
        keep = torch.atan(steepness * sign.to(x) * (b - a)) / math.pi + 0.5
        keep = torch.where(dropped.to(x.device), torch.ones_like(keep), keep)  # (R, groups, span)
        diff = a - b
        values = torch.stack((b + keep * diff, a - keep * diff), dim=2).view(rows, width)
        cols = perm.reshape(rows, n, groups, 2, span)  # columns = positions; mixed like the values
        ca, cb = cols[:, :, :, 0], cols[:, :, :, 1]
        k = keep[:, None]
        cdiff = ca - cb
        perm = torch.stack((cb + k * cdiff, ca - k * cdiff), dim=3).view(rows, n, width)
    return values[:, absent:], perm[:, :, absent:]
