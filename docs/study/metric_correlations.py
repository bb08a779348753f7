"""Which graph measures predict accuracy? Rank correlations over every trained trial.

Run ``make study-figures`` (or ``python docs/study/metric_correlations.py [RESULTS_DIR ...]``;
default: every study results directory listed in ``STUDIES``). Two steps:

1. **Measures** (cached, resumable). The studies did not save their masks, so every
   trial's masks are rebuilt by re-running its seeded initialisation and pruning
   (:func:`topo_pai.experiments.trial.rebuild_trial`; nothing is trained) and
   kept only when they reproduce the trial's recorded effective nodes, effective
   parameters and log10 paths exactly. Methods changed since a study ran are retried
   with the options that recreate the old method (``LEGACY_OPTIONS``). Each trial's
   measures (``Topology.metrics`` totals, weights ``|w|`` at initialisation) are
   appended to ``docs/study/metrics/<study>.jsonl``, one fsync'ed line per trial; a
   rerun skips trials already there.
2. **Statistics** (``docs/study/metric_tables.md``): per model and sparsity, the
   Spearman rank correlation of every measure (and of nodes and paths) with test
   accuracy, with a stratified bootstrap 95% interval; the same pooled over
   sparsities after ranking within each sparsity (raw pooling would mostly measure
   sparsity itself); and a leave-one-method-out ridge model on within-sparsity
   z-scores that predicts a held-out method's accuracy deviation from the cell mean.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

HERE = Path(__file__).resolve().parent
#: Study results directories analysed by default (a later study is added here).
STUDIES = [HERE / "results", HERE / "lenet_extra" / "results", HERE / "lenet5_rescale" / "results",
           HERE / "resnet20" / "results"]
METRICS_DIR = HERE / "metrics"
TABLES = HERE / "metric_tables.md"
#: Options that recreate a method as it was before a change (tried after the config's own).
LEGACY_OPTIONS = {"synflow": [{"resolution": "channel"}], "npb": [{"variant": "official"}]}
BOOTSTRAP = 2000
RIDGE_ALPHA = 1.0
#: Predictors: (column, label). nodes and paths first, then the measures.
PREDICTORS = [
    ("effective_nodes", "effective nodes"), ("log10_paths", "log10 paths"),
    ("effective_params", "effective params"), ("effective_sparsity", "effective sparsity"),
    ("effective_kernels", "effective kernels"), ("min_degree", "min degree"),
    ("mean_in_degree", "mean in-degree"), ("mean_out_degree", "mean out-degree"),
    ("mean_ramanujan_gap", "mean Ramanujan gap"), ("min_ramanujan_gap", "min Ramanujan gap"),
    ("mean_spectral_gap", "mean spectral gap"),
    ("mean_weighted_spectral_gap", "mean weighted spectral gap"),
    ("sink_units", "sink units"), ("source_units", "source units"),
    ("disconnected_units", "disconnected units"), ("lost_in_edges", "lost in-edges"),
    ("lost_out_edges", "lost out-edges"),
]
FEATURE_SETS = {
    "nodes + paths": ["effective_nodes", "log10_paths"],
    "effective sparsity": ["effective_sparsity"],
    "spectral (Ramanujan, spectral, weighted gaps)": [
        "mean_ramanujan_gap", "min_ramanujan_gap", "mean_spectral_gap",
        "mean_weighted_spectral_gap"],
    "all measures": [c for c, _ in PREDICTORS],
}


# ------------------------------------------------------------------ step 1: measures
def _measure(cfg_dict: dict, row: dict) -> dict:
    """The measures of ``row``'s trial: its own columns when the sweep recorded them
    (``metrics = true``), else from masks rebuilt and checked against the row."""
    from topo_pai.experiments.schema import METRIC_COLUMNS

    if all(c in row for c in METRIC_COLUMNS):
        return dict(trial_id=row["trial_id"], reproduced=True, options={"recorded": True},
                    **{c: row[c] for c in METRIC_COLUMNS})
    try:
        return _rebuild_and_measure(cfg_dict, row)
    except Exception as exc:  # noqa: BLE001 - a trial that cannot be rebuilt is reported
        return dict(trial_id=row["trial_id"], reproduced=False, options=None,
                    error=f"{type(exc).__name__}: {exc}"[:500])


def _rebuild_and_measure(cfg_dict: dict, row: dict) -> dict:
    import topo_pai
    from topo_pai.experiments.config import SweepConfig, Trial
    from topo_pai.experiments.trial import matches_row, metric_columns, rebuild_trial

    cfg = SweepConfig.from_dict(cfg_dict)
    trial = Trial(row["model"], row["method"], bool(row["shuffled"]), float(row["sparsity"]),
                  int(row["seed"]))
    tries = [None] + LEGACY_OPTIONS.get(trial.method, [])
    for opts in tries:
        c = cfg
        if opts is not None:
            d = cfg.to_dict()
            d["method_options"] = {**d["method_options"], trial.method: opts}
            c = SweepConfig.from_dict(d)
        model, masks, shape = rebuild_trial(c, trial)
        topo = topo_pai.from_torch(model, masks, input_shape=shape)
        if matches_row(topo, row):
            out = dict(trial_id=row["trial_id"], reproduced=True, options=opts or {},
                       **metric_columns(model, masks, shape, topology=topo))
            return out
    return dict(trial_id=row["trial_id"], reproduced=False, options=None)


#: Run by the code of record (its own ``topo_pai`` first on the path): prune one trial as
#: that code's ``run_trial`` did, and save the masks and initial weights.
_OLD_CODE_SCRIPT = """
import json, os, sys, numpy as np, torch
import topo_pai
if not os.path.abspath(topo_pai.__file__).startswith(os.getcwd() + os.sep):
    sys.exit(f"imported {topo_pai.__file__}, not the code of record in {os.getcwd()}")
