"""Label costs of OTDD: the distance W[y, y'] between the class-conditional feature distributions of two labelled
datasets, either between Gaussians fitted per class (Bures-Wasserstein closed form, batched) or exactly between the
class point clouds (``ot.emd2``); see ``otdd.py`` for how they enter the distance."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import ot
import scipy.linalg
import torch

from ..errors import DataError, ForgetbenchError, SpecError
from .drift import as_feature_matrix

F64 = torch.float64
_EPS = float(np.finfo(np.float64).eps)
_CHUNK_BYTES = 64 * 2**20  # working-memory budget of one batched step of the label-cost computation


# ----------------------------------------------------------------------------------------------- input checks

def nonneg(v: Any, name: str, positive: bool = False) -> float:
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or (positive and v == 0):
        raise SpecError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")
    return float(v)


def class_codes(y: Any, n: int, name: str) -> tuple[torch.Tensor, np.ndarray]:
    """Codes 0..C-1 (following np.unique order) and the class values of a label vector of length n."""
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DataError(f"{name}: expected a 1-D array of {n} labels (one per feature row), got shape {arr.shape}")
    classes, codes = np.unique(arr, return_inverse=True)
    return torch.from_numpy(codes.astype(np.int64)), classes


def sqdist(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Squared euclidean distances, clamped at 0 against cancellation."""
    out = torch.mm(x, y.T, out=out) if out is not None else x @ y.T
    out.mul_(-2).add_(x.pow(2).sum(1)[:, None]).add_(y.pow(2).sum(1)[None, :])
    return out.clamp_min_(0)


# ---------------------------------------------------------------------------------------- Gaussian label cost

@contextmanager
def _single_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _pmap(fn: Callable[[Any], Any], tasks: list[Any]) -> list[Any]:
    """Map ``fn`` over ``tasks`` on torch.get_num_threads() Python threads, torch itself single-threaded.

    Many small LAPACK calls (eigh/svd/eigvalsh up to a few hundred rows) run faster one per thread than with MKL's
    own threading, which is 10-100x slower still when other processes compete for the cores (measured on 2 shared
    cores). torch releases the GIL, so the Python threads do run in parallel. The thread count is process-wide
    state; it is restored on exit.
    """
    workers = max(1, min(torch.get_num_threads(), len(tasks)))
    with _single_thread():
        if workers == 1:
            return [fn(t) for t in tasks]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, tasks))


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, max(1, size))]


