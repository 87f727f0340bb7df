"""Task-oriented reduction of vision tokens: merge an encoder output of n tokens into k before it
crosses a link (docs/planner.md, "Token reduction").

Two methods, both written here from their published descriptions:

- `tome`: bipartite soft matching (Bolya et al., "Token Merging", 2023). The tokens are split
  alternately into sets A and B; every token of A is matched to its most similar token of B (cosine
  of the features); the r best-matched A tokens are merged into their partners. Repeated with
  r <= |A| / 2 per round (the matching is redone on the merged tokens) until k tokens remain.
- `dpc`: density-peak clustering with k nearest neighbours (Rodriguez and Laio 2014; DPC-kNN as in
  TCFormer and TeleAI's TOFC). Each token's density is exp(-mean squared distance to its K nearest
  neighbours), delta is its distance to the nearest denser token; the k tokens with the largest
  density * delta are cluster centres and every token joins its nearest centre.

A merged token is the size-weighted mean of the tokens it absorbs, and its size is their sum, so
sum(size) and sum(size * x) are preserved. The decoder's cross-attention then sees each merged token
with "proportional attention": log(size) is added to its attention logits, so a token that stands
for s originals weighs as much as those s did when they were equal (ToMe's rule). The first
`protect` tokens (the ViT's CLS token) are never merged.

On the wire a reduced encoder output is one float tensor [B, k, D + 1]: the k tokens with log(size)
as an extra last channel (`pack` / `unpack`). Pure torch, deterministic (ties break by index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

METHODS = ("tome", "dpc")
DPC_NEIGHBOURS = 5


@dataclass(frozen=True)
class Reduction:
    """One reduction option: a method and the number of tokens kept (protected ones included)."""

    method: str
    keep: int

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"reduction: unknown method {self.method!r} (known: {', '.join(METHODS)})")
        if not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"reduction: keep must be a whole number >= 1, got {self.keep!r}")

    @property
    def label(self) -> str:
        return f"{self.method}-{self.keep}"

    @staticmethod
    def parse(text: str) -> Reduction:
        """'dpc-24' -> Reduction('dpc', 24)."""
        method, _, keep = text.rpartition("-")
        if not method or not keep.isdigit():
            raise ValueError(f"reduction: {text!r} is not METHOD-KEEP (for example dpc-24)")
        return Reduction(method, int(keep))


def _check(x: torch.Tensor, sizes: torch.Tensor | None, keep: int, protect: int) -> torch.Tensor:
    if x.dim() != 3 or not x.is_floating_point():
        raise ValueError(f"token merge: expected float tokens [batch, n, dim], got {tuple(x.shape)} {x.dtype}")
    n = x.shape[1]
    if not 0 <= protect < n:
        raise ValueError(f"token merge: protect must be in 0..{n - 1}, got {protect}")
    if not protect < keep <= n:
        raise ValueError(f"token merge: keep must be in {protect + 1}..{n}, got {keep}")
    if sizes is None:
        return torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    if sizes.shape != x.shape[:2]:
        raise ValueError(f"token merge: sizes {tuple(sizes.shape)} do not match tokens {tuple(x.shape[:2])}")
    return sizes.to(x.dtype)


def _merge_groups(x: torch.Tensor, sizes: torch.Tensor, group: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted means of x [n, d] over group ids [n] in 0..k-1 -> ([k, d], [k])."""
    w = sizes.unsqueeze(-1)
    mass = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, group, x * w)
    size = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, group, sizes)
    return mass / size.unsqueeze(-1), size


