"""Proxy-FDA: FDA whose neighbour and non-neighbour sets are enlarged by generated proxies.

A light generator (one masked attention layer, two 1-D convolutions, attention pooling) turns each anchor's positive
set (its K neighbours in the frozen feature space) and negative set (the rest of the batch) into a few proxies per set,
each with an estimated frozen-space similarity. The proxies join the real pairs in FDA's sigmoid loss. The generator is
trained online with its own loss (stay on the real feature manifold, stay diverse); that loss reaches only the
generator.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from forgetbench.baselines.fda import FDA, knn_order, negative_weight, pair_weights, sigmoid_alignment
from forgetbench.methods import Batch, FinetuneContext, Param, register


def proxy_counts(n_pos: int, n_neg: int, s: float) -> tuple[int, int]:
    """Proxies per set: s x set size, rounded, at least 1 (0 for an empty set)."""
    return tuple(max(1, round(s * n)) if n else 0 for n in (n_pos, n_neg))


class ProxyGenerator(nn.Module):
    """Mixing weights of proxies over the members of each anchor's positive and negative sets.

    Members come sorted by decreasing frozen-space similarity, positives first. Each member is embedded from its
    (detached, normalised) student feature, its frozen-space similarity to the anchor and its set; one attention layer,
    masked so that a set only attends to itself, mixes information inside each set; two 1-D convolutions along the
    similarity order, adaptively average-pooled to the number of proxies, give one query per proxy; a proxy is the
    softmax(query . key)-weighted mix of its set. A mix stays in the span of real features, which keeps proxies near
    the data; the estimated similarity of a proxy is the same mix of its members' similarities.
    """

    def __init__(self, dim: int, hidden: int = 32):
        super().__init__()
        self.embed = nn.Linear(dim, hidden)
        self.sim_embed = nn.Linear(1, hidden)
        self.set_embed = nn.Embedding(2, hidden)
        self.attn = nn.MultiheadAttention(hidden, 1, batch_first=True)
        self.conv = nn.Sequential(nn.Conv1d(hidden, hidden, 3, padding=1), nn.GELU(),
                                  nn.Conv1d(hidden, hidden, 3, padding=1))
        self.key = nn.Linear(hidden, hidden)

    def forward(self, features: torch.Tensor, order: torch.Tensor, sims: torch.Tensor, n_pos: int,
                n_proxies: tuple[int, int]) -> list[Optional[torch.Tensor]]:
        """features [B, D], each anchor's members ``order`` [B, L] and their similarities ``sims`` [B, L] ->
        [mix of positives [B, P+, n_pos], mix of negatives [B, P-, L - n_pos]] (rows sum to 1)."""
        L = order.shape[1]
        is_neg = torch.arange(L, device=order.device) >= n_pos
        # embed each sample once, then gather per anchor (B x cheaper than embedding the gathered sets)
        h = self.embed(features)[order] + self.sim_embed(sims.unsqueeze(-1)) + self.set_embed(is_neg.long())
        mixes = []
        for part, n_p in ((slice(0, n_pos), n_proxies[0]), (slice(n_pos, L), n_proxies[1])):
            hs = h[:, part]
            if hs.shape[1] == 0 or n_p == 0:
                mixes.append(None)
                continue
            # "masked" attention: a set attends only to itself (attending per set = the block-diagonal mask, cheaper)
            hs = hs + self.attn(hs, hs, hs, need_weights=False)[0]
            queries = F.adaptive_avg_pool1d(self.conv(hs.transpose(1, 2)), n_p)  # [B, H, P]
            scores = torch.einsum("bhp,blh->bpl", queries, self.key(hs)) / math.sqrt(hs.shape[-1])
            mixes.append(scores.softmax(-1))
        return mixes


def manifold_loss(proxies: torch.Tensor, features: torch.Tensor, order: torch.Tensor, in_set: torch.Tensor,
                  tau: float) -> torch.Tensor:
    """Contrastive term: a proxy's nearest real members (softmax of cosine / tau over the anchor's members) should
    be those of its own set. proxies [B, P, D] and features [B, D] normalised; ``order`` [B, L] the anchor's members;
    ``in_set`` [L] marks the proxy's set among them.
    """
    logits = (proxies @ features.T).gather(2, order.unsqueeze(1).expand(-1, proxies.shape[1], -1)) / tau
    return (logits.logsumexp(-1) - logits[..., in_set].logsumexp(-1)).mean()


def variance_loss(proxies: torch.Tensor) -> torch.Tensor:
    """||mean of a set's unit proxies||^2 = 1 - their total variance; lower means more diverse proxies."""
    if proxies.shape[1] < 2:
        return proxies.new_zeros(())
    return proxies.mean(1).pow(2).sum(-1).mean()