from topo_pai.experiments.sweep import SweepConfig, Trial, _datasets
from topo_pai.experiments.training import seed_everything
from topo_pai.models import get_model
from topo_pai.pruners import get_method
torch.set_num_threads(1)  # as the study's two sweep workers ran (cpu_count // workers)
cfg = SweepConfig.from_dict(json.loads(sys.argv[1])); row = json.loads(sys.argv[2])
trial = Trial(row["model"], row["method"], bool(row["shuffled"]), float(row["sparsity"]),
              int(row["seed"]))
train_set, _ = _datasets(cfg, None)
C, H, W = train_set.input_shape
seed_everything(trial.seed)
model = get_model(trial.model, in_channels=C, num_classes=train_set.num_classes,
                  input_size=(H, W), **cfg.model_kwargs.get(trial.model, {}))
options = dict(cfg.method_options.get(trial.method, {}))
data = None
if get_method(trial.method).needs_data:
    gen = torch.Generator().manual_seed(trial.seed)
    idx = torch.randperm(len(train_set), generator=gen)[:cfg.prune_samples]
    data = (train_set.x[idx], train_set.y[idx])
masks = topo_pai.prune(model, trial.method, trial.sparsity, input_shape=(C, H, W), data=data,
                       seed=trial.seed, **options)
if trial.shuffled:
    masks = topo_pai.prune(model, "shuffle", trial.sparsity, input_shape=(C, H, W),
                           seed=trial.seed, masks=masks)
