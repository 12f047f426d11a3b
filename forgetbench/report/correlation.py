"""Does forgetting follow feature drift? Correlation of each drift metric with the held-out transfer gap.

Proxy-FDA reports that forgetting correlates strongly with OTDD between pre-trained and fine-tuned features and
much less with point-wise L2, without saying what a point is. Here it is explicit: one point per (run, held-out
dataset) -- optionally also per training checkpoint -- and every table row carries a ``unit`` string saying so.
Coefficients are Pearson r and Spearman rho with percentile-bootstrap 95% CIs. Points of one run are not
independent (the same fine-tuned encoder, measured on several held-out datasets), so the bootstrap resamples runs
(clusters: every point of a drawn run comes along), not points; ``scope`` gives the coefficients within each held-out
dataset (one point per run there) as well as pooled over them.
"""
from __future__ import annotations

import json
import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from tabulate import tabulate

from ..errors import SpecError
from ..evaluate.drift_metrics import drift_metrics

_SORT = ["task", "method", "params", "seed", "run_id", "step", "dataset"]
_BOOT_CHUNK = 256  # resamples per vectorised block: bounds memory at 256 x n points


def columns() -> list[str]:
    """The columns of the points frame: one per registered drift metric."""
    return ["task", "method", "params", "seed", "run_id", "dataset", "step", "final", "delta_lp", "delta_zs",
            *(m.name for m in drift_metrics()), "weight_drift"]


# ------------------------------------------------------------------------------------------------------ points

def _params_str(params: Mapping[str, Any]) -> str:
    """Compact ``k=v, k=v`` with sorted keys; non-string values as compact JSON."""
    def val(v: Any) -> str:
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))
    return ", ".join(f"{k}={val(params[k])}" for k in sorted(params))


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _rows_for(heldout: Mapping[str, Any], base: dict, step: Any, final: bool, weight_drift: float | None) -> list[dict]:
    rows = []
    for dataset, m in heldout.items():
        row = {**base, "dataset": dataset, "step": step, "final": final, "delta_lp": _nan(m.delta_lp),
               "delta_zs": _nan(m.delta_zs), "weight_drift": _nan(weight_drift)}
        for metric in drift_metrics():
            row[metric.name] = _nan((m.drift or {}).get(metric.name))
        rows.append(row)
    return rows


def points(records: Iterable[Any], per_checkpoint: bool = False) -> pd.DataFrame:
    """One row per (run, held-out dataset) of fine-tune records: transfer gaps and drifts, NaN where absent.

    ``step`` is the run's final training step (``record.training["steps"]``, <NA> if unknown) and ``final`` is
    True on these rows. With ``per_checkpoint=True`` each trajectory checkpoint adds one row per held-out dataset
    (``final`` False, ``step`` the checkpoint step). Two checkpoints are skipped: step 0 (the pre-trained model:
    gap and drift are zero by construction, and such points would inflate every correlation) and the final step
    (the final evaluation already stands for that model). ``weight_drift`` is run-level (repeated over datasets).
    Rows are sorted by task, method, params, seed, run_id, step, dataset, so the frame (and any bootstrap over
    it) does not depend on the order of ``records``.
    """
    rows: list[dict] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        if rec.run_id in seen:
            raise SpecError(f"record {i} (run_id {rec.run_id}): the same run_id is also record {seen[rec.run_id]}; "
                            f"pass each run once (a duplicated run would count twice in the correlation)")
        seen[rec.run_id] = i
        base = {"task": rec.task.name, "method": rec.method.name, "params": _params_str(rec.method.params),
                "seed": rec.seed, "run_id": rec.run_id}
        final_step = (rec.training or {}).get("steps")
        rows += _rows_for(rec.metrics.heldout, base, final_step, True, rec.metrics.summary.get("weight_drift"))
        for cp in (rec.trajectory or ()) if per_checkpoint else ():
            if cp.step not in (0, final_step):
                rows += _rows_for(cp.heldout, base, cp.step, False, cp.summary.get("weight_drift"))
    df = pd.DataFrame(rows, columns=columns())
    df["step"] = df["step"].astype("Int64")
    df["final"] = df["final"].astype(bool)
    for c in ["delta_lp", "delta_zs", *(m.name for m in drift_metrics()), "weight_drift"]:
        df[c] = df[c].astype(float)
    return df.sort_values(_SORT, kind="mergesort", na_position="last").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ coefficients