@register
class ProxyFDA(FDA):
    """FDA plus generated proxies (choices where the paper notes are silent, each a hyper-parameter).

    - proxies per set: max(1, round(s x set size)), s = 0.4 (the paper's Fig. 5 scalar); a proxy's FDA weight follows
      the rule of its set (positives: +estimated similarity; negatives: ``negative_weight``) and the anchor's loss is
      averaged over real pairs and proxies together;
    - in the FDA loss the proxies are fixed points (detached): FDA moves the anchors relative to them and does not
      train the generator (which would make proxies easy);
    - generator loss = sum over the two sets of a contrastive on-manifold term (temperature ``proxy_tau`` 0.1) plus
      ``alpha`` (0.1) x a variance term; it is computed on detached student features, so it trains the generator only,
      with its own lr ``proxy_lr`` (1e-3, no weight decay) because the task's lr may be tiny (1e-5 for ViT-B/32);
    - generator width ``hidden`` 32: about 16K parameters at 128-d features, 28K at 512-d (the paper's has 23.6K).
    """

    name = "proxy-fda"
    description = "FDA with generated positive/negative proxies (masked attention + 1-D conv generator)"
    citation = "Huang et al., Proxy-FDA: Proxy-based Feature Distribution Alignment, ICML 2025"
    hyperparameters = {**FDA.hyperparameters, "s": Param(0.4, gt=0), "alpha": Param(0.1, ge=0),
                       "proxy_tau": Param(0.1, gt=0), "proxy_lr": Param(1e-3, gt=0), "hidden": Param(32, ge=1)}

    def setup(self, ctx: FinetuneContext) -> Optional[list[dict]]:
        groups = super().setup(ctx)
        self.generator = ProxyGenerator(ctx.model.feature_dim, self.params["hidden"]).to(ctx.device)
        return groups + [{"params": list(self.generator.parameters()), "lr": self.params["proxy_lr"],
                          "weight_decay": 0.0}]

    def loss(self, ctx: FinetuneContext, batch: Batch) -> torch.Tensor:
        fda, generator = self.losses(ctx, batch)
        return self.params["lam"] * fda + generator

    def losses(self, ctx: FinetuneContext, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(FDA loss with proxies, generator loss)."""
        p = self.params
        frozen = batch.frozen_features(ctx)  # under the loop's autocast, like every other user of it
        with torch.autocast(batch.features.device.type, enabled=False):  # cosines, top-k, generator in fp32
            ref_cos, order = knn_order(frozen)
            k = min(p["k"], order.shape[1])
            weights = pair_weights(ref_cos, order, k, p["negative_weight"])
            detached = F.normalize(batch.features.detach().float(), dim=-1)
            sims = ref_cos.gather(1, order)  # [B, L]
            counts = proxy_counts(k, order.shape[1] - k, p["s"])
            mixes = self.generator(detached, order, sims, k, counts)
            in_pos = torch.arange(order.shape[1], device=order.device) < k
            x = F.normalize(batch.features.float(), dim=-1)
            extra_cos, extra_w, generator_loss = [], [], x.new_zeros(())
            for mix, part, in_set, positive in ((mixes[0], slice(0, k), in_pos, True),
                                                (mixes[1], slice(k, None), ~in_pos, False)):
                if mix is None:
                    continue
                proxies = F.normalize(torch.einsum("bpl,bld->bpd", mix, detached[order[:, part]]), dim=-1)
                generator_loss = generator_loss + manifold_loss(proxies, detached, order, in_set, p["proxy_tau"]) \
                    + p["alpha"] * variance_loss(proxies)
                # in the FDA loss proxies are fixed points: it moves the anchors, not the generator
                estimated = torch.einsum("bpl,bl->bp", mix.detach(), sims[:, part])
                extra_cos.append(torch.einsum("bd,bpd->bp", x, proxies.detach()))
                extra_w.append(estimated.clamp_min(0.0) if positive
                               else negative_weight(estimated, p["negative_weight"]))
            fda = sigmoid_alignment(batch.features, weights, self.scale,
                                    torch.cat(extra_cos, 1) if extra_cos else None,
                                    torch.cat(extra_w, 1) if extra_w else None)
        return fda, generator_loss