def _tome_one(x: torch.Tensor, sizes: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite soft matching of one row's tokens x [n, d] (none protected) down to `keep`."""
    order = torch.arange(x.shape[0], device=x.device)     # each token's original first position
    while x.shape[0] > keep:
        n = x.shape[0]
        a_idx, b_idx = torch.arange(0, n, 2, device=x.device), torch.arange(1, n, 2, device=x.device)
        # at most half of A per round, so only the closest pairs merge before the matching is redone
        r = min(n - keep, max(1, len(a_idx) // 2), len(b_idx))
        xn = torch.nn.functional.normalize(x, dim=-1)
        sim = xn[a_idx] @ xn[b_idx].T                       # [|A|, |B|]
        best, partner = sim.max(dim=-1)                     # first maximum on ties
        # the r most similar A tokens merge (a stable sort: ties go to the earlier token)
        ranked = torch.sort(-best, stable=True).indices
        merged_a = ranked[:r]
        group = torch.empty(n, dtype=torch.long, device=x.device)
        kept_a = torch.sort(ranked[r:]).values
        # new token order: unmerged A tokens, then B tokens; sorted below by original position
        group[a_idx[kept_a]] = torch.arange(len(kept_a), device=x.device)
        group[b_idx] = len(kept_a) + torch.arange(len(b_idx), device=x.device)
        group[a_idx[merged_a]] = len(kept_a) + partner[merged_a]
        m = n - r
        x, sizes = _merge_groups(x, sizes, group, m)
        first = torch.full((m,), n, dtype=torch.long, device=x.device).scatter_reduce_(0, group, order, "amin")
        perm = torch.argsort(first)
        x, sizes, order = x[perm], sizes[perm], first[perm]
    return x, sizes


def _dpc_one(x: torch.Tensor, sizes: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering of one row's tokens x [n, d] (none protected) into `keep` clusters."""
    n = x.shape[0]
    if keep >= n:
        return x, sizes
    d = torch.cdist(x.double(), x.double()) / math.sqrt(x.shape[1])             # [n, n], per channel
    nn_k = min(DPC_NEIGHBOURS, n - 1)
    knn = torch.topk(d, nn_k + 1, dim=-1, largest=False).values[:, 1:]          # drop the token itself
    density = torch.exp(-(knn ** 2).mean(dim=-1))
    # ties in density: the earlier token counts as denser, so exactly one token is the densest
    idx = torch.arange(n, device=x.device)
    denser = (density.unsqueeze(0) > density.unsqueeze(1)) | (
        (density.unsqueeze(0) == density.unsqueeze(1)) & (idx.unsqueeze(0) < idx.unsqueeze(1)))
    delta = torch.where(denser, d, torch.full_like(d, math.inf)).min(dim=-1).values
    delta = torch.where(torch.isinf(delta), d.max(dim=-1).values, delta)
    score = density * delta
    centres = torch.sort(torch.sort(-score, stable=True).indices[:keep]).values  # in token order
    group = d[:, centres].argmin(dim=-1)
    group[centres] = torch.arange(keep, device=x.device)                       # a centre is its own cluster
    return _merge_groups(x, sizes, group, keep)


def merge_tokens(x: torch.Tensor, keep: int, method: str, *, sizes: torch.Tensor | None = None,
                 protect: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce tokens x [B, n, D] to [B, keep, D] by `method`; returns (tokens, sizes [B, keep]).
    The first `protect` tokens pass unchanged; keep == n is the identity."""
    Reduction(method, keep)
    w = _check(x, sizes, keep, protect)
    if keep == x.shape[1]:
        return x, w
    fn = _tome_one if method == "tome" else _dpc_one
    outs, szs = [], []
    for b in range(x.shape[0]):
        t, s = fn(x[b, protect:], w[b, protect:], keep - protect)
        outs.append(torch.cat([x[b, :protect], t.to(x.dtype)]))
        szs.append(torch.cat([w[b, :protect], s.to(x.dtype)]))
    return torch.stack(outs), torch.stack(szs)


def pack(tokens: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """[B, k, D] tokens and [B, k] sizes -> [B, k, D + 1], log(size) as the last channel."""
    return torch.cat([tokens, sizes.log().unsqueeze(-1).to(tokens.dtype)], dim=-1)


def unpack(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `pack`: (tokens [B, k, D], log sizes [B, k])."""
    if packed.dim() != 3 or packed.shape[-1] < 2:
        raise ValueError(f"reduced edge: expected [batch, k, dim + 1], got {tuple(packed.shape)}")
    return packed[..., :-1].contiguous(), packed[..., -1].contiguous()


def reduce_packed(encoder_out: torch.Tensor, reduction: Reduction, protect: int = 1) -> torch.Tensor:
    """The encoder output as it crosses the link under `reduction`: merged, sizes packed."""
    tokens, sizes = merge_tokens(encoder_out, reduction.keep, reduction.method, protect=protect)
    return pack(tokens, sizes)


def packed_bytes(n_tokens: int, dim: int, reduction: Reduction | None, itemsize: int = 4) -> int:
    """Bytes of one row of the edge: n * dim unreduced, keep * (dim + 1) reduced."""
    if reduction is None:
        return n_tokens * dim * itemsize
    return min(reduction.keep, n_tokens) * (dim + 1) * itemsize


def install(state: object, packed: torch.Tensor) -> None:
    """Put a packed reduced encoder output into a RequestState: the tokens become `encoder_out`, their
    log sizes `extra["encoder_bias"]`, which GPT-2's cross-attention adds to its logits."""
    tokens, log_size = unpack(packed)
    state.encoder_out = tokens                              # type: ignore[attr-defined]
    state.extra["encoder_bias"] = log_size                  # type: ignore[attr-defined]