def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of ``x``, ``y`` (shape (k, n)); NaN where either row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / den
    # Exactly constant rows have den 0; tiny float noise in the mean must not leak through as +-1.
    constant = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    r[constant] = np.nan
    return np.clip(r, -1.0, 1.0)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho = Pearson r of average ranks (ties, e.g. bootstrap duplicates, share their rank)."""
    return _pearson_rows(rankdata(x, axis=1), rankdata(y, axis=1))


def _ci(samples: np.ndarray) -> tuple[float, float]:
    """Percentile 95% interval over the finite bootstrap values (degenerate resamples give NaN and are dropped)."""
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return float(lo), float(hi)


def _bootstrap(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # A fresh generator per metric: each drift's CI depends only on its own points and the seed, not on which
    # other drifts were asked for or in what order.
    rng = np.random.default_rng(seed)
    n = x.size
    pear, spear = [], []
    for start in range(0, n_boot, _BOOT_CHUNK):
        idx = rng.integers(0, n, size=(min(_BOOT_CHUNK, n_boot - start), n))
        pear.append(_pearson_rows(x[idx], y[idx]))
        spear.append(_spearman_rows(x[idx], y[idx]))
    return np.concatenate(pear), np.concatenate(spear)


def _cluster_bootstrap(x: np.ndarray, y: np.ndarray, clusters: np.ndarray, n_boot: int,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson and Spearman of ``n_boot`` resamples of whole clusters (with replacement, as many as there are)."""
    rng = np.random.default_rng(seed)
    _, codes = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]
    pear, spear = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([members[c] for c in rng.integers(0, len(members), size=len(members))])
        pear[b] = _pearson_rows(x[idx][None], y[idx][None])[0]
        spear[b] = _spearman_rows(x[idx][None], y[idx][None])[0]
    return pear, spear


def _unit(sub: pd.DataFrame) -> str:
    """Plain-words description of what one point is, with the counts behind it."""
    n = len(sub)
    runs = sub["run_id"].nunique()
    datasets = sub["dataset"].nunique()
    has_cp = bool((~sub["final"]).any()) if "final" in sub else False
    if has_cp:
        states = len(sub[["run_id", "step"]].drop_duplicates())
        text = (f"one point per (run, checkpoint, held-out dataset): {n} points from {runs} runs "
                f"({states} run states incl. final) × {datasets} datasets")
    else:
        text = f"one point per (run, held-out dataset): {n} points"
        text += (f" = {runs} runs × {datasets} datasets" if n == runs * datasets
                 else f" from {runs} runs and {datasets} datasets (not every pair present)")
    tasks = sub["task"].nunique() if "task" in sub else 1
    if tasks > 1:
        text += f"; pooled over {tasks} tasks"
    return text