arrays = {"m:" + k: np.asarray(v, dtype=np.uint8) for k, v in masks.items()}
arrays.update({"w:" + k: p.detach().numpy() for k, p in model.state_dict().items()})
np.savez(sys.argv[3], **arrays)
"""


def code_of_record(results_dir: Path) -> str | None:
    """The commit that last changed the study's results table (the code that produced it)."""
    import subprocess

    try:
        out = subprocess.run(["git", "log", "-1", "--format=%H", "--", "results.jsonl"],
                             cwd=results_dir, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _export_code(commit: str) -> Path:
    """``topo_pai`` at ``commit``, unpacked once into a temporary directory."""
    import subprocess
    import tempfile

    target = Path(tempfile.gettempdir()) / f"topo_pai_code_{commit[:12]}"
    if not (target / "topo_pai" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit, "topo_pai"], cwd=HERE.parent.parent,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run_with_code(code: Path, args: list[str]):
    """``python *args`` importing ``topo_pai`` from ``code`` (an exported commit).

    It runs *in* ``code``: ``python -c`` puts the working directory first on
    ``sys.path``, ahead of ``PYTHONPATH``, so run from the repository root it would
    import today's ``topo_pai`` instead of the code of record."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(code))
    return subprocess.run([sys.executable, *args], env=env, cwd=str(code),
                          capture_output=True, text=True)


def _measure_with_code(cfg_dict: dict, row: dict, commit: str) -> dict:
    """Re-prune ``row``'s trial with the code of ``commit`` (in a subprocess), then measure
    the masks with today's code."""
    import tempfile

    import torch

    import topo_pai
    from topo_pai.experiments.config import SweepConfig
    from topo_pai.experiments.trial import matches_row, metric_columns, trial_datasets
    from topo_pai.models import get_model

    code = _export_code(commit)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "masks.npz"
        proc = run_with_code(code, ["-c", _OLD_CODE_SCRIPT, json.dumps(cfg_dict),
                                    json.dumps(row), str(path)])
        if proc.returncode != 0 or not path.exists():
            return dict(trial_id=row["trial_id"], reproduced=False, options=None,
                        error=proc.stderr[-500:])
        with np.load(path) as z:
            masks = {k[2:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("m:")}
            state = {k[2:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("w:")}
    cfg = SweepConfig.from_dict(cfg_dict)
    train_set = trial_datasets(cfg, None)[0]  # today's: (train, val, test)
    shape = train_set.input_shape
    model = get_model(row["model"], in_channels=shape[0], num_classes=train_set.num_classes,
                      input_size=tuple(shape[1:]), **cfg.model_kwargs.get(row["model"], {}))
    model.load_state_dict(state)  # the initial weights the code of record pruned
    topo = topo_pai.from_torch(model, masks, input_shape=shape)
    if not matches_row(topo, row):
        return dict(trial_id=row["trial_id"], reproduced=False, options=None)
    return dict(trial_id=row["trial_id"], reproduced=True, options={"code": commit[:12]},
                **metric_columns(model, masks, shape, topology=topo))


def _measure_with_code_safe(cfg_dict: dict, row: dict, commit: str) -> dict:
    try:
        return _measure_with_code(cfg_dict, row, commit)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal to the whole study
        return dict(trial_id=row["trial_id"], reproduced=False, options=None,
                    error=f"{type(exc).__name__}: {exc}"[:500])


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: Path) -> dict:
    out = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: redo that trial
                continue
            out[rec["trial_id"]] = rec  # the last line for a trial wins (a later retry)
    return out


def measure_study(results_dir: Path, workers: int = 2) -> Path:
    cfg = json.loads((results_dir / "config.json").read_text())["config"]
    rows = [json.loads(line) for line in (results_dir / "results.jsonl").read_text().splitlines()
            if line.strip()]
    METRICS_DIR.mkdir(exist_ok=True)
    out = METRICS_DIR / f"{results_dir.parent.name}_{results_dir.name}.jsonl"
    done = _read_jsonl(out)
    todo = [r for r in rows if r["trial_id"] not in done and r.get("accuracy") is not None]
    print(f"{results_dir}: {len(rows)} trials, {len(todo)} to measure -> {out}", flush=True)
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(_measure, cfg, r) for r in todo]
        for n, fut in enumerate(futures, 1):
            rec = fut.result()
            _append(out, rec)
            print(f"  [{n}/{len(todo)}] {rec['trial_id']} reproduced={rec['reproduced']}",
                  flush=True)
    # Trials today's code cannot reproduce: once more with the code that produced the table
    # (a later line for a trial id replaces an earlier one; see _read_jsonl).
    done = _read_jsonl(out)
    commit = code_of_record(results_dir)
    retry = [r for r in rows if r["trial_id"] in done and not done[r["trial_id"]]["reproduced"]
             and "code_tried" not in done[r["trial_id"]]]
    if retry and commit:
        print(f"  {len(retry)} trials not reproduced by today's code: retrying with the code "
              f"of record {commit[:12]}", flush=True)
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_measure_with_code_safe, cfg, r, commit) for r in retry]
            for n, fut in enumerate(futures, 1):
                rec = dict(fut.result(), code_tried=commit[:12])
                _append(out, rec)
                print(f"  [{n}/{len(retry)}] {rec['trial_id']} reproduced={rec['reproduced']}",
                      flush=True)
    return out


# -------------------------------------------------------------- step 2: statistics
def _variant(r) -> str:
    return f"{r['method']}+shuffle" if r["shuffled"] else r["method"]


def load_trials(results_dir: Path) -> tuple[list[dict], int, dict]:
    rows = {r["trial_id"]: r for r in
            (json.loads(line) for line in (results_dir / "results.jsonl").read_text().splitlines()
             if line.strip())}
    measured = _read_jsonl(METRICS_DIR / f"{results_dir.parent.name}_{results_dir.name}.jsonl")
    trials, failed = [], defaultdict(int)
    for tid, m in measured.items():
        if not m["reproduced"]:
            failed[_variant(rows[tid])] += 1
            continue
        r = dict(rows[tid])
        r.update({k: v for k, v in m.items()
                  if k not in ("trial_id", "reproduced", "options", "code_tried")})
        r["legacy_options"] = m["options"]
        trials.append(r)
    return trials, len(rows), dict(failed)


def _x(trials, col):
    return np.array([np.nan if t[col] is None else float(t[col]) for t in trials])


