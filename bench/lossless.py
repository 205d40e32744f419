"""How lossless is "lossless"? Federated results vs the same analysis on the pooled rows.

Prints, per analysis, the largest absolute difference from the reference library
(statsmodels, scipy, lifelines with tight options), on NCCTG lung split by its 18
real institutions, on the data splits and references of the tests (GBSG2, Canadian
senators by province, Stanford heart transplants, Rossi) and on FLamby Fed-TCGA-BRCA
split by its 6 regions; then the federated Cox model's test C-index per region next
to FLamby's published numbers.

    python bench/lossless.py [--brca ../shared/data/flamby_tcga_brca]
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import warnings
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from lifelines import AalenJohansenFitter, CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_rossi, load_stanford_heart_transplants
from lifelines.statistics import logrank_test, multivariate_logrank_test
from lifelines.utils import concordance_index, restricted_mean_survival_time, to_episodic_format
from pydantic import TypeAdapter
from scipy import stats
from statsmodels.duration.hazard_regression import PHReg
from statsmodels.duration.survfunc import survdiff

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.driver import run_in_memory
from analyses.registry import AnySpec
from tests import test_competing_risks as competing
from tests import test_ipw_cox as ipw
from tests import test_mantel_haenszel as mh
from tests import test_mixed_model as mixed
from tests import test_time_varying_cox as tv
from tests.conftest import pooled
from workbench.datasets import gbsg2_sites, lung_institutions

TIGHT = {"step_size": 1.0, "precision": 1e-12, "r_precision": 0.0}
QS = ("0.25", "0.5", "0.75")
FLAMBY_PUBLISHED = {"pooled (FLamby)": 0.676, "FedAvg (FLamby)": 0.732, "best strategy (FLamby)": 0.815}
ROWS: list[tuple[str, str, str, float]] = []


def federate(frames: dict[str, pd.DataFrame], **blocks: dict) -> dict[str, dict]:
    adapter = TypeAdapter(AnySpec)
    specs = {key: adapter.validate_python({"id": key, **block}) for key, block in blocks.items()}
    return run_in_memory(specs, frames)


def record(dataset: str, analysis: str, reference: str, ours: list[float], theirs: list[float]) -> None:
    ROWS.append((dataset, analysis, reference, float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))))


def params(result: dict, names: list[str], key: str) -> list[float]:
    return [result["params"][name][key] for name in names]


def lung() -> None:
    sites = lung_institutions()
    data = pd.concat([rows.assign(site=site) for site, rows in sites.items()], ignore_index=True)
    cov = ["age", "sex", "ph.ecog"]
    surv = {"duration": "time", "event": "status"}
    r = federate(
        sites,
        describe={"type": "describe", "variables": ["age", "wt.loss", "meal.cal"]},
        crosstab={"type": "crosstab", "row": "sex", "column": "ph.ecog"},
        ttest={"type": "ttest", "variable": "age", "group": "sex"},
        anova={"type": "anova", "variable": "age", "group": "ph.ecog"},
        pearson={"type": "pearson", "x": "age", "y": "wt.loss"},
        linear={"type": "linear", "outcome": "wt.loss", "covariates": cov},
        logistic={"type": "logistic", "outcome": "status", "covariates": cov},
        poisson={"type": "poisson", "outcome": "status", "covariates": ["age", "sex"], "exposure": "time"},
        km={"type": "kaplan_meier", **surv, "group": "sex"},
        rmst={"type": "rmst", **surv, "group": "sex", "tau": 365},
        logrank={"type": "logrank", **surv, "group": "sex"},
        logrank4={"type": "logrank", **surv, "group": "ph.ecog"},
        logrank_site={"type": "logrank", **surv, "group": "sex", "strata": ["site"]},
        cox={"type": "cox", **surv, "covariates": cov},
        cox_breslow={"type": "cox", **surv, "covariates": cov, "ties": "breslow"},
        cox_site={"type": "cox", **surv, "covariates": cov, "strata": ["site"]},
        cox_ridge={"type": "cox", **surv, "covariates": cov, "penalizer": 0.1},
    )
    d = "lung/18 inst"
    ours = [
        v
        for name in ("age", "wt.loss", "meal.cal")
        for v in (r["describe"]["variables"][name]["mean"], r["describe"]["variables"][name]["sd"])
    ]
    theirs = [v for name in ("age", "wt.loss", "meal.cal") for v in (data[name].mean(), data[name].std())]
    record(d, "describe mean, sd", "pandas", ours, theirs)
    quantiles = [r["describe"]["variables"][n]["quantiles"][q] for n in ("age", "wt.loss", "meal.cal") for q in QS]
    reference = [data[n].quantile(float(q)) for n in ("age", "wt.loss", "meal.cal") for q in QS]
    record(d, "describe quartiles", "pandas", quantiles, reference)
    table = pd.crosstab(data.sex, data["ph.ecog"]).to_numpy()
    chi2 = stats.chi2_contingency(table)
    record(
        d,
        "crosstab chi2, p",
        "scipy",
        [r["crosstab"]["chi2"]["statistic"], r["crosstab"]["chi2"]["p"]],
        [chi2.statistic, chi2.pvalue],
    )
    a, b = data.age[data.sex == 1], data.age[data.sex == 2]
    for name, equal in (("pooled", True), ("welch", False)):
        t = stats.ttest_ind(a, b, equal_var=equal)
        record(
            d,
            f"t-test {name} t, p",
            "scipy",
            [r["ttest"][name]["statistic"], r["ttest"][name]["p"]],
            [t.statistic, t.pvalue],
        )
    for sex in (1, 2):
        part = data[data.sex == sex]
        reference = restricted_mean_survival_time(KaplanMeierFitter().fit(part.time, part.status), t=365)
        record(d, f"RMST τ = 365 (sex {sex})", "lifelines", [r["rmst"]["groups"][str(sex)]["rmst"]], [reference])
    rows = data.dropna(subset=["age", "ph.ecog"])
    f = stats.f_oneway(*(rows.age[rows["ph.ecog"] == level] for level in sorted(rows["ph.ecog"].unique())))
    record(d, "one-way ANOVA F, p", "scipy", [r["anova"]["statistic"], r["anova"]["p"]], [f.statistic, f.pvalue])
    rows = data.dropna(subset=["age", "wt.loss"])
    pearson = stats.pearsonr(rows.age, rows["wt.loss"])
    interval = pearson.confidence_interval()
    record(d, "Pearson r, p, CI", "scipy", [r["pearson"][k] for k in ("r", "p", "ci_lower", "ci_upper")],
           [pearson.statistic, pearson.pvalue, interval.low, interval.high])  # fmt: skip
    names = ["Intercept", *cov]
    formula = " ~ age + sex + Q('ph.ecog')"
    rows = data[["wt.loss", *cov]].dropna()
    ols = smf.ols("Q('wt.loss')" + formula, rows).fit()
    record(
        d,
        "linear coef, se",
        "statsmodels OLS",
        params(r["linear"], names, "coef") + params(r["linear"], names, "se"),
        [*ols.params, *ols.bse],
    )
    rows = data[["status", *cov]].dropna()
    glm = smf.glm("status" + formula, rows, family=sm.families.Binomial()).fit(tol=1e-14)
    record(
        d,
        "logistic coef, se",
        "statsmodels GLM",
        params(r["logistic"], names, "coef") + params(r["logistic"], names, "se"),
        [*glm.params, *glm.bse],
    )
    pois = smf.glm("status ~ age + sex", data, family=sm.families.Poisson(), exposure=data.time).fit(tol=1e-14)
    names3 = ["Intercept", "age", "sex"]
    record(
        d,
        "poisson coef, se",
        "statsmodels GLM",
        params(r["poisson"], names3, "coef") + params(r["poisson"], names3, "se"),
        [*pois.params, *pois.bse],
    )
    ours, theirs = [], []
    for level in (1, 2):
        km = KaplanMeierFitter().fit(data.time[data.sex == level], data.status[data.sex == level])
        curve = r["km"]["groups"][str(level)]
        ours += curve["survival"] + curve["ci_lower"] + curve["ci_upper"]
        theirs += [
            *km.survival_function_.iloc[:, 0],
            *km.confidence_interval_.iloc[:, 0],
            *km.confidence_interval_.iloc[:, 1],
        ]
    record(d, "Kaplan-Meier S, CI", "lifelines", ours, theirs)
    lr = logrank_test(
        data.time[data.sex == 1], data.time[data.sex == 2], data.status[data.sex == 1], data.status[data.sex == 2]
    )
    record(d, "log-rank chi2", "lifelines", [r["logrank"]["statistic"]], [lr.test_statistic])
    rows = data.dropna(subset=["ph.ecog"])
    lr4 = multivariate_logrank_test(rows.time, rows["ph.ecog"], rows.status)
    record(d, "log-rank 4 groups chi2", "lifelines", [r["logrank4"]["statistic"]], [lr4.test_statistic])
    chi, _ = survdiff(data.time, data.status, data.sex, strata=data.site)
    record(d, "log-rank by site chi2", "statsmodels survdiff", [r["logrank_site"]["statistic"]], [chi])
    rows = data[["time", "status", *cov, "site"]].dropna()
    for key, ties, strata in (
        ("cox", "efron", None),
        ("cox_breslow", "breslow", None),
        ("cox_site", "efron", rows.site),
    ):
        ref = PHReg(rows.time, rows[cov], status=rows.status, ties=ties, strata=strata).fit(tol=1e-12)
        label = f"Cox {ties}" + (" by site" if strata is not None else "")
        record(
            d,
            f"{label} coef, se",
            "statsmodels PHReg",
            params(r[key], cov, "coef") + params(r[key], cov, "se"),
            [*ref.params, *ref.bse],
        )
    ref = CoxPHFitter().fit(rows[["time", "status", *cov]], "time", "status", fit_options=TIGHT)
    record(
        d,
        "Cox efron coef, se",
        "lifelines (tight)",
        params(r["cox"], cov, "coef") + params(r["cox"], cov, "se"),
        [*ref.params_, *ref.standard_errors_],
    )
    ref = CoxPHFitter(penalizer=0.1).fit(rows[["time", "status", *cov]], "time", "status", fit_options=TIGHT)
    record(
        d,
        "Cox L2 0.1 coef, se",
        "lifelines (tight)",
        params(r["cox_ridge"], cov, "coef") + params(r["cox_ridge"], cov, "se"),
        [*ref.params_, *ref.standard_errors_],
    )


def mantel_haenszel() -> None:
    """tests/test_mantel_haenszel.py: OR, its SE, CI, CMH and Breslow–Day tests, sex (2 vs 1) on death."""
    sites = lung_institutions()
    for strata in ("site", "ph.ecog"):
        block = {**mh.LUNG, "strata": [strata]}
        r = federate(sites, mh=block)["mh"]
        ref = mh._reference(pooled(sites), block, 2, 1)
        null, equal = ref.test_null_odds(), ref.test_equal_odds()
        tests = [r[test][key] for test in ("test_null", "test_equal_odds") for key in ("statistic", "p")]
        record("lung/18 inst", f"Mantel-Haenszel by {strata} OR, CI, tests", "statsmodels Stratified",
               [r["odds_ratio"], r["log_odds_se"], r["ci_lower"], r["ci_upper"], *tests],
               [ref.oddsratio_pooled, ref.logodds_pooled_se, *ref.oddsratio_pooled_confint(), null.statistic,
                null.pvalue, equal.statistic, equal.pvalue])  # fmt: skip


def mixed_linear() -> None:
    """tests/test_mixed_model.py: age ~ sex + ph.ecog with a random intercept per institution, REML."""
    sites = lung_institutions()
    r = federate(sites, m={"type": "mixed_linear", "outcome": "age", "covariates": ["sex", "ph.ecog"]})["m"]
    ref, _ = mixed._reference(pooled(sites), "age", ["sex", "ph.ecog"], "site")
    names = list(ref.fe_params.index)
    record("lung/18 inst", "mixed model coef, se, variances, loglik", "statsmodels MixedLM",
           params(r, names, "coef") + params(r, names, "se") + [r["group_variance"], r["residual_variance"],
                                                                 r["log_likelihood"]],
           [*ref.fe_params, *ref.bse_fe, ref.cov_re.iloc[0, 0], ref.scale, ref.llf])  # fmt: skip


def ipw_cox() -> None:
    """tests/test_ipw_cox.py: sex arms in lung (robust SE where no event time is tied), balance in GBSG2."""
    warnings.filterwarnings("ignore", "It appears your weights are not integers")  # lifelines' note on IPW weights
    sites = lung_institutions()
    block = {"type": "ipw_cox", **ipw.LUNG}
    r = federate(sites, c=block)["c"]["params"]["sex"]
    _, fitter, _ = ipw._reference(pooled(sites), block, robust=False)
    record("lung/18 inst", "IPW Cox (ATE) coef, model SE", "lifelines (weights)", [r["coef"], r["se_model"]],
           [fitter.params_["treated"], fitter.standard_errors_["treated"]])  # fmt: skip
    rows = pooled(sites).dropna(subset=ipw.LUNG["confounders"]).drop_duplicates("time", keep=False)
    untied = {site: part.drop(columns="site") for site, part in rows.groupby("site")}
    r = federate(untied, c=block)["c"]["params"]["sex"]
    _, fitter, _ = ipw._reference(rows, block, robust=True)
    record(f"lung/{len(untied)} inst untied", "IPW Cox (ATE) robust SE", "lifelines (robust)", [r["se"]],
           [fitter.standard_errors_["treated"]])  # fmt: skip
    sites = gbsg2_sites()
    block = {"type": "ipw_cox", **ipw.GBSG}
    balance = federate(sites, c=block)["c"]["balance"]
    data, _, _ = ipw._reference(pooled(sites), block, robust=False)
    dummies = pd.get_dummies(data[ipw.GBSG["confounders"]], drop_first=True, dtype=float)
    treated, control = data.treated == 1, data.treated == 0
    scale = np.sqrt((dummies[treated].var() + dummies[control].var()) / 2)

    def smd(w: pd.Series) -> pd.Series:
        mean = [dummies[arm].mul(w[arm], axis=0).sum() / w[arm].sum() for arm in (treated, control)]
        return (mean[0] - mean[1]) / scale

    columns = [re.sub(r"(.+)\[T\.(.+)\]", r"\1_\2", name) for name in balance]
    record("GBSG2/5 sites", "IPW Cox balance SMD before/after", "pandas",
           [balance[name][key] for key in ("smd_before", "smd_after") for name in balance],
           [*smd(pd.Series(1.0, data.index))[columns], *smd(data.w)[columns]])  # fmt: skip


def cif(curves: dict, times: pd.Series, causes: pd.Series, codes: list[int], alpha: float = 0.05) -> tuple[list, list]:
    """Our CIF, variance and interval per cause, next to lifelines' where it has a number (none where F = 0)."""
    ours, theirs = [], []
    for code in codes:
        fit = AalenJohansenFitter(alpha=alpha).fit(times, causes, event_of_interest=code)
        reference = np.vstack([fit.cumulative_density_.iloc[:, 0], fit.variance_, fit.confidence_interval_.T])
        known = np.isfinite(reference)
        ours += [*np.array([curves[str(code)][k] for k in ("cif", "variance", "ci_lower", "ci_upper")])[known]]
        theirs += [*reference[known]]
    return ours, theirs