def correlations(df: pd.DataFrame, drifts: Sequence[str] | None = None, target: str = "delta_lp",
                 n_boot: int = 2000, seed: int = 0, cluster: str | None = "run_id",
                 per_dataset: bool = False) -> pd.DataFrame:
    """Per drift metric: n, Pearson r, Spearman rho and their percentile-bootstrap 95% CIs against ``target``.

    Rows with NaN in the drift or the target are skipped (per metric). Fewer than 3 points or a constant column
    gives NaN coefficients, never an exception. The bootstrap resamples whole clusters (the values of column
    ``cluster``: runs by default) with replacement, or single points with ``cluster=None``, from
    ``numpy.random.default_rng(seed)``: the same frame and seed give the same CIs. ``n_boot=0`` skips the CIs.
    ``per_dataset``: after the pooled row of each metric, one row per held-out dataset. Columns: drift, scope
    ("pooled" or the dataset), target, n, pearson_r, pearson_lo, pearson_hi, spearman_rho, spearman_lo,
    spearman_hi, n_boot, resampled, unit.
    """
    if drifts is None:  # every registered drift metric, in the figure's order
        drifts = [m.name for m in sorted(drift_metrics(), key=lambda m: m.figure_rank)]
    if isinstance(drifts, str):
        drifts = (drifts,)
    missing = [c for c in (target, *drifts) if c not in df.columns]
    if missing:
        raise SpecError(f"correlations: column(s) {missing} not in the points frame; available: {list(df.columns)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise SpecError(f"correlations: n_boot must be an integer >= 0, got {n_boot!r}")
    if cluster is not None and cluster not in df.columns:
        raise SpecError(f"correlations: cluster column {cluster!r} not in the points frame; available: "
                        f"{list(df.columns)}")
    scopes = [("pooled", df)]
    if per_dataset:
        scopes += [(str(name), part) for name, part in df.groupby("dataset", sort=True)]
    out = []
    for d in drifts:
        for scope, part in scopes:
            out.append(_coefficients(part, d, target, scope, int(n_boot), seed, cluster))
    return pd.DataFrame(out, columns=["drift", "scope", "target", "n", "pearson_r", "pearson_lo", "pearson_hi",
                                      "spearman_rho", "spearman_lo", "spearman_hi", "n_boot", "resampled", "unit"])


def _resampled(cluster: str | None) -> str:
    return "points" if cluster is None else "runs" if cluster == "run_id" else f"clusters of {cluster}"


def _coefficients(df: pd.DataFrame, d: str, target: str, scope: str, n_boot: int, seed: int,
                  cluster: str | None) -> dict:
    sub = df[df[d].notna() & df[target].notna()]
    x = sub[d].to_numpy(dtype=float)
    y = sub[target].to_numpy(dtype=float)
    row = {"drift": d, "scope": scope, "target": target, "n": int(x.size), "pearson_r": math.nan,
           "pearson_lo": math.nan, "pearson_hi": math.nan, "spearman_rho": math.nan, "spearman_lo": math.nan,
           "spearman_hi": math.nan, "n_boot": n_boot, "resampled": _resampled(cluster),
           "unit": _unit(sub) if len(sub) else "no points (metric absent)"}
    if x.size >= 3:
        row["pearson_r"] = float(_pearson_rows(x[None], y[None])[0])
        row["spearman_rho"] = float(_spearman_rows(x[None], y[None])[0])
        if n_boot and math.isfinite(row["pearson_r"]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                if cluster is None:
                    pb, sb = _bootstrap(x, y, n_boot, seed)
                else:
                    pb, sb = _cluster_bootstrap(x, y, sub[cluster].to_numpy(), n_boot, seed)
            row["pearson_lo"], row["pearson_hi"] = _ci(pb)
            row["spearman_lo"], row["spearman_hi"] = _ci(sb)
    return row


# ------------------------------------------------------------------------------------------------------- render

def _f(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{round(x, 3) + 0.0:+.3f}"  # + 0.0: no "-0.000"


def _ci_str(lo: float, hi: float) -> str:
    return "n/a" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{_f(lo)}, {_f(hi)}]"


def correlation_markdown(table: pd.DataFrame) -> str:
    """The ``correlations`` table as a GitHub Markdown table (coefficients to 3 decimals, n/a for NaN)."""
    rows = [[r.drift, r.scope, r.target, r.n, _f(r.pearson_r), _ci_str(r.pearson_lo, r.pearson_hi),
             _f(r.spearman_rho), _ci_str(r.spearman_lo, r.spearman_hi), r.resampled,
             str(r.unit).replace("|", "\\|")]
            for r in table.itertuples(index=False)]
    headers = ["drift", "scope", "vs", "n", "Pearson r", "95% CI", "Spearman ρ", "95% CI", "bootstrap resamples",
               "unit of correlation"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
