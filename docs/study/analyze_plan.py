"""Tables and figures of the pre-registered studies of docs/study/PLAN.md, from their results.

Run by ``make study-figures`` (or ``python docs/study/analyze_plan.py``). It reads

* ``docs/study/resnet20/results/`` (Part A),
* ``docs/study/results/`` and ``docs/study/lenet_extra/results/`` (Part B),
* ``docs/study/lenet5_rescale/results/`` (Part C),

and writes ``docs/study/plan_tables.md`` and ``docs/study/resnet20/figures/*.png``. Every
test, family and verdict rule is the one PLAN.md fixed before the trials ran; cells whose
trials have not run yet are marked *pending* (the sweeps run in sittings).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from topo_pai.experiments.stats import COLLAPSE_BELOW, compare_arms, holm  # noqa: E402
from topo_pai.experiments.store import rows_to_records  # noqa: E402

HERE = Path(__file__).resolve().parent
RESNET = HERE / "resnet20" / "results"
LENET_FIRST = HERE / "results"
LENET_EXTRA = HERE / "lenet_extra" / "results"
RESCALE = HERE / "lenet5_rescale" / "results"
FIGURES = HERE / "resnet20" / "figures"
OUT = HERE / "plan_tables.md"

ALPHA = 0.05
MARGIN = 0.01  # claim 1's non-inferiority margin: 1.0 percentage point, accuracies as fractions
SPARSITIES_A = (0.9, 0.9684, 0.99, 0.9968)
#: The paper's ResNet-20 accuracies on CIFAR-10 at 99 % sparsity (its main figure).
PAPER_99 = {"npb": 70.70, "phew": 70.44, "synflow": 66.05, "snip": 62.43, "random": 35.99}
#: Labels of the first LeNet study's arms that issue 11 changed.
PREVIOUS = {"npb": "npb (previous)", "synflow": "synflow (channel)"}


# ------------------------------------------------------------------ loading
def load(directory: Path, relabel: dict | None = None) -> list[dict]:
    path = directory / "results.json"
    if not path.is_file():
        return []
    rows = rows_to_records(json.loads(path.read_text()))
    for r in rows:
        base = (relabel or {}).get(r["method"], r["method"])
        r["arm"] = f"{base}+shuffle" if r["shuffled"] else base
    return [r for r in rows if r.get("accuracy") is not None]


def cell(rows, model, arm, sparsity, key="accuracy") -> dict[int, float]:
    return {r["seed"]: r[key] for r in rows
            if r["model"] == model and r["arm"] == arm and r["sparsity"] == sparsity
            and r.get(key) is not None}


def pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def mean_sd(values) -> str:
    v = [float(x) for x in values]
    if not v:
        return "pending"
    m = sum(v) / len(v)
    if len(v) == 1:
        return f"{100 * m:.2f}"
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    return f"{100 * m:.2f} ± {100 * sd:.2f}"


def mean(values) -> float:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else math.nan


def log10_paths_cell(trials) -> str:
    """Mean log10 of the kept input-output paths over the trials that keep one; trials
    whose mask disconnects input from output (log10 = -inf) are counted, not averaged."""
    values = [float(r["log10_paths"]) for r in trials]
    kept = [v for v in values if math.isfinite(v)]
    if not kept:
        return "no path"
    cut = len(values) - len(kept)
    return f"{sum(kept) / len(kept):.2f}" + (f" ({cut}/{len(values)} no path)" if cut else "")


def table(header, rows) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


# ------------------------------------------------------------------ families
def family(tests, *, one_sided_less=False) -> list[dict]:
    """Each test: dict(label, a, b, collapse_a, collapse_b, expected); adds the comparison
    and Holm-adjusted p over the tests that could be run."""
    for t in tests:
        t["cmp"] = compare_arms(t["a"], t["b"], collapse=t.get("collapse_a"),
                                collapse_b=t.get("collapse_b"),
                                margin=MARGIN if one_sided_less else 0.0)
        t["complete"] = t["cmp"].n >= t["expected"]
        test = t["cmp"].test
        t["p"] = (test.p_less if one_sided_less else test.p) if test and t["complete"] \
            else math.nan
    for t, adj in zip(tests, holm([t["p"] for t in tests])):
        t["p_holm"] = adj
    return tests


def trainability_gap(n: int) -> int:
    """The plan's rule: collapse rates that differ by at least 2 of 3 (or 3 of 5) runs are
    reported as a difference in trainability (a majority of the paired seeds)."""
    return n // 2 + 1


def family_rows(tests, one_sided_less=False):
    rows = []
    for t in tests:
        c = t["cmp"]
        if c.n == 0:
            rows.append([t["label"], "pending", "", "", "", "", ""])
            continue
        status = "" if t["complete"] else f" (partial: {c.n}/{t['expected']} seeds)"
        if c.test is None:
            rates = f"collapsed {c.collapsed_a}/{c.n} vs {c.collapsed_b}/{c.n}"
            if abs(c.collapsed_a - c.collapsed_b) >= trainability_gap(c.n):
                rates += " (a difference in trainability)"
            rows.append([t["label"] + status, rates, "", "", "", "", ""])
            continue
        d = c.test
        p = d.p_less if one_sided_less else d.p
        rows.append([t["label"] + status, c.n, f"{100 * d.mean:+.2f}",
                     f"[{100 * d.ci[0]:+.2f}, {100 * d.ci[1]:+.2f}]",
                     "–" if math.isnan(d.dz) else f"{d.dz:+.2f}",
                     "–" if math.isnan(p) else f"{p:.3g}",
                     "–" if math.isnan(t["p_holm"]) else f"{t['p_holm']:.3g}"])
    return rows


HEAD = ["comparison (a − b)", "seeds", "mean (pp)", "95% CI (pp)", "d_z", "p", "p (Holm)"]


def family_table(tests, one_sided_less=False) -> list[str]:
    """The family's table; while some of its tests wait for trials, a line says that the
    Holm column adjusts over the tests run so far (fewer than the plan's family, so
    smaller than the final adjustment)."""
    out = table(HEAD, family_rows(tests, one_sided_less))
    waiting = sum(not t["complete"] for t in tests)
    if waiting:
        run = sum(not math.isnan(t["p"]) for t in tests)
        out += [f"*Interim:* p (Holm) adjusts over the {run} test(s) run so far; {waiting} "
                "wait for trials, and adding tests can only raise the adjusted values.", ""]
    return out


def significant(t, sign) -> bool:
    """Holm-significant at ALPHA with the mean on the given side of zero."""
    d = t["cmp"].test
    return bool(d and t["complete"] and t["p_holm"] <= ALPHA and sign * d.mean > 0)


# ------------------------------------------------------------------ part A
def part_a(rows) -> list[str]:
    out = ["## Part A: ResNet-20 (width 8, BatchNorm) on Fashion-MNIST", ""]
    if not rows:
        return out + ["*pending: no trial has finished yet.*", ""]
    model = "resnet20"
    arms = ["dense", "random", "random_erk", "snip", "synflow", "synflow+shuffle", "phew",
            "npb", "npb+shuffle", "npb_official"]
    out += [f"{len(rows)} of 145 trials finished. Test accuracy (%) after the last epoch, mean "
            f"± sd over seeds; *collapsed*: final validation accuracy below "
            f"{COLLAPSE_BELOW:.2f}. Effective sparsity = 1 − effective/total parameters.", ""]
    body = []
    for s in (0.0,) + SPARSITIES_A:
        for arm in (["dense"] if s == 0.0 else arms[1:]):
            acc = cell(rows, model, arm, s)
            if not acc:
                body.append([f"{100 * s:g}", arm, "pending", "", "", "", ""])
                continue
            val = cell(rows, model, arm, s, "val_accuracy")
            sel = [r for r in rows if r["model"] == model and r["arm"] == arm
                   and r["sparsity"] == s]
            k = sum(v < COLLAPSE_BELOW for v in val.values())
            eff_sp = mean(1 - r["effective_params"] / r["total_params"] for r in sel)
            topo = (f"{mean(r['effective_nodes'] for r in sel):.0f} / "
                    f"{log10_paths_cell(sel)} / {100 * eff_sp:.2f}")
            body.append([f"{100 * s:g}", arm, len(acc), mean_sd(acc.values()),
                         mean_sd(val.values()), f"{k}/{len(val)}", topo])
    out += table(["sparsity %", "arm", "seeds", "test acc", "val acc", "collapsed",
                  "eff. channels / log10 paths / eff. sparsity %"], body)

    def val(arm, s):
        return cell(rows, model, arm, s, "val_accuracy")

    # family A1: non-inferiority of shuffled masks below 99 %
    a1 = family([dict(label=f"{m} − {m}+shuffle at {100 * s:g}%",
                      a=cell(rows, model, m, s), b=cell(rows, model, f"{m}+shuffle", s),
                      collapse_a=val(m, s), collapse_b=val(f"{m}+shuffle", s), expected=3,
                      m=m, s=s)
                 for s in (0.9, 0.9684) for m in ("synflow", "npb")], one_sided_less=True)
    out += ["### Family A1 (claim 1): is shuffling within layers non-inferior below 99 %?", "",
            f"One-sided paired t-test of H0: mean(a − b) ≥ {100 * MARGIN:.1f} pp; Holm over "
            "the four.", ""]
    out += family_table(a1, one_sided_less=True)
    done = all(t["complete"] and t["cmp"].test for t in a1)
    worse = [t for t in a1 if t["cmp"].test and t["complete"]
             and t["cmp"].test.ci[0] > 0 and t["cmp"].test.mean > MARGIN]
    if worse:
        verdict = "**not supported**: shuffling lowers accuracy by more than the margin in " + \
            ", ".join(t["label"] for t in worse)
    elif done and all(t["p_holm"] <= ALPHA for t in a1):
        verdict = "**supported**: all four shuffled masks are non-inferior within 1 pp"
    elif done:
        verdict = "**inconclusive**: not every shuffled mask is shown non-inferior"
    else:
        verdict = "*pending*"
    out += [f"Claim 1 in this setting: {verdict}.", ""]

    # family A2: NPB at extreme sparsity
    a2 = family([dict(label=f"npb − {x} at {100 * s:g}%", a=cell(rows, model, "npb", s),
                      b=cell(rows, model, x, s), collapse_a=val("npb", s),
                      collapse_b=val(x, s), expected=5, x=x, s=s)
                 for s in (0.99, 0.9968) for x in ("synflow", "phew", "random_erk")])
    out += ["### Family A2 (claim 2): is NPB the best at 99 % and 99.68 %?", "",
            f"Two-sided paired t-tests; Holm over the "
            f"{sum(t['p'] == t['p'] for t in a2)} of the six comparisons that could be "
            "t-tested (a cell with a collapsed run is reported by its collapse counts and "
            "leaves the family).", ""]
    out += family_table(a2)
    done = all(t["complete"] for t in a2)
    if any(significant(t, -1) for t in a2):
        verdict = "**not supported**: NPB is significantly worse than " + ", ".join(
            t["label"].split(" − ")[1] for t in a2 if significant(t, -1))
    elif done and all(significant(t, +1) for t in a2 if t["x"] in ("synflow", "random_erk")):
        verdict = "**supported**: NPB beats SynFlow and random-ERK at both sparsities and " \
                  "is not worse than PHEW"
    elif done:
        verdict = "**inconclusive**"
    else:
        verdict = "*pending*"
    out += [f"Claim 2 in this setting: {verdict}.", ""]

    a3 = family([dict(label=f"npb − npb_official at {100 * s:g}%", a=cell(rows, model, "npb", s),
                      b=cell(rows, model, "npb_official", s), collapse_a=val("npb", s),
                      collapse_b=val("npb_official", s), expected=3) for s in SPARSITIES_A])
    out += ["### Family A3 (ablation): the fair-share node term against the official one", "",
            "Two-sided paired t-tests; Holm over the four.", ""]
    out += family_table(a3)

    body = []
    for m, paper in PAPER_99.items():
        ours = cell(rows, model, m, 0.99)
        body.append([m, f"{paper:.2f}", mean_sd(ours.values())])
    out += ["### Beside the paper (99 %)", "",
            "The paper: ResNet-20 (width 16) on CIFAR-10, 160 epochs. Ours: width 8, "
            "Fashion-MNIST, 5 epochs on 15k images. Compare orderings, not numbers.", ""]
    out += table(["method", "paper, CIFAR-10 (%)", "ours, Fashion-MNIST (%)"], body)
    return out


def figures_a(rows) -> list[str]:
    sparse = [r for r in rows if r["method"] != "dense"]
    if not sparse:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from topo_pai.experiments.plotting import plot_node_path_plane
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig = plot_node_path_plane(sparse, model="resnet20")
    fig.savefig(FIGURES / "node_path_plane.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = defaultdict(list)
    for r in rows:
        groups[r["arm"]].append(r)
    markers = "os^vD<>pP*Xh"
    for k, arm in enumerate(sorted(groups)):
        rs = groups[arm]
        color = plt.get_cmap("tab10")(k % 10)
        ax.scatter([100 * r["effective_params"] / r["total_params"] for r in rs],
                   [100 * r["accuracy"] for r in rs], color=color, marker=markers[k % 12],
                   facecolors="none" if "+shuffle" in arm else color, label=arm, s=28)
    ax.set_xscale("log")
    ax.invert_xaxis()  # sparser to the right
    ax.set_xlabel("effective density (%) = 100 − effective sparsity, log scale")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ResNet-20 (w8) on Fashion-MNIST: accuracy against effective sparsity")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(FIGURES / "accuracy_vs_effective_sparsity.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    empty = sorted({(r["arm"], r["sparsity"]) for r in rows if r["effective_params"] == 0})
    note = "" if not empty else (
        " Masks with no effective parameter cannot appear on the second figure's log axis: "
        + ", ".join(f"{arm} at {100 * s:g} %" for arm, s in empty) + ".")
    return ["Figures: [node-path plane per sparsity](resnet20/figures/node_path_plane.png), "
            "[accuracy against effective sparsity]"
            "(resnet20/figures/accuracy_vs_effective_sparsity.png)." + note, ""]


# ------------------------------------------------------------------ parts B and C
def part_b(first, extra) -> list[str]:
    out = ["## Part B: the LeNet study, corrected", "",
           "The first study's `npb` and `synflow` are labelled `npb (previous)` and `synflow "
           "(channel)`; `npb` here is today's NPB. The first study has no validation split, "
           "so collapse is read from the test accuracy (below "
           f"{COLLAPSE_BELOW:.2f}).", ""]
    if not extra:
        out += ["*The missing arms are pending (`make study-lenet-extra`).*", ""]
    rows = first + extra
    sps = (0.6838, 0.9, 0.9684, 0.99, 0.9968)
    models = ("lenet_300_100", "lenet5")
    body = []
    for model in models:
        d = cell(rows, model, "dense", 0.0)
        body.append([model, "dense", "0", mean_sd(d.values())])
        for s in sps:
            for arm in ("random_erk", "npb", "npb+shuffle"):
                acc = cell(rows, model, arm, s)
                k = sum(v < COLLAPSE_BELOW for v in acc.values())
                body.append([model, arm, f"{100 * s:g}",
                             mean_sd(acc.values()) + (f" ({k}/{len(acc)} collapsed)" if k else "")])
    out += ["### The new arms (test accuracy %)", ""]
    out += table(["model", "arm", "sparsity %", "test acc"], body)
    fams = {
        "B1: npb − random_erk": [("npb", "random_erk")],
        "B2: npb − npb+shuffle": [("npb", "npb+shuffle")],
        "B3: the first study's headlines, paired": [("npb (previous)", "synflow (channel)"),
                                                    ("npb (previous)", "phew")],
    }
    for name, pairs in fams.items():
        tests = family([dict(label=f"{model} {a} − {b} at {100 * s:g}%",
                             a=cell(rows, model, a, s), b=cell(rows, model, b, s), expected=3)
                        for model in models for s in sps for a, b in pairs])
        out += [f"### Family {name}", "", "Two-sided paired t-tests; Holm over the family.", ""]
        out += family_table(tests)
    # not one of the plan's families: the first study's shuffle results (its section 2), which
    # were Welch intervals, redone paired; Holm over this table alone
    tests = family([dict(label=f"{model} {m}+shuffle − {m} at {100 * s:g}%",
                         a=cell(rows, model, f"{m}+shuffle", s), b=cell(rows, model, m, s),
                         expected=3)
                    for model in models for s in sps for m in ("snip", "synflow (channel)",
                                                               "phew")])
    out += ["### Exploratory (not a family of the plan): the first study's shuffles, paired", "",
            "Shuffled − original; two-sided paired t-tests; Holm over this table.", ""]
    out += family_table(tests)
    return out


def part_c(first, extra, rescaled) -> list[str]:
    out = ["## Part C: the weight-scale control on LeNet-5", ""]
    if not rescaled:
        return out + ["*pending (`make study-lenet-extra`).*", ""]
    rows = first + extra + rescaled
    body = []
    for arm in ("random", "random_erk", "snip", "phew"):
        for s in (0.9684, 0.99, 0.9968):
            plain = cell(rows, "lenet5", arm, s)
            scaled = cell(rows, "lenet5", f"{arm}_rs", s)
            kp = sum(v < COLLAPSE_BELOW for v in plain.values())
            ks = sum(v < COLLAPSE_BELOW for v in scaled.values())
            body.append([arm, f"{100 * s:g}", f"{kp}/{len(plain)}", mean_sd(plain.values()),
                         f"{ks}/{len(scaled)}", mean_sd(scaled.values())])
    out += table(["arm", "sparsity %", "collapsed (plain)", "test acc (plain)",
                  "collapsed (rescaled)", "test acc (rescaled)"], body)
    return out


def main(argv=None) -> int:
    resnet = load(RESNET)
    first = load(LENET_FIRST, PREVIOUS)
    extra = load(LENET_EXTRA)
    rescaled = load(RESCALE)
    lines = ["# Tables of the pre-registered studies (generated)", "",
             "Generated by `docs/study/analyze_plan.py` from the committed results; the plan "
             "is [PLAN.md](PLAN.md). Differences are in percentage points (a − b), paired by "
             "seed.", ""]
    lines += part_a(resnet) + figures_a(resnet) + part_b(first, extra) + \
        part_c(first, extra, rescaled)
    OUT.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