def cumulative_incidence() -> None:
    """tests/test_competing_risks.py, against lifelines without its random jitter of tied times (its own estimator
    on the data as they are, where we take tied counts)."""
    no_jitter = staticmethod(lambda durations, events: False)
    with patch.object(AalenJohansenFitter, "_check_for_duplicates", no_jitter):
        r = federate(competing._gbsg_sites(), ci={**competing.CIF, "group": "hormone"})["ci"]
        ours, theirs = [], []
        for level, rows in competing._gbsg().groupby("hormone"):
            mine, reference = cif(r["groups"][str(level)], rows.rectime, rows.cause, [1, 2])
            ours, theirs = ours + mine, theirs + reference
        record("GBSG2/5 sites", "CIF recurrence, death: F, var, CI", "lifelines (no jitter)", ours, theirs)
        sites = competing._senators()
        block = {"type": "cumulative_incidence", "duration": "days", "event": "cause", "causes": [1, 2, 3, 4],
                 "time_grid": "year", "alpha": 0.1}  # fmt: skip
        r = federate(sites, ci=block)["ci"]
        data = pd.concat(sites.values())
        years = np.ceil(data.days / 365.25) * 365.25
        record(f"senators/{len(sites)} prov", "CIF 3 causes, yearly: F, var, CI", "lifelines (no jitter)",
               *cif(r["groups"]["all"], years, data.cause, [1, 2, 3], alpha=0.1))  # fmt: skip