def class_stats(features: Any, labels: Any, ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means [C, d] and unbiased covariances + ridge * I [C, d, d], rows ordered as np.unique(labels).

    A class with a single sample gets covariance ridge * I (never NaN); classes with fewer samples than dimensions
    give singular empirical covariances, which the Bures computation handles.
    """
    x = as_feature_matrix(features, "features")
    codes, classes = class_codes(labels, x.shape[0], "labels")
    ridge = nonneg(ridge, "ridge")
    n_cls, d = len(classes), x.shape[1]
    counts = torch.bincount(codes, minlength=n_cls).to(F64)
    means = torch.zeros(n_cls, d, dtype=F64).index_add_(0, codes, x) / counts[:, None]
    centred = x - means[codes]
    covs = torch.empty(n_cls, d, d, dtype=F64)
    for c in range(n_cls):
        z = centred[codes == c]
        covs[c] = z.T @ z / max(z.shape[0] - 1, 1)
    covs += ridge * torch.eye(d, dtype=F64)
    return means.numpy(), covs.numpy()


@dataclass(frozen=True)
class _Spectra:
    """Gaussians N(mean_c, U_c diag(excess_c) U_c^T + floor_c I): only the eigen-directions whose eigenvalue exceeds
    the floor are stored, zero-padded to a common width k (a padded direction has excess 0 and is inert)."""

    means: torch.Tensor   # [C, d]
    vecs: torch.Tensor    # [C, d, k] orthonormal eigenvectors
    excess: torch.Tensor  # [C, k] eigenvalue - floor, >= 0
    floor: torch.Tensor   # [C] eigenvalue on every other direction (the ridge)

    @property
    def trace(self) -> torch.Tensor:
        return self.excess.sum(1) + self.means.shape[1] * self.floor


def _pad_stack(parts: list[torch.Tensor], d: int, k: int, vectors: bool) -> torch.Tensor:
    shape = (len(parts), d, k) if vectors else (len(parts), k)
    out = torch.zeros(shape, dtype=F64)
    for c, p in enumerate(parts):
        out[c, ..., :p.shape[-1]] = p
    return out


def spectra_from_samples(x: torch.Tensor, codes: torch.Tensor, n_cls: int, ridge: float) -> _Spectra:
    """Class Gaussians from samples via a thin SVD of each centred class: O(n_c d min(n_c, d)), no d x d work."""
    d = x.shape[1]
    groups = [x[codes == c] for c in range(n_cls)]

    def one(xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu = xc.mean(0)
        if xc.shape[0] < 2:  # single sample: zero covariance (+ ridge)
            return mu, torch.zeros(d, 0, dtype=F64), torch.zeros(0, dtype=F64)
        _, s, vh = torch.linalg.svd(xc - mu, full_matrices=False)
        keep = s > s[0] * max(xc.shape) * _EPS  # numerical rank (matrix_rank's tolerance)
        return mu, vh[keep].T, s[keep] ** 2 / (xc.shape[0] - 1)

    means, vecs, excess = zip(*_pmap(one, groups))
    k = max(e.shape[0] for e in excess)
    return _Spectra(torch.stack(means), _pad_stack(list(vecs), d, k, True), _pad_stack(list(excess), d, k, False),
                    torch.full((n_cls,), ridge, dtype=F64))


def _spectra_from_covs(means: torch.Tensor, covs: torch.Tensor, ridge: float) -> _Spectra:
    """Class Gaussians from full covariances: one symmetric eigendecomposition per class (clamped at 0).

    Eigenvalues within d * eps * lambda_max of the smallest one are treated as equal to it (the floor), so the
    rank-deficient + ridge covariances of small classes keep only their informative directions.
    """
    d = covs.shape[-1]
    sym = 0.5 * (covs + covs.mT) + ridge * torch.eye(d, dtype=F64)
    parts = _pmap(lambda ab: torch.linalg.eigh(sym[ab[0]:ab[1]]), _chunks(len(sym), 4))
    lam = torch.cat([p[0] for p in parts]).clamp_min(0)  # ascending
    vec = torch.cat([p[1] for p in parts])
    floor = lam[:, 0]
    excess = lam - floor[:, None]
    keep = excess > d * _EPS * lam[:, -1:]
    k = int(keep.sum(1).max())
    # excess grows with the eigenvalue, so the kept directions are the last ones; zero the excess of the others
    excess = torch.where(keep, excess, torch.zeros_like(excess))[:, d - k:]
    return _Spectra(means, vec[:, :, d - k:].contiguous(), excess.contiguous(), floor)


def _pairs(n_a: int, n_b: int, same: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if same:  # symmetric block: upper triangle only, the diagonal is 0 by definition
        i, j = torch.triu_indices(n_a, n_a, 1)
        return i, j
    return torch.arange(n_a).repeat_interleave(n_b), torch.arange(n_b).repeat(n_a)


def _bures_lowrank(sa: _Spectra, sb: _Spectra, same: bool) -> torch.Tensor:
    """W2^2 for all class pairs (i < j only if ``same``) when k_a + k_b < d: eigenproblems of size m = k_a + k_b.

    With S_a = A A^T + r_a I and S_b = B B^T + r_b I (A = U_a diag(sqrt(excess_a))),
    M = S_a^1/2 S_b S_a^1/2 = r_a r_b I + F F^T with F = [sqrt(r_b) A, S_a^1/2 B], so its eigenvalues are
    r_a r_b + eig(F^T F) on span(A, B) and r_a r_b on the other d - m directions; F^T F (m x m) depends on the
    eigenvalues and C = U_a^T U_b only. W = |dmu|^2 + tr S_a + tr S_b - 2 tr M^1/2.
    """
    (n_a, d, ka), (n_b, _, kb) = sa.vecs.shape, sb.vecs.shape
    m = ka + kb
    ub_flat = sb.vecs.permute(1, 0, 2).reshape(d, n_b * kb)
    out = torch.zeros(n_a, n_b, dtype=F64)
    step = max(1, _CHUNK_BYTES // (8 * 3 * m * m))  # pairs per eigvalsh batch

    def rows(r: tuple[int, int]) -> None:  # class rows [r0, r1) against columns [c0, n_b)
        r0, r1 = r
        c0 = r0 + 1 if same else 0
        if c0 >= n_b:
            return
        ua_flat = sa.vecs[r0:r1].permute(0, 2, 1).reshape(-1, d)
        gram = (ua_flat @ ub_flat[:, c0 * kb:]).view(r1 - r0, ka, n_b - c0, kb)  # blocks U_a^T U_b
        i, j = torch.meshgrid(torch.arange(r0, r1), torch.arange(c0, n_b), indexing="ij")
        keep = (j > i) if same else torch.ones_like(i, dtype=torch.bool)
        i, j = i[keep], j[keep]
        buf = torch.zeros(min(step, len(i)), m, m, dtype=F64)
        for s0 in range(0, len(i), step):
            ip, jp = i[s0:s0 + step], j[s0:s0 + step]
            cm = gram[ip - r0, :, jp - c0, :]  # [P, ka, kb]
            la, lb, ra, rb = sa.excess[ip], sb.excess[jp], sa.floor[ip], sb.floor[jp]
            # F^T F = [[rb diag(la), X^T], [X, H^T H + ra diag(lb)]], H = diag(sqrt la) C diag(sqrt lb),
            # X = (diag(sqrt(rb (la + ra))) H)^T; eigvalsh reads the lower triangle only
            hs = cm * (la.sqrt()[:, :, None] * lb.sqrt()[:, None, :])
            ftf = buf[:len(ip)].zero_()
            ftf[:, :ka, :ka].diagonal(dim1=1, dim2=2).copy_(rb[:, None] * la)
            ftf[:, ka:, :ka] = (hs * (rb[:, None] * (la + ra[:, None])).sqrt()[:, :, None]).mT
            ftf[:, ka:, ka:] = hs.mT @ hs
            ftf[:, ka:, ka:].diagonal(dim1=1, dim2=2).add_(ra[:, None] * lb)
            mu = torch.linalg.eigvalsh(ftf).clamp_min(0)
            rr = ra * rb
            tr_root = (mu + rr[:, None]).sqrt().sum(1)  # the other d - m directions are folded in below
            dmu = (sa.means[ip] - sb.means[jp]).pow(2).sum(1)
            out[ip, jp] = (dmu + la.sum(1) + lb.sum(1) + d * (ra.sqrt() - rb.sqrt()) ** 2
                           + 2 * m * rr.sqrt() - 2 * tr_root)

    per_task = max(1, min(_CHUNK_BYTES // (8 * ka * n_b * kb), -(-n_a // (4 * torch.get_num_threads()))))
    _pmap(rows, _chunks(n_a, per_task))
    return out


def _bures_dense(sa: _Spectra, sb: _Spectra, same: bool, dtype: torch.dtype = F64) -> torch.Tensor:
    """W2^2 for all class pairs with full d x d matrices: S_a^1/2 once per class, one eigvalsh per pair.

    ``dtype``: precision of the per-pair product S_a^1/2 S_b S_a^1/2 and its eigenvalues, the whole cost at large d
    (float32 halves it; the sums stay float64). Everything per class (roots, traces) is float64.
    """
    (n_a, d, _), n_b = sa.vecs.shape, sb.vecs.shape[0]
    eye = torch.eye(d, dtype=F64)
    ra_root = sa.floor.sqrt()
    root_a = (ra_root[:, None, None] * eye + (sa.vecs * ((sa.excess + sa.floor[:, None]).sqrt()
                                                         - ra_root[:, None])[:, None, :]) @ sa.vecs.mT).to(dtype)
    cov_b = (sb.floor[:, None, None] * eye + (sb.vecs * sb.excess[:, None, :]) @ sb.vecs.mT).to(dtype)
    i, j = _pairs(n_a, n_b, same)
    out = torch.zeros(n_a, n_b, dtype=F64)
    item = torch.finfo(dtype).bits // 8

    def pairs(r: tuple[int, int]) -> None:
        ip, jp = i[r[0]:r[1]], j[r[0]:r[1]]
        ra = root_a[ip]
        mu = torch.linalg.eigvalsh(ra @ cov_b[jp] @ ra).to(F64).clamp_min(0)
        dmu = (sa.means[ip] - sb.means[jp]).pow(2).sum(1)
        out[ip, jp] = dmu + sa.trace[ip] + sb.trace[jp] - 2 * mu.sqrt().sum(1)

    _pmap(pairs, _chunks(len(i), max(1, _CHUNK_BYTES // (item * 3 * d * d))))
    return out


def gauss_block(sa: _Spectra, sb: _Spectra, same: bool = False, dtype: torch.dtype = F64) -> torch.Tensor:
    """[Ca, Cb] matrix of W2^2 between class Gaussians; ``same``: sa is sb, compute i < j and mirror (zero diagonal).
    ``dtype``: precision of the per-pair eigenproblems of full-rank covariances (``_bures_dense``)."""
    low_rank = sa.vecs.shape[2] + sb.vecs.shape[2] < sa.means.shape[1]
    w = (_bures_lowrank(sa, sb, same) if low_rank else _bures_dense(sa, sb, same, dtype)).clamp_min_(0)
    return w + w.T if same else w


def _as_stats(means: Any, covs: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    mu = as_feature_matrix(means, f"means_{name}")
    cv = torch.as_tensor(covs.detach().cpu() if isinstance(covs, torch.Tensor) else np.asarray(covs, np.float64),
                         dtype=F64)
    c, d = mu.shape
    if cv.shape != (c, d, d):
        raise DataError(f"covs_{name}: expected shape {(c, d, d)} to match means_{name} {(c, d)}, "
                        f"got {tuple(cv.shape)}")
    if not bool(torch.isfinite(cv).all()):
        raise DataError(f"covs_{name}: contains NaN or infinite values")
    return mu, cv


#: Precisions of the per-pair eigenproblems of full-rank covariances (``label_cost_gaussian``'s ``precision``)
PRECISIONS = {"float64": F64, "float32": torch.float32}


def label_cost_gaussian(means_a: Any, covs_a: Any, means_b: Any, covs_b: Any, *, ridge: float = 0.0,
                        precision: str = "float64") -> np.ndarray:
    """Squared 2-Wasserstein (Bures) distances between Gaussians, [Ca, Cb]:
    ||mu - mu'||^2 + tr(S + S' - 2 (S^1/2 S' S^1/2)^1/2), clamped >= 0.

    float64; each covariance is symmetrised (+ ``ridge`` * I) and eigendecomposed once, eigenvalues clamped at 0.
    When the covariances are low-rank + floor (small classes, e.g. from ``class_stats``), every pair is an
    eigenproblem of size rank_a + rank_b instead of d; otherwise S_a^1/2 is formed once per class and each pair is
    one batched ``eigvalsh`` of S_a^1/2 S_b S_a^1/2 (trace of the root = sum of sqrt of clamped eigenvalues).
    ``precision="float32"`` computes those per-pair products and eigenvalues in float32, about twice as fast at large
    d, with an absolute error of 1e-6 to 3e-5 of the covariances' trace (``bench/bench_otdd.py`` measures it); the
    low-rank path is always float64.
    """
    ridge = nonneg(ridge, "ridge")
    if precision not in PRECISIONS:
        raise SpecError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    ma, ca = _as_stats(means_a, covs_a, "a")
    mb, cb = _as_stats(means_b, covs_b, "b")
    if ma.shape[1] != mb.shape[1]:
        raise DataError(f"means_a and means_b have different feature dimensions ({ma.shape[1]} vs {mb.shape[1]})")
    return gauss_block(_spectra_from_covs(ma, ca, ridge), _spectra_from_covs(mb, cb, ridge),
                       dtype=PRECISIONS[precision]).numpy()


def label_cost_gaussian_loop(means_a: Any, covs_a: Any, means_b: Any, covs_b: Any) -> np.ndarray:
    """``label_cost_gaussian`` the direct way, to check it against: a per-pair loop of ``scipy.linalg.sqrtm``
    (S_a^1/2 cached per class, one sqrtm of S_a^1/2 S_b S_a^1/2 per pair), as microsoft/otdd does. Slow; for tests
    and benchmarks."""
    ma, ca = (np.asarray(v, np.float64) for v in (means_a, covs_a))
    mb, cb = (np.asarray(v, np.float64) for v in (means_b, covs_b))
    out = np.zeros((len(ma), len(mb)))
    for p in range(len(ma)):
        root = np.real(scipy.linalg.sqrtm(ca[p]))
        for q in range(len(mb)):
            cross = np.real(scipy.linalg.sqrtm(root @ cb[q] @ root))
            out[p, q] = np.sum((ma[p] - mb[q]) ** 2) + np.trace(ca[p] + cb[q] - 2 * cross)
    return np.maximum(out, 0.0)


# ------------------------------------------------------------------------------------------- exact label cost

def emd2_uniform(cost: torch.Tensor, what: str) -> float:
    na, nb = cost.shape
    value, log = ot.emd2(np.full(na, 1.0 / na), np.full(nb, 1.0 / nb), cost.numpy(),
                         numItermax=max(100_000, 50 * na * nb), log=True)
    if log.get("warning"):
        raise ForgetbenchError(f"exact OT for {what} ({na} x {nb} points) did not converge: {log['warning']}; "
                               "use fewer samples (max_samples) or the Sinkhorn path (a smaller exact_max_n)")
    return max(float(value), 0.0)


def exact_block(xa: torch.Tensor, ca: torch.Tensor, n_a: int, xb: torch.Tensor, cb: torch.Tensor, n_b: int,
                 same: bool = False) -> torch.Tensor:
    groups_a = [xa[ca == c] for c in range(n_a)]
    groups_b = groups_a if same else [xb[cb == c] for c in range(n_b)]
    i, j = _pairs(n_a, n_b, same)
    w = torch.zeros(n_a, n_b, dtype=F64)
    for p, q in zip(i.tolist(), j.tolist()):
        w[p, q] = emd2_uniform(sqdist(groups_a[p], groups_b[q]), f"label pair ({p}, {q})")
    return w + w.T if same else w


def label_cost_exact(features_a: Any, labels_a: Any, features_b: Any, labels_b: Any) -> np.ndarray:
    """Squared W2 between the class point clouds (uniform weights, squared-euclidean cost, ``ot.emd2``), [Ca, Cb];
    rows/columns follow np.unique of each label vector."""
    xa, xb = as_feature_matrix(features_a, "features_a"), as_feature_matrix(features_b, "features_b")
    if xa.shape[1] != xb.shape[1]:
        raise DataError(f"features_a and features_b have different dimensions ({xa.shape[1]} vs {xb.shape[1]})")
    ca, cls_a = class_codes(labels_a, xa.shape[0], "labels_a")
    cb, cls_b = class_codes(labels_b, xb.shape[0], "labels_b")
    return exact_block(xa, ca, len(cls_a), xb, cb, len(cls_b)).numpy()