def _spearman(x, y) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def _scaled_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks along the last axis (ties averaged), scaled to [-0.5, 0.5]."""
    n = v.shape[-1]
    r = stats.rankdata(v, axis=-1)
    return (r - 1) / (n - 1) - 0.5 if n > 1 else np.zeros_like(r)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / den, np.nan)


def _stratified(x, y, cells, idx) -> tuple[np.ndarray, np.ndarray]:
    """Within-cell scaled ranks of ``x`` and ``y`` for resamples ``idx`` (per cell: an
    index array of shape (B, n_cell)), concatenated over cells: (B, N) each."""
    xs, ys = [], []
    for c, j in idx.items():
        xs.append(_scaled_ranks(x[j]))
        ys.append(_scaled_ranks(y[j]))
    return np.concatenate(xs, axis=-1), np.concatenate(ys, axis=-1)


def stratified_spearman(x, y, cells, rng=None) -> tuple[float, float, float]:
    """Spearman rho of ``x`` and ``y`` after ranking both within each cell, with a
    percentile 95% interval over :data:`BOOTSTRAP` resamples of trials within each cell
    (one cell: the plain Spearman rho). Rows where either is not finite are dropped;
    NaN when either is constant within every cell."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, cells = x[ok], y[ok], cells[ok]
    groups = {c: np.flatnonzero(cells == c) for c in np.unique(cells)}
    groups = {c: g for c, g in groups.items() if g.size > 1}
    if sum(g.size for g in groups.values()) < 4:
        return math.nan, math.nan, math.nan
    full = {c: g[None, :] for c, g in groups.items()}
    rx, ry = _stratified(x, y, cells, full)
    rho = float(_rowwise_pearson(rx, ry)[0])
    if not math.isfinite(rho):
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(0) if rng is None else rng
    boot = {c: g[rng.integers(0, g.size, (BOOTSTRAP, g.size))] for c, g in groups.items()}
    bx, by = _stratified(x, y, cells, boot)
    vals = _rowwise_pearson(bx, by)
    vals = vals[np.isfinite(vals)]
    if vals.size < BOOTSTRAP // 2:
        return rho, math.nan, math.nan
    return rho, float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def correlation_table(trials) -> dict:
    """{(sparsity or 'pooled'): {column: (rho, lo, hi, n)}} for one model's trials."""
    rng = np.random.default_rng(0)
    acc = _x(trials, "accuracy")
    sp_ = np.array([t["sparsity"] for t in trials])
    out = {}
    for s in sorted(set(sp_)):
        idx = np.flatnonzero(sp_ == s)
        out[s] = {col: (*stratified_spearman(_x(trials, col)[idx], acc[idx], sp_[idx], rng),
                        idx.size) for col, _ in PREDICTORS}
    out["pooled"] = {col: (*stratified_spearman(_x(trials, col), acc, sp_, rng), len(trials))
                     for col, _ in PREDICTORS}
    return out


def _zscores(values, cells) -> np.ndarray:
    out = np.zeros(values.shape)
    for c in np.unique(cells):
        idx = cells == c
        v = values[idx]
        v = np.where(np.isfinite(v), v, np.nan)
        mu = np.nanmean(v) if np.isfinite(v).any() else 0.0
        sd = np.nanstd(v) if np.isfinite(v).any() else 0.0
        out[idx] = 0.0 if not sd > 0 else np.nan_to_num((v - mu) / sd)
    return out


def leave_one_method_out(trials) -> dict:
    """{feature set: {held-out method: (skill, rho, n)}}: a ridge model on within-sparsity
    z-scores, fitted on every other method, predicts the held-out method's accuracy minus
    its sparsity's mean; skill = 1 - MSE / MSE of predicting the mean (0), rho the Spearman
    correlation of predictions and outcomes over the held-out trials."""
    sp_ = np.array([t["sparsity"] for t in trials])
    acc = _x(trials, "accuracy")
    y = acc - np.array([acc[sp_ == s].mean() for s in sp_])
    methods = np.array([t["method"] for t in trials])  # shuffled variants go with their method
    out = {}
    for name, cols in FEATURE_SETS.items():
        X = np.column_stack([_zscores(_x(trials, c), sp_) for c in cols])
        res = {}
        for m in sorted(set(methods)):
            test = methods == m
            A, b = X[~test], y[~test]
            coef = np.linalg.solve(A.T @ A + RIDGE_ALPHA * np.eye(A.shape[1]), A.T @ b)
            pred = X[test] @ coef
            mse = float(np.mean((pred - y[test]) ** 2))
            base = float(np.mean(y[test] ** 2))
            res[m] = (1 - mse / base if base > 0 else math.nan, _spearman(pred, y[test]),
                      int(test.sum()))
        out[name] = res
    return out