def cox_time_varying() -> None:
    """tests/test_time_varying_cox.py: every summary column, the log-likelihood and the LR test."""
    episodes = to_episodic_format(load_rossi(), "week", "arrest", time_gaps=2.0)
    rossi = {"type": "cox_time_varying", "patient": "id", "start": "start", "stop": "stop", "event": "arrest",
             "covariates": ["fin", "age", "prio", "age_time"]}  # fmt: skip
    for dataset, sites, block in (
        ("Stanford HT/4 sites", tv._sites(load_stanford_heart_transplants()), tv.STANFORD),
        ("Rossi 2-week/4 sites", tv._sites(episodes.assign(age_time=episodes.age * episodes.stop)), rossi),
    ):
        r = federate(sites, tv=block)["tv"]
        ref = tv._reference(sites, block)
        names = block["covariates"]
        record(dataset, "time-varying Cox summary, loglik, LR", "lifelines (tight)",
               [r["params"][n][k] for n in names for k in tv.COLUMNS]
               + [r["log_likelihood"], r["likelihood_ratio_test"]["statistic"]],
               [ref.summary.loc[n, c] for n in names for c in tv.COLUMNS.values()]
               + [ref.log_likelihood_, ref.log_likelihood_ratio_test().test_statistic])  # fmt: skip


