"""Readable text tables of a results document, for the terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd


def render(results: dict[str, Any]) -> str:
    """All analyses of a results document as text."""
    sites = ", ".join(s["id"] if s.get("rows") is None else f"{s['id']} ({s['rows']})" for s in results["sites"])
    parts = [
        f"Study {results['study']['id']}: {results['study']['title']}",
        f"protocol sha256 {results['protocol_sha256']}",
        f"sites: {sites}",
        f"{results['rounds']} rounds in {results['seconds']:.1f} s on {results['engine']}",
    ]
    for analysis_id, result in results["analyses"].items():
        parts.append("")
        if "error" in result:
            parts.append(f"== {analysis_id}: FAILED: {result['error']}")
            continue
        parts.append(
            f"== {analysis_id} ({result['type']}, n = {result['n']}, dropped for missing values = {result['n_dropped']})"
        )
        if result["type"] == "kaplan_meier":
            parts.append(_kaplan_meier(result, results.get("secure_aggregation", {}).get("min_count", 1)))
        else:
            parts.append(_RENDERERS[result["type"]](result))
    for training_id, summary in results.get("training", {}).items():
        parts += ["", _training(training_id, summary)]
    return "\n".join(parts)


def render_check(study: Any, document: dict[str, Any]) -> tuple[str, bool]:
    """A dry run's verdicts as text, per analysis; and whether every site would compute every analysis."""
    sites = document["sites"]
    masked = document["mode"] == "masked"
    rule = (
        f"secure aggregation: each site's reply is masked; minimum counts apply to the published cross-site totals "
        f"(largest site minimum: {document['limits']['min_count']})"
        if masked
        else "in the clear: each site applies its own minimum counts to its own reply"
    )
    lines = [
        f"Dry run of study '{study.model.study.id}' (protocol {study.sha256[:12]}) at {len(sites)} site(s); {rule}"
    ]
    silent = {site: verdicts["*"] for site, verdicts in sites.items() if "*" in verdicts}
    lines += [f"  site {site} would answer nothing: {reason}" for site, reason in silent.items()]
    names = [*study.analyses, *study.trainings]
    width = max((len(name) for name in names), default=0)
    for analysis_id in names:
        refusing = {site: v[analysis_id] for site, v in sites.items() if v.get(analysis_id)}
        if not refusing and not silent:
            lines.append(f"  {analysis_id:<{width}}  will compute")
        for site, reason in refusing.items():
            lines.append(f"  {analysis_id:<{width}}  {site} would refuse: {reason}")
        if not refusing and silent:
            lines.append(f"  {analysis_id:<{width}}  not computed without {', '.join(silent)}")
    for site, notes in document.get("notes", {}).items():
        lines += [f"  note from {site}: {note}" for note in notes]
    if masked:
        lines.append("Totals below the minimum count are published as ranges or not at all; that is decided on the "
                     "real totals when the study runs.")  # fmt: skip
    lines.append("Nothing was released; each site recorded the check in its audit log.")
    ok = not silent and not any(v for verdicts in sites.values() for v in verdicts.values())
    return "\n".join(lines), ok


def _training(training_id: str, summary: dict[str, Any]) -> str:
    if "error" in summary:
        return f"== training {training_id}: FAILED: {summary['error']}"
    rows = {
        f"round {r['round']}": {**r["evaluate"]["weighted"], "sites trained": len(r["train"]["sites"])}
        for r in summary["rounds"]
    }
    epsilon = ", ".join(f"{site} {value:.2f}" for site, value in summary["epsilon"].items())
    lines = [
        f"== training {training_id} ({summary['task']}, {summary['model']}, {summary['strategy']}; "
        f"held-out metrics weighted over sites)",
        _table(rows),
        f"DP-SGD ε spent per site (target {summary['target_epsilon']:g}, δ = {summary['delta']:g}): {epsilon}",
        f"model: {summary['model_path']} (best round {summary['best_round']}: {summary['best_model_path']})",
    ]
    skipped = {site: reasons for site, reasons in summary["skipped_images"].items() if reasons}
    what = "series" if summary["task"] == "image_segmentation" else "image(s)"
    for site, reasons in skipped.items():
        lines.append(f"{site} skipped " + ", ".join(f"{n} {what}: {reason}" for reason, n in reasons.items()))
    lines += [f"refused: {r['reason']} (round {r['round']}, {r['phase']})" for r in summary["refusals"]]
    return "\n".join(lines)


def _table(rows: dict[str, dict[str, Any]], columns: list[str] | None = None) -> str:
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if columns:
        frame = frame[columns]
    return frame.to_string(float_format=lambda v: f"{v:.4g}")