def _cell(v) -> str:
    rho, lo, hi, _ = v
    if math.isnan(rho):
        return "–"
    mark = "**" if (lo > 0 or hi < 0) else ""
    return f"{mark}{rho:+.2f}{mark} [{lo:+.2f}, {hi:+.2f}]"


def write_tables(studies) -> str:
    lines = ["# Which graph measures predict accuracy? (generated tables)", "",
             "Generated by `docs/study/metric_correlations.py` (`make study-figures`); the "
             "discussion is in `docs/study/METRICS.md`. Spearman ρ of each predictor with test "
             "accuracy over the trials of one model at one sparsity (every method, shuffled "
             "variants and seed), with a 95% bootstrap interval "
             f"({BOOTSTRAP} resamples within each sparsity); **bold** where the interval "
             "excludes 0. *Pooled*: all sparsities, each predictor and the accuracy ranked "
             "within its sparsity first. – : the predictor is constant there.", ""]
    for results_dir in studies:
        trials, total, failed = load_trials(results_dir)
        dense = [t for t in trials if t["sparsity"] == 0]
        # an unpruned reference has no mask to rank: its measures are the dense network's
        trials = [t for t in trials if t["sparsity"] > 0]
        lines += [f"## {results_dir.relative_to(HERE.parent.parent)}", "",
                  f"{len(trials) + len(dense)} of {total} trials measured from reproduced masks"
                  + (f"; not reproduced (excluded): {failed}" if failed else "")
                  + (f"; the {len(dense)} dense reference trials are left out (nothing "
                     "pruned, nothing to rank)" if dense else "") + ".", ""]
        legacy = defaultdict(int)
        for t in trials:
            if t["legacy_options"] and "recorded" not in t["legacy_options"]:
                legacy[(t["method"], json.dumps(t["legacy_options"]))] += 1
        for (m, o), n in sorted(legacy.items()):
            lines.append(f"- {n} `{m}` trials reproduced only with the legacy options {o}.")
        lines.append("")
        for model in sorted({t["model"] for t in trials}):
            mt = [t for t in trials if t["model"] == model]
            table = correlation_table(mt)
            keys = [k for k in table if k != "pooled"] + ["pooled"]
            lines += [f"### {model}: Spearman ρ with accuracy", "",
                      "| predictor | " + " | ".join(
                          f"s={k:g} (n={table[k][PREDICTORS[0][0]][3]})" if k != "pooled"
                          else f"pooled (n={len(mt)})" for k in keys) + " |",
                      "|---" * (len(keys) + 1) + "|"]
            for col, label in PREDICTORS:
                lines.append(f"| {label} | " + " | ".join(_cell(table[k][col]) for k in keys)
                             + " |")
            lines.append("")
            lomo = leave_one_method_out(mt)
            methods = sorted(next(iter(lomo.values())))
            lines += [f"### {model}: leave-one-method-out ridge model", "",
                      "Skill = 1 − MSE/MSE(cell mean) on the held-out method's trials (> 0: "
                      "better than predicting each sparsity's mean accuracy); ρ: Spearman of "
                      "predicted and actual deviations.", "",
                      "| features | " + " | ".join(
                          f"{m} (n={next(iter(lomo.values()))[m][2]})" for m in methods)
                      + " | mean skill |",
                      "|---" * (len(methods) + 2) + "|"]
            for name, res in lomo.items():
                skills = [res[m][0] for m in methods]
                lines.append(f"| {name} | " + " | ".join(
                    f"{res[m][0]:+.2f} (ρ {res[m][1]:+.2f})" if math.isfinite(res[m][1])
                    else f"{res[m][0]:+.2f}" for m in methods)
                    + f" | {np.nanmean(skills):+.2f} |")
            lines.append("")
    text = "\n".join(lines)
    TABLES.write_text(text, encoding="utf-8")
    return text


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results_dirs", nargs="*", metavar="RESULTS_DIR",
                    help="study results directories (each with config.json and "
                         "results.jsonl); default: " + ", ".join(
                             str(p.relative_to(HERE.parent.parent)) for p in STUDIES))
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    studies = [Path(a).resolve() for a in args.results_dirs] or STUDIES
    for d in studies:
        if not (d / "config.json").is_file() or not (d / "results.jsonl").is_file():
            ap.error(f"{d} is not a study results directory (it needs config.json and "
                     "results.jsonl)")
    workers = int(os.environ.get("STUDY_WORKERS", "2"))
    for d in studies:
        measure_study(d, workers=workers)
    write_tables(studies)
    print(f"wrote {TABLES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
