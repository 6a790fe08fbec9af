"""Differentiable sorting: a relaxed bitonic sorting network that returns a soft permutation matrix.

NeCo (Pariza et al., ICLR 2025) sorts each row of patch-to-reference similarities with the relaxed
sorting networks of Petersen et al. ("Monotonic differentiable sorting networks", ICLR 2022; the
``diffsort`` package, ``DiffSortNet('bitonic', n, steepness=s)`` with its default Cauchy relaxation).
This module computes the same thing (same network, same relaxation, same padding rule for lengths that
are not powers of two) with index gathers instead of ``diffsort``'s dense 0/1 matrices: a layer costs
``O(n²)`` per row for the permutation matrix instead of ``O(n³)``.

One comparator on wires ``a < b`` with values ``x_a, x_b`` and steepness ``s``:

.. math::

    \\alpha = \\tfrac{1}{\\pi} \\arctan\\big(s\\,(x_b - x_a)\\big) + \\tfrac12 \\qquad (\\approx P[x_a < x_b])

    \\min = \\alpha x_a + (1 - \\alpha) x_b, \\qquad \\max = (1 - \\alpha) x_a + \\alpha x_b

The minimum goes to wire ``a`` in an ascending block and to ``b`` in a descending one. The columns of
the permutation matrix ``P`` (``(R, n, n)``, starting from the identity) are mixed the same way, so that
``x_sorted = x @ P`` (``P[r, i, j]``: weight of input ``i`` at sorted position ``j``). Every comparator
is a convex mix of two columns with weights summing to one in both directions, so ``P`` stays doubly
stochastic (rows and columns sum to 1) at every layer; as ``s → ∞`` it tends to the hard permutation.
The Cauchy relaxation's heavy tails keep every entry of ``P`` strictly positive in exact arithmetic,
which keeps ``log P`` finite for NeCo's cross-entropy.

Lengths ``n`` that are not a power of two: the network is built for ``2^k ≥ n`` wires; the first
``2^k − n`` wires are absent and every comparator that touches one is dropped (the real wire passes
through), as ``diffsort.networks.bitonic_network`` does. The tests check that this still sorts.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = ["bitonic_layers", "soft_sort"]


@lru_cache(maxsize=None)
def bitonic_layers(n: int) -> tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]:
    """The bitonic network on ``n`` wires, one entry per layer (``k(k+1)/2`` layers, ``k = ⌈log₂ n⌉``).

    Each layer is ``(a, b, min_to, max_to, order)``: comparator ``c`` reads wires ``a[c] < b[c]`` and writes
    the soft minimum to ``min_to[c]`` and the maximum to ``max_to[c]``; ``order`` lists, for every output
    wire, its index in ``[minima..., maxima..., untouched wires...]`` (the untouched wires in ascending
    order), so a layer is one concatenation and one gather.
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


@lru_cache(maxsize=64)
def _layer_indices(n: int, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], ...]:
    out = []
    for a, b, _, _, order in bitonic_layers(n):
        untouched = sorted(set(range(n)) - set(a) - set(b))
        out.append(tuple(torch.tensor(v, dtype=torch.long, device=device) for v in (a, b, untouched, order)))
    return tuple(out)


def soft_sort(x: torch.Tensor, steepness: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Relaxed ascending sort of each row of ``x`` ``(R, n)``.

    Returns ``(sorted, perm)``: ``sorted`` ``(R, n)`` (the soft-sorted values, ``= x @ perm``) and ``perm``
    ``(R, n, n)``, doubly stochastic, ``perm[r, i, j]`` = weight of input ``i`` at position ``j``.
    Computed in ``x``'s dtype; differentiable in ``x``.
    """
    if x.ndim != 2:
        raise ValueError(f"soft_sort sorts the rows of a (R, n) tensor, got shape {tuple(x.shape)}")
    if not steepness > 0:
        raise ValueError(f"steepness must be > 0, got {steepness}")
    rows, n = x.shape
    perm = torch.eye(n, dtype=x.dtype, device=x.device).expand(rows, n, n)
    for a, b, untouched, order in _layer_indices(n, x.device):
        xa, xb = x[:, a], x[:, b]
        alpha = torch.atan(steepness * (xb - xa)) / math.pi + 0.5  # (R, n_comparators)
        beta = 1.0 - alpha
        x = torch.cat((alpha * xa + beta * xb, beta * xa + alpha * xb, x[:, untouched]), dim=1)[:, order]
        pa, pb = perm[:, :, a], perm[:, :, b]
        al, be = alpha[:, None, :], beta[:, None, :]
        perm = torch.cat((al * pa + be * pb, be * pa + al * pb, perm[:, :, untouched]), dim=2)[:, :, order]
    return x, perm