def _describe(result: dict[str, Any]) -> str:
    numeric = {k: {**v, **_quartiles(v)} for k, v in result["variables"].items() if v["kind"] == "numeric"}
    quartiles = ["median", "q1", "q3"] if any("median" in v for v in numeric.values()) else []
    lines = [_table(numeric, ["n", "missing", "mean", "sd", *quartiles])] if numeric else []
    lines += sorted(
        {f"quantiles withheld: {v['quantiles_withheld']}" for v in numeric.values() if "quantiles_withheld" in v}
    )
    for name, summary in result["variables"].items():
        if summary["kind"] != "numeric":
            counts = ", ".join(f"{level}: {count}" for level, count in summary["counts"].items())
            lines.append(f"{name} (missing {summary['missing']}): {counts}")
    return "\n".join(lines)


def _quartiles(summary: dict[str, Any]) -> dict[str, Any]:
    """Median and quartiles of a numeric variable's summary, where computed."""
    quantiles = summary.get("quantiles", {})
    return {name: quantiles[q] for name, q in (("median", "0.5"), ("q1", "0.25"), ("q3", "0.75")) if q in quantiles}


def _crosstab(result: dict[str, Any]) -> str:
    table = pd.DataFrame(result["table"], index=result["row_levels"], columns=result["column_levels"])
    table.index.name, table.columns.name = result["row"], result["column"]
    if "chi2" not in result:
        return f"{table.to_string()}\ntests {result['tests']}"
    chi2 = result["chi2"]
    lines = [table.to_string(), f"Pearson chi2 = {chi2['statistic']:.4f}, df = {chi2['df']}, p = {chi2['p']:.4g}"]
    if "fisher" in result:
        lines.append(f"Fisher exact: odds ratio = {result['fisher']['odds_ratio']}, p = {result['fisher']['p']:.4g}")
    return "\n".join(lines)


def _ttest(result: dict[str, Any]) -> str:
    lines = [_table(result["groups"])]
    for name in ("welch", "pooled"):
        t = result[name]
        lines.append(
            f"{name}: difference = {result['difference']:.4g} [{t['ci_lower']:.4g}, {t['ci_upper']:.4g}], "
            f"t = {t['statistic']:.4f}, df = {t['df']:.1f}, p = {t['p']:.4g}"
        )
    return "\n".join(lines)


def _anova(result: dict[str, Any]) -> str:
    between, within = result["between"], result["within"]
    return "\n".join([
        _table(result["groups"]),
        f"between groups: SS = {between['ss']:.4g}, df = {between['df']}; within: SS = {within['ss']:.4g}, "
        f"df = {within['df']:g}; F = {result['statistic']:.4f}, p = {result['p']:.4g}",
    ])  # fmt: skip


def _pearson(result: dict[str, Any]) -> str:
    return (f"r({result['x']}, {result['y']}) = {result['r']:.4f} [{result['ci_lower']:.4f}, {result['ci_upper']:.4f}], "
            f"n = {result['n']}, t = {result['statistic']:.4f}, df = {result['df']:g}, p = {result['p']:.4g}")  # fmt: skip


def _rmst(result: dict[str, Any]) -> str:
    lines = [f"restricted to tau = {result['tau']:g}", _table(result["groups"])]
    if "difference" in result:
        diff = result["difference"]
        first, second = diff["groups"]
        lines.append(f"{first} − {second}: {diff['estimate']:.4g} [{diff['ci_lower']:.4g}, {diff['ci_upper']:.4g}], "
                     f"z = {diff['z']:.4f}, p = {diff['p']:.4g}")  # fmt: skip
    return "\n".join(lines)


def _glm(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            _table(result["params"], ["coef", "se", "z", "p", "ci_lower", "ci_upper"]),
            f"log-likelihood = {result['log_likelihood']:.4f}, deviance = {result['deviance']:.4f}, "
            f"AIC = {result['aic']:.4f}",
        ]
    )


def _kaplan_meier(result: dict[str, Any], k: int) -> str:
    """Per group: patients, events, median; counts below the study's minimum `k` shown as `<k`."""
    rows = {
        group: {
            "n": _small(curve["at_risk"][0], k),
            "events": _small(sum(curve["events"]), k),
            "median": curve["median"],
        }
        for group, curve in result["groups"].items()
    }
    return _table(rows)


def _small(count: int, k: int) -> int | str:
    return f"<{k}" if 0 < count < k else count


def _logrank(result: dict[str, Any]) -> str:
    strata = f" stratified by {', '.join(result['strata'])}" if result["strata"] else ""
    return "\n".join(
        [
            _table(result["groups"]),
            f"chi2 = {result['statistic']:.4f}, df = {result['df']}, p = {result['p']:.4g}{strata}",
        ]
    )


