"""Exact top-k along the last axis, faster than ``torch.topk`` on CPU for SAE-sized rows.

``torch.topk`` on CPU handles each row with a partial sort of (value, index) pairs, which for
a (4096 x 1024) pre-activation matrix costs more than the encoder matmul itself. Two cheaper
passes give the same answer:

1. split every row into ``g`` disjoint groups of ``c`` strided elements and take each group's
   maximum (an elementwise max over ``c`` contiguous slices: vectorised, memory speed);
2. keep the ``k`` groups with the largest maxima and take the top-k of their ``c * k``
   elements.

Why it is exact: let b be the k-th largest group maximum. The k kept maxima are k distinct
elements >= b, so the row's k-th largest value v >= b; an element outside the kept groups is
<= its group's maximum <= b <= v. So every element > v lies in a kept group, and the kept
groups hold at least k elements >= v: the top-k values (as a multiset) are the same. Only
the choice among exactly tied values may differ from ``torch.topk``. NaN propagates through
the group maxima, so NaN rows behave as under ``torch.topk`` (NaN counts as largest).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _group_size(n: int, k: int) -> int:
    """Group size c (a power of two dividing n) near sqrt(n / k), which balances the two
    top-k passes (over n / c group maxima and over c * k candidates); 0 means don't bother."""
    if n < 8 * k:
        return 0
    c = 1 << max(1, round(math.log2(math.sqrt(n / k))))
    while c > 1 and n % c:
        c //= 2
    return c if c > 1 and n // c >= k else 0


def topk_last(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) of the k largest entries along the last axis, in no particular order."""
    n = x.shape[-1]
    c = _group_size(n, k) if x.device.type == "cpu" else 0  # CUDA's topk is already fast
    if c == 0 or x.numel() == 0:
        return x.topk(k, dim=-1, sorted=False)
    lead = x.shape[:-1]
    g = n // c
    rows = x.reshape(-1, c, g)  # group j of a row = its elements j, j + g, j + 2g, ...
    R = rows.shape[0]
    groups = rows.amax(dim=1).topk(k, dim=-1, sorted=False).indices  # (R, k)
    cand = rows.gather(2, groups.unsqueeze(1).expand(R, c, k)).reshape(R, c * k)
    values, pos = cand.topk(k, dim=-1, sorted=False)
    # candidate position p = t * k + s  <->  element t * g + groups[s]
    t = torch.div(pos, k, rounding_mode="floor")
    idx = t * g + groups.gather(1, pos - t * k)
    return values.reshape(*lead, k), idx.reshape(*lead, k)