def brca(folder: Path) -> list[tuple[str, float]]:
    """FLamby Fed-TCGA-BRCA: its 6 regions as sites; L2 Cox on the train split, C-index on each test split."""
    table = pd.read_csv(folder / "brca.csv").merge(pd.read_csv(folder / "train_test_split.csv"), on="pid")
    table["split"], table["center"] = zip(*table.pop("fold2").str.split("_"), strict=True)
    features = [c for c in table.columns if c not in ("pid", "E", "T", "fold", "split", "center")]
    renamed = {c: f"x{i:02d}" for i, c in enumerate(features)}  # protocol-safe names; same columns
    table = table.rename(columns=renamed)
    features = list(renamed.values())
    train = table[table.split == "train"]
    features = [c for c in features if train[c].std() > 0]
    sites = {f"region-{c}": rows for c, rows in train.groupby("center")}
    block = {"type": "cox", "duration": "T", "event": "E", "covariates": features, "penalizer": 0.1}
    r = federate(sites, cox=block, km={"type": "kaplan_meier", "duration": "T", "event": "E"})
    ref = CoxPHFitter(penalizer=0.1).fit(train[["T", "E", *features]], "T", "E", fit_options=TIGHT)
    d = "TCGA-BRCA/6 regions"
    record(d, f"Cox L2 0.1 ({len(features)} covariates) coef, se", "lifelines (tight)",
           params(r["cox"], features, "coef") + params(r["cox"], features, "se"), [*ref.params_, *ref.standard_errors_])  # fmt: skip
    km = KaplanMeierFitter().fit(train["T"], train["E"])
    record(d, "Kaplan-Meier S, CI", "lifelines", r["km"]["groups"]["all"]["survival"] + r["km"]["groups"]["all"]["ci_lower"],
           [*km.survival_function_.iloc[:, 0], *km.confidence_interval_.iloc[:, 0]])  # fmt: skip
    beta = np.array(params(r["cox"], features, "coef"))
    regions = pd.read_csv(folder / "centers.csv").set_index("TSS Code")["Region"]
    scores = []
    for center, rows in table[table.split == "test"].groupby("center"):
        region = regions[rows.pid.str[5:7]].mode()[0]
        risk = rows[features].to_numpy() @ beta
        name = f"{center} {region} ({len(rows)} test patients)"
        scores.append((name, concordance_index(rows["T"], -risk, rows["E"])))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--brca", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/flamby_tcga_brca"
    )
    args = parser.parse_args()
    lung()
    mantel_haenszel()
    mixed_linear()
    ipw_cox()
    cumulative_incidence()
    cox_time_varying()
    scores = brca(args.brca) if (args.brca / "brca.csv").is_file() else []
    print(f"# lossless benchmark - Python {platform.python_version()}, {platform.machine()}, numpy {np.__version__}")
    print(f"{'data':<20} {'analysis':<40} {'reference':<22} {'max |diff|':>10}")
    for dataset, analysis, reference, diff in ROWS:
        print(f"{dataset:<20} {analysis:<40} {reference:<22} {diff:>10.1e}")
    if scores:
        print("\n# Federated Cox (L2 0.1, exact Newton) test C-index per FLamby region")
        for name, value in scores:
            print(f"{name:<40} {value:.3f}")
        print(f"{'mean over regions':<40} {np.mean([v for _, v in scores]):.3f}")
        for name, value in FLAMBY_PUBLISHED.items():
            print(f"{name:<40} {value:.3f}")
    else:
        print(f"\n(FLamby data not found at {args.brca}; pass --brca)")


if __name__ == "__main__":
    main()