def _cox(result: dict[str, Any]) -> str:
    lr = result["likelihood_ratio_test"]
    return "\n".join(
        [
            _table(result["params"], ["coef", "exp_coef", "se", "z", "p", "ci_lower", "ci_upper"]),
            f"events = {result['events']}, ties = {result['ties']}, log-likelihood = {result['log_likelihood']:.4f}, "
            f"LR test = {lr['statistic']:.4f} on {lr['df']} df (p = {lr['p']:.4g})",
        ]
    )


def _ipw_cox(result: dict[str, Any]) -> str:
    hazard = result["params"][result["treatment"]]
    stabilized = ", stabilized" if result["stabilized"] else ""
    return "\n".join([
        f"weighted hazard ratio ({result['weights']} weights{stabilized}) = {hazard['exp_coef']:.4f} "
        f"[{hazard['exp_ci_lower']:.4f}, {hazard['exp_ci_upper']:.4f}], p = {hazard['p']:.4g}, robust SE = "
        f"{hazard['se']:.4f} (model-based {hazard['se_model']:.4f}), events = {result['events']}",
        _table(result["arms"]),
        "balance (standardized mean differences):",
        _table(result["balance"], ["smd_before", "smd_after"]),
    ])  # fmt: skip


def _cox_time_varying(result: dict[str, Any]) -> str:
    return f"{result['n']} patients in {result['n_rows']} (start, stop] rows\n" + _cox(result)


def _mantel_haenszel(result: dict[str, Any]) -> str:
    exposure, outcome = result["exposure"], result["outcome"]
    levels = (result["exposed"], result["reference"])
    lines = [f"{exposure} = {levels[0]} vs {levels[1]}, outcome {outcome}, strata: {', '.join(result['strata'])}"]
    if "tables" in result:
        heads = [f"{exposure}={level}, {outcome}={event}" for level in levels for event in (1, 0)]
        rows = {}
        for entry in result["tables"]:
            stratum = ", ".join(f"{k}={v}" for k, v in entry["stratum"].items())
            rows[stratum] = dict(zip(heads, entry["table"][0] + entry["table"][1], strict=True))
        lines.append(_table(rows))
    if "not_computed" in result:
        return "\n".join([*lines, f"statistics not computed: {result['not_computed']}"])
    null, equal = result["test_null"], result["test_equal_odds"]
    lines += [
        (
            f"pooled odds ratio = {result['odds_ratio']:.4g} [{result['ci_lower']:.4g}, {result['ci_upper']:.4g}] "
            f"({100 * (1 - result['alpha']):g}% CI), SE(log OR) = {result['log_odds_se']:.4g}, "
            f"risk ratio = {result['risk_ratio']:.4g}; {result['n_strata']} informative strata"
        ),
        f"CMH test: chi2 = {null['statistic']:.4f} on 1 df, p = {null['p']:.4g}"
        + (" (continuity corrected)" if null["correction"] else ""),
        (
            f"Breslow-Day test of equal odds ratios: chi2 = {equal['statistic']:.4f} on {equal['df']} df, "
            f"p = {equal['p']:.4g}"
            if equal
            else "Breslow-Day test of equal odds ratios: needs two or more informative strata"
        ),
    ]
    return "\n".join(lines)


def _cumulative_incidence(result: dict[str, Any]) -> str:
    """Per group and cause: patients, events, and the cumulative incidence at the group's last time with its CI."""
    rows = {}
    for group, causes in result["groups"].items():
        for cause, curve in causes.items():
            name = f"{result['group']} = {group}, {cause}" if result["group"] else cause
            last = {key: curve[key][-1] for key in ("time", "cif", "ci_lower", "ci_upper")}
            rows[name] = {"n": curve["at_risk"][0], "events": sum(curve["events"]), **last}
    return _table(rows)


def _mixed_linear(result: dict[str, Any]) -> str:
    boundary = " (at the boundary: no variation between groups)" if result["boundary"] else ""
    variances = (
        f"random intercept per {result['group']} ({result['n_groups']} groups), REML: group variance = "
        f"{result['group_variance']:.4g}{boundary}, residual variance = {result['residual_variance']:.4g}, "
        f"ICC = {result['icc']:.4f}, log-likelihood = {result['log_likelihood']:.4f}"
    )
    return _table(result["params"], ["coef", "se", "z", "p", "ci_lower", "ci_upper"]) + "\n" + variances


_RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "describe": _describe,
    "crosstab": _crosstab,
    "ttest": _ttest,
    "anova": _anova,
    "pearson": _pearson,
    "linear": _glm,
    "logistic": _glm,
    "poisson": _glm,
    "logrank": _logrank,
    "rmst": _rmst,
    "cox": _cox,
    "cox_time_varying": _cox_time_varying,
    "ipw_cox": _ipw_cox,
    "cumulative_incidence": _cumulative_incidence,
    "mantel_haenszel": _mantel_haenszel,
    "mixed_linear": _mixed_linear,
}
