"""OTDD: the optimal-transport distance between two labelled datasets (Alvarez-Melis & Fusi, NeurIPS 2020).

A dataset is a cloud of points z = (x, y) with uniform weights. The ground cost between two points is

    c((x, y), (x', y')) = lambda_x * ||x - x'||^2 + lambda_y * W[y, y']

where W[y, y'] is the squared 2-Wasserstein distance between the class-conditional feature distributions:
``"gaussian"`` fits a Gaussian per class (Bures-Wasserstein closed form, microsoft/otdd's default) and ``"exact"``
solves OT between the class point clouds. Unlike microsoft/otdd we do NOT halve the cost (their code uses
||x - x'||^2/2 + W/2): the exact value is then the squared W2 distance on the product space. Conversion: their value
with entreg e is half of ours with ``entropic_reg = 2 e`` (OT_e(C/2) = OT_2e(C)/2).

Outer transport: exact OT (``ot.emd2``) when both sides have at most ``exact_max_n`` points; beyond that the debiased
Sinkhorn divergence S = OT_e(a, b) - (OT_e(a, a) + OT_e(b, b))/2 with OT_e(a, b) = min <P, C> + e KL(P | a x b) (the
geomloss/microsoft-otdd convention, so S(a, a) = 0). As in microsoft/otdd, the labels of the two datasets are
distinct label sets, so the self terms use the within-dataset label distances (block matrix [[W_aa, W_ab],
[W_ba, W_bb]]).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import DataError, ForgetbenchError, SpecError
from .drift import as_feature_matrix, check_subsample_args, paired_subsample
from .label_costs import F64, class_codes, emd2_uniform, exact_block, gauss_block, nonneg, spectra_from_samples


# --------------------------------------------------------------------------------------------- outer transport

def _fill_cost(out: torch.Tensor, xa: torch.Tensor, ya: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
               w: torch.Tensor, lx: float, ly: float) -> torch.Tensor:
    """out = lx ||xa_i - xb_j||^2 + ly w[ya_i, yb_j], in place (the n x n buffer is reused: fresh 200 MB allocations
    cost more than the arithmetic on this hardware, page faults). Three passes over the n x n memory, which is what
    costs at this size: the label gather, one GEMM that adds the whole squared distance (the norms ride along as two
    extra coordinates: [x, |x|^2, 1] . [-2y, 1, |y|^2] = |x - y|^2), and the clamp against cancellation."""
    torch.index_select(w.index_select(0, ya), 1, yb, out=out)
    ones_a, ones_b = torch.ones(len(xa), 1, dtype=F64), torch.ones(len(xb), 1, dtype=F64)
    left = torch.cat([xa, xa.pow(2).sum(1, keepdim=True), ones_a], 1)
    right = torch.cat([-2 * xb, ones_b, xb.pow(2).sum(1, keepdim=True)], 1)
    return out.addmm_(left, right.T, beta=ly, alpha=lx).clamp_min_(0)


@dataclass
class _SinkhornLog:
    """Iterations done and the last L1 marginal error of one transport problem."""

    iters: int = 0
    err: float = 0.0


def _sinkhorn_stage(cost: torch.Tensor, kernel: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                    cap: int, tol: float | None, symmetric: bool, log: _SinkhornLog) -> tuple[float, bool]:
    """At most ``cap`` Sinkhorn iterations at fixed ``eps`` from the potentials (f, g), updated in place.

    Log-stabilised kernel (Schmitzer 2019): K = exp((f_i + g_j - C_ij)/eps) holds the potentials, the iterations only
    update scalings u, v, which are absorbed into (f, g) at the end or whenever they grow large, so exp never
    under/overflows whatever the cost scale (no cost normalisation is needed). ``symmetric`` (g is f): the averaged
    update f <- (f + T(f))/2 of geomloss, one matrix-vector product per iteration. Returns (plan mass, converged).
    """
    na, nb = cost.shape

    def rebuild() -> None:  # three passes over the n x n memory, not four: the 1/eps rides on the vectors
        torch.sub(f[:, None] / eps, cost, alpha=1 / eps, out=kernel).add_(g[None, :] / eps).exp_()

    def absorb(u: torch.Tensor, v: torch.Tensor) -> None:
        f.add_(u.log(), alpha=eps)
        if not symmetric:
            g.add_(v.log(), alpha=eps)

    rebuild()
    u = torch.ones(na, dtype=F64)
    v = u if symmetric else torch.ones(nb, dtype=F64)
    for it in range(max(cap, 0) + 1):
        kv = torch.mv(kernel, v).div_(nb)
        row = u * kv  # row marginal / a_i (columns are exact after each v-update, or equal to the rows)
        log.err = float((row - 1).abs().mean())
        converged = tol is not None and log.err < tol
        if converged or it >= cap:
            break
        if symmetric:
            u = v = (u / kv).sqrt_()
        else:
            u = 1.0 / kv
            v = 1.0 / torch.mv(kernel.T, u).div_(na)
        log.iters += 1
        if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
            raise ForgetbenchError("OTDD Sinkhorn produced non-finite scalings; raise entropic_reg")
        if max(float(u.max()), float(v.max()), 1 / float(u.min()), 1 / float(v.min())) > 1e50:
            absorb(u, v)
            rebuild()
            u = torch.ones(na, dtype=F64)
            v = u if symmetric else torch.ones(nb, dtype=F64)
    absorb(u, v)
    return float(row.mean()), converged


def _newton_stage(cost: torch.Tensor, kernel: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                  cap: int, tol: float, log: _SinkhornLog, cg_rtol: float = 1e-8, cg_max: int = 300) -> float:
    """Sinkhorn-Newton (Brauer, Clason, Lorenz & Wirth 2017) on the dual from (f, g), updated in place, until the
    larger of the row and column L1 marginal errors is below ``tol`` or ``cap`` plan-vector products are spent.

    Why: Sinkhorn's error contracts by the plan's second singular value, which is ~1 when the data form clusters
    (classes) that the kernel barely connects: shifting f up and g down on one cluster changes the marginals only by
    the tiny mass leaking between clusters, so Sinkhorn takes 10^3-10^5 iterations at some regularisations. Newton's
    system M [df; dg] = eps [a - P1; b - P^T 1], M = [[diag P1, P], [P^T, diag P^T 1]], sees those few slow
    directions as isolated small eigenvalues, which preconditioned CG resolves in a few extra products. Each step is
    damped until the dual objective does not decrease. Returns the plan mass.
    """
    na, nb = cost.shape

    def plan() -> tuple[torch.Tensor, torch.Tensor, float]:
        torch.sub(f[:, None], cost, out=kernel).add_(g[None, :]).div_(eps).exp_().div_(na * nb)
        r, c = kernel.sum(1), kernel.sum(0)
        log.err = max(float((r * na - 1).abs().mean()), float((c * nb - 1).abs().mean()))
        return r, c, float(f.mean() + g.mean()) - eps * (float(r.sum()) - 1.0)

    r, c, dual = plan()
    while log.err >= tol and log.iters < cap:
        # preconditioned conjugate gradients (Jacobi); M is PSD with null vector (1, -1), orthogonal to the rhs
        rf, rg = (1.0 / na - r) * eps, (1.0 / nb - c) * eps
        x, y = torch.zeros_like(rf), torch.zeros_like(rg)
        stop = cg_rtol * float(torch.cat([rf, rg]).norm())
        zf, zg = rf / r, rg / c
        pf, pg = zf.clone(), zg.clone()
        rz = float(rf @ zf + rg @ zg)
        for _ in range(cg_max):
            qf = torch.mv(kernel, pg).addcmul_(r, pf)
            qg = torch.mv(kernel.T, pf).addcmul_(c, pg)
            log.iters += 1
            alpha = rz / float(pf @ qf + pg @ qg)
            x.add_(pf, alpha=alpha)
            y.add_(pg, alpha=alpha)
            rf.sub_(qf, alpha=alpha)
            rg.sub_(qg, alpha=alpha)
            if float(torch.cat([rf, rg]).norm()) < stop:
                break
            zf, zg = rf / r, rg / c
            rz, rz_old = float(rf @ zf + rg @ zg), rz
            pf.mul_(rz / rz_old).add_(zf)
            pg.mul_(rz / rz_old).add_(zg)
        f0, g0, step = f.clone(), g.clone(), 1.0
        while True:
            torch.add(f0, x, alpha=step, out=f)
            torch.add(g0, y, alpha=step, out=g)
            r, c, new_dual = plan()
            if new_dual >= dual - 1e-15 * abs(dual) or step < 1e-3:
                break
            step /= 2
        dual = new_dual
        if not (torch.isfinite(f).all() and torch.isfinite(g).all()):
            raise ForgetbenchError("OTDD Sinkhorn-Newton produced non-finite potentials; raise entropic_reg")
    return float(r.sum())


_Potentials = tuple[torch.Tensor, torch.Tensor]


def _entropic_ot(cost: torch.Tensor, reg: float, kernel: torch.Tensor, log: _SinkhornLog, *, symmetric: bool,
                 tol: float, max_iter: int, init: _Potentials | None = None, warm_iter: int = 50,
                 anneal: float = 0.25, stage_iter: int | None = None,
                 newton_after: int = 100, newton_from_warm: float = 1e-3) -> tuple[float, torch.Tensor, torch.Tensor]:
    """OT_reg(a, b) = min <P, C> + reg KL(P | a x b) for uniform a, b, from the dual <a,f> + <b,g> - reg (mass - 1).

    Returns (value, f, g). ``init``: try these potentials first (at most ``warm_iter`` iterations; for the cross
    problem the two self-problem potentials, exact when a = b), then Sinkhorn-Newton from where they got to if the
    marginal error is below ``newton_from_warm``; otherwise, eps-scaling from the cost scale (max C) down to ``reg``
    by factors ``anneal`` with ``stage_iter`` iterations per stage, then iterations until the L1 marginal error is
    below ``tol``; if ``newton_after`` iterations at ``reg`` do not get there, Sinkhorn-Newton steps finish the job
    (``max_iter`` Sinkhorn iterations or Newton plan-vector products in all). ``stage_iter`` defaults to 3 for
    ``symmetric`` problems (a 5,000-point self problem at reg 0.01, 0.1 and 1: the same values to 12 digits as with
    10 per stage, in 14-21 iterations instead of 22-51) and 10 otherwise (3 left the stalled cross problems of small
    reg further from the solution, and Newton ~30% more work).
    Alternating Sinkhorn converges 20-50x more slowly than the symmetric update on self-transport problems, hence
    ``symmetric``.
    """
    na, nb = cost.shape
    if init is not None:
        f, g = init[0].clone(), init[1].clone()
        mass, ok = _sinkhorn_stage(cost, kernel, f, g, reg, warm_iter, tol, symmetric, log)
        if not ok and not symmetric and log.err < newton_from_warm and log.iters < max_iter:
            # close but stalled (clustered data): Newton from here, not eps-scaling from scratch (2,000 points,
            # reg 0.2 / 0.3: 123 / 89 iterations instead of 310 / 237, the same values to 1e-11); from further away
            # (small reg) Newton needs more products than the eps-scaling path
            mass = _newton_stage(cost, kernel, f, g, reg, max_iter, tol, log)
            ok = True
        if ok:
            return float(f.mean() + g.mean()) - reg * (mass - 1.0), f, g
    f = torch.zeros(na, dtype=F64)
    g = f if symmetric else torch.zeros(nb, dtype=F64)
    stage_iter = (3 if symmetric else 10) if stage_iter is None else stage_iter
    eps = max(float(cost.max()), reg)
    while eps > reg:
        _sinkhorn_stage(cost, kernel, f, g, eps, stage_iter, None, symmetric, log)
        eps = max(eps * anneal, reg)
    mass, ok = _sinkhorn_stage(cost, kernel, f, g, reg, min(newton_after, max_iter - log.iters), tol, symmetric, log)
    if not ok and log.iters < max_iter:
        if symmetric:
            g = f.clone()
        mass = _newton_stage(cost, kernel, f, g, reg, max_iter, tol, log)
    return float(f.mean() + g.mean()) - reg * (mass - 1.0), f, g


# ------------------------------------------------------------------------------------------------------- OTDD

@dataclass(frozen=True)
class OTDDResult:
    """OTDD value and every setting needed to reproduce or store it (``params`` is JSON-serialisable)."""

    distance: float
    params: dict[str, Any] = field(default_factory=dict)


_LABEL_COSTS = ("gaussian", "exact")


def otdd(x_a: Any, y_a: Any, x_b: Any, y_b: Any, *, label_cost: str = "gaussian", exact_max_n: int = 2000,
         entropic_reg: float = 0.1, max_samples: int | None = None, seed: int = 0, lambda_x: float = 1.0,
         lambda_y: float = 1.0, ridge: float = 1e-6, sinkhorn_tol: float = 1e-6,
         sinkhorn_max_iter: int = 2000) -> OTDDResult:
    """OTDD between labelled feature sets (x_a, y_a) and (x_b, y_b); see the module docstring for the definition.

    Ground cost: lambda_x ||x - x'||^2 + lambda_y W[y, y'], no 1/2 factor. ``label_cost``: ``"gaussian"`` (Bures
    closed form on class means and unbiased covariances + ``ridge`` I) or ``"exact"`` (``ot.emd2`` between class
    clouds). Outer problem: exact ``ot.emd2`` if both sides have <= ``exact_max_n`` points, otherwise the debiased
    Sinkhorn divergence; the within-dataset label blocks W_aa, W_bb are only computed there.

    ``entropic_reg`` is absolute, in cost units (microsoft/otdd's convention). On L2-normalised features (squared
    distances <= 4) the default 0.1 converges in tens of iterations; for raw features with large costs scale it with
    ``params["cost_scale"]``. Sinkhorn stops at an L1 marginal error below ``sinkhorn_tol`` or after
    ``sinkhorn_max_iter`` iterations per problem, with a RuntimeWarning if it did not converge. Where plain Sinkhorn
    stalls (clustered data at some regularisations), Sinkhorn-Newton steps finish the problem; their plan-vector
    products count as iterations.

    ``max_samples``: evaluate on a seeded subsample of ``max_samples`` rows, using the SAME row indices on both sides
    (so x_a and x_b must then have the same length: the typical use compares two models' features of the same
    samples); label costs are computed on the subsample. OTDD(x, x) = 0 in every mode.

    Returns an OTDDResult whose ``params`` holds every setting, the sizes used, the outer solver, ``cost_scale``
    (max cross cost) and, for Sinkhorn, iterations and final marginal error per problem (JSON-serialisable).
    """
    if label_cost not in _LABEL_COSTS:
        raise SpecError(f"label_cost must be one of {_LABEL_COSTS}, got {label_cost!r}")
    lx, ly = nonneg(lambda_x, "lambda_x"), nonneg(lambda_y, "lambda_y")
    ridge = nonneg(ridge, "ridge")
    reg = nonneg(entropic_reg, "entropic_reg", positive=True)
    tol = nonneg(sinkhorn_tol, "sinkhorn_tol", positive=True)
    for name, v in (("exact_max_n", exact_max_n), ("sinkhorn_max_iter", sinkhorn_max_iter)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise SpecError(f"{name} must be an integer >= 0, got {v!r}")
    check_subsample_args(max_samples, seed)
    xa, xb = as_feature_matrix(x_a, "x_a"), as_feature_matrix(x_b, "x_b")
    if xa.shape[1] != xb.shape[1]:
        raise DataError(f"x_a and x_b have different feature dimensions ({xa.shape[1]} vs {xb.shape[1]})")
    ya, cls_a = class_codes(y_a, xa.shape[0], "y_a")
    yb, cls_b = class_codes(y_b, xb.shape[0], "y_b")
    n_total = (xa.shape[0], xb.shape[0])
    idx = None
    if max_samples is not None and max_samples < max(n_total):
        if n_total[0] != n_total[1]:
            raise DataError(f"max_samples={max_samples} subsamples both sides with the same row indices, so x_a and "
                            f"x_b must have the same number of rows (got {n_total[0]} and {n_total[1]}); "
                            "subsample unpaired datasets yourself")
        idx = paired_subsample(n_total[0], max_samples, seed)
    if idx is not None:
        xa, xb = xa[idx], xb[idx]
        ya, cls_a = class_codes(ya[idx], len(idx), "y_a")
        yb, cls_b = class_codes(yb[idx], len(idx), "y_b")
    na, nb = xa.shape[0], xb.shape[0]
    exact_outer = max(na, nb) <= exact_max_n

    side_a: Any
    side_b: Any
    if label_cost == "gaussian":
        side_a = spectra_from_samples(xa, ya, len(cls_a), ridge)
        side_b = spectra_from_samples(xb, yb, len(cls_b), ridge)

        def block(p: Any, q: Any, same: bool = False) -> torch.Tensor:
            return gauss_block(p, q, same)
    else:
        side_a, side_b = (xa, ya, len(cls_a)), (xb, yb, len(cls_b))

        def block(p: Any, q: Any, same: bool = False) -> torch.Tensor:
            return exact_block(*p, *q, same)
    w_ab = block(side_a, side_b)

    params: dict[str, Any] = {
        "label_cost": label_cost, "outer": "emd" if exact_outer else "sinkhorn_debiased",
        "cost": "lambda_x*||x-x'||^2 + lambda_y*W2^2(y,y') (no 1/2 factor)", "lambda_x": lx, "lambda_y": ly,
        "entropic_reg": reg, "exact_max_n": int(exact_max_n), "ridge": ridge, "max_samples": max_samples,
        "seed": seed, "subsampled": idx is not None, "n_a": na, "n_b": nb, "n_a_total": n_total[0],
        "n_b_total": n_total[1], "n_classes_a": len(cls_a), "n_classes_b": len(cls_b),
    }
    # two float64 buffers of the largest problem serve all of them (cost; Sinkhorn's kernel)
    size = na * nb if exact_outer else max(na, nb) ** 2
    cbuf, kbuf = torch.empty(size, dtype=F64), torch.empty(size if not exact_outer else 0, dtype=F64)

    def cost(x: torch.Tensor, y: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], x2.shape[0])
        return _fill_cost(cbuf[:shape[0] * shape[1]].view(shape), x, y, x2, y2, w, lx, ly)

    if exact_outer:
        cost_ab = cost(xa, ya, xb, yb, w_ab)
        params["cost_scale"] = float(cost_ab.max())
        return OTDDResult(emd2_uniform(cost_ab, "the outer problem"), params)

    # self problems first: their potentials warm-start the cross problem (exact when the datasets are equal)
    logs = {"ab": _SinkhornLog(), "aa": _SinkhornLog(), "bb": _SinkhornLog()}
    kw: dict[str, Any] = dict(tol=tol, max_iter=int(sinkhorn_max_iter))
    selfs, pots = [], []
    for key, side, x, y in (("aa", side_a, xa, ya), ("bb", side_b, xb, yb)):
        c = cost(x, y, x, y, block(side, side, True))
        val, pot, _ = _entropic_ot(c, reg, kbuf[:c.numel()].view(c.shape), logs[key], symmetric=True, **kw)
        selfs.append(val)
        pots.append(pot)
    cost_ab = cost(xa, ya, xb, yb, w_ab)
    ot_ab, _, _ = _entropic_ot(cost_ab, reg, kbuf[:cost_ab.numel()].view(cost_ab.shape), logs["ab"],
                               symmetric=False, init=(pots[0], pots[1]), **kw)
    value = ot_ab - 0.5 * (selfs[0] + selfs[1])
    worst = max(lg.err for lg in logs.values())
    params.update(cost_scale=float(cost_ab.max()), sinkhorn_tol=tol, sinkhorn_max_iter=int(sinkhorn_max_iter),
                  sinkhorn_iters={k: lg.iters for k, lg in logs.items()}, sinkhorn_marginal_err=worst)
    if worst > tol:
        warnings.warn(f"OTDD Sinkhorn stopped at marginal error {worst:.2e} > sinkhorn_tol={tol:g} after "
                      f"{sinkhorn_max_iter} iterations; raise sinkhorn_max_iter or entropic_reg", RuntimeWarning,
                      stacklevel=2)
    return OTDDResult(float(value), params)
