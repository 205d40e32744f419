"""Result tables and figures per analysis type; viewers get coarse versions (no small counts, no sites)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from matplotlib.figure import Figure

from ui import overlay, plots
from ui.roles import Role


def table(frame: pd.DataFrame, name: str, index: bool = True) -> None:
    """A table with a CSV download."""
    st.dataframe(frame, width="stretch", hide_index=not index)
    st.download_button(
        "CSV", frame.to_csv(index=index).encode(), file_name=f"{name}.csv", key=f"{name}-csv", on_click="ignore"
    )


def count(value: Any, role: Role) -> Any:
    """A count as a viewer may see it: below the minimum as "<k"; a range ("62-65") as it is unless it reaches below."""
    if not role.viewer:
        return value
    lower, upper = _bounds(value)
    if 0 < upper < role.min_count:
        return f"<{role.min_count}"
    return f"≤{upper}" if lower < role.min_count <= upper else value


def _bounds(value: Any) -> tuple[int, int]:
    """A count's lower and upper bound: a number is both; a published range "a-b" is a and b."""
    if isinstance(value, str):
        lower, _, upper = value.partition("-")
        return int(lower), int(upper or lower)
    return int(value), int(value)


def _percent(value: Any, n: int) -> str:
    """A count as a share of `n`, a range as a range of shares."""
    lower, upper = _bounds(value)
    return f"{100 * lower / n:.1f}" + (f"–{100 * upper / n:.1f}" if upper != lower else "") if n else ""


def analysis(analysis_id: str, result: dict[str, Any], role: Role, published_min: int) -> None:
    """One analysis' tables and figures; `published_min` is the study's minimum count on published totals
    (number-at-risk tables show counts below it as "<k", for every role)."""
    st.subheader(f"{analysis_id} · {result.get('type', '')}")
    if "error" in result:
        reason = result["error"] if not role.viewer else "not available (the analysis could not be completed)"
        st.warning(reason)
        return
    if not role.viewer:
        st.caption(f"n = {result['n']}, dropped for missing values = {result['n_dropped']}")
    if result["type"] == "kaplan_meier":
        _kaplan_meier(analysis_id, result, role, max(published_min, role.min_count if role.viewer else 0))
    else:
        RENDERERS[result["type"]](analysis_id, result, role)


def _describe(name: str, result: dict[str, Any], role: Role) -> None:
    rows = []
    for variable, summary in result["variables"].items():
        if summary["kind"] == "numeric":
            total = summary["n"] + summary["missing"]
            rows.append({"variable": variable, "n": count(summary["n"], role),
                         "missing %": round(100 * summary["missing"] / total, 1) if total else None,
                         "mean": summary["mean"], "sd": summary["sd"],
                         **{f"q{q}": value for q, value in summary.get("quantiles", {}).items()}})  # fmt: skip
    if rows:
        table(pd.DataFrame(rows), f"{name}-numeric", index=False)
    for reason in sorted({s["quantiles_withheld"] for s in result["variables"].values() if "quantiles_withheld" in s}):
        st.caption(f"Quantiles withheld: {reason}")
    for variable, summary in result["variables"].items():
        if summary["kind"] != "numeric":
            frame = pd.DataFrame(
                [{"level": level, "count": str(count(value, role)), "%": _percent(value, summary["n"])}
                 for level, value in summary["counts"].items()]
            )  # fmt: skip
            if role.viewer:
                frame = frame.drop(columns="count")
                hidden = [str(count(value, role)).startswith(("<", "≤")) for value in summary["counts"].values()]
                frame.loc[hidden, "%"] = "—"
            st.markdown(f"**{variable}**")
            table(frame, f"{name}-{variable}", index=False)


def _crosstab(name: str, result: dict[str, Any], role: Role) -> None:
    frame = pd.DataFrame(result["table"], index=result["row_levels"], columns=result["column_levels"])
    frame.index.name, frame.columns.name = result["row"], result["column"]
    if role.viewer or frame.map(lambda v: isinstance(v, str)).any().any():  # ranges: one text type for the table
        frame = frame.map(lambda v: str(count(v, role)))
    table(frame, name)
    if "chi2" in result:
        chi2 = result["chi2"]
        st.write(f"Pearson χ² = {chi2['statistic']:.4f}, df = {chi2['df']}, p = {chi2['p']:.4g}")
        if "fisher" in result:
            st.write(
                f"Fisher's exact test: odds ratio {result['fisher']['odds_ratio']}, p = {result['fisher']['p']:.4g}"
            )
    else:
        st.info(f"Tests {result['tests']}")


def _ttest(name: str, result: dict[str, Any], role: Role) -> None:
    groups = pd.DataFrame(result["groups"]).T
    if role.viewer:
        groups["n"] = groups["n"].map(lambda v: count(int(v), role))
    table(groups, f"{name}-groups")
    rows = {key: result[key] for key in ("welch", "pooled")}
    table(pd.DataFrame(rows).T.assign(difference=result["difference"]), f"{name}-tests")


def _anova(name: str, result: dict[str, Any], role: Role) -> None:
    groups = pd.DataFrame(result["groups"]).T
    if role.viewer:
        groups["n"] = groups["n"].map(lambda v: count(int(v), role))
    table(groups, f"{name}-groups")
    table(pd.DataFrame({key: result[key] for key in ("between", "within")}).T, f"{name}-anova")
    st.caption(f"F = {result['statistic']:.4f} on {result['df'][0]} and {result['df'][1]:g} df, p = {result['p']:.4g}")


def _pearson(name: str, result: dict[str, Any], role: Role) -> None:
    st.write(f"r({result['x']}, {result['y']}) = {result['r']:.4f}, CI "
             f"[{result['ci_lower']:.4f}, {result['ci_upper']:.4f}]; t = {result['statistic']:.4f} on "
             f"{result['df']:g} df, p = {result['p']:.4g}; n = {count(result['n'], role)}")  # fmt: skip


def _rmst(name: str, result: dict[str, Any], role: Role) -> None:
    st.caption(f"Mean survival time restricted to τ = {result['tau']:g} (area under the Kaplan–Meier curve)")
    table(pd.DataFrame(result["groups"]).T, f"{name}-groups")
    if "difference" in result:
        diff = result["difference"]
        st.write(f"{' − '.join(diff['groups'])}: {diff['estimate']:.4g} [{diff['ci_lower']:.4g}, {diff['ci_upper']:.4g}]"
                 f", z = {diff['z']:.4f}, p = {diff['p']:.4g}")  # fmt: skip


def _regression(name: str, result: dict[str, Any], role: Role) -> None:
    frame = pd.DataFrame(result["params"]).T
    table(frame, name)
    facts = {k: result[k] for k in ("log_likelihood", "deviance", "aic", "statistic") if k in result}
    st.caption(", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in facts.items()))


def _mixed_linear(name: str, result: dict[str, Any], role: Role) -> None:
    columns = ["coef", "se", "z", "p", "ci_lower", "ci_upper"]
    table(pd.DataFrame(result["params"]).T[columns], f"{name}-fixed")
    variance = result["group_variance"] + result["residual_variance"]
    components = pd.DataFrame(
        {
            "variance": [result["group_variance"], result["residual_variance"]],
            "share": [result["icc"], 1 - result["icc"]],
        },
        index=[f"between {result['group']} (random intercept)", "residual"],
    )
    table(components, f"{name}-variance")
    boundary = "; the group variance is at the boundary 0" if result["boundary"] else ""
    st.caption(f"{result['n_groups']} groups, REML log-likelihood = {result['log_likelihood']:.4f}, "
               f"ICC = {result['icc']:.4f}, total variance = {variance:.4g}{boundary}")  # fmt: skip


def _kaplan_meier(name: str, result: dict[str, Any], role: Role, floor: int) -> None:
    """Curves and a summary; researchers also get the number-at-risk table (counts below `floor` as "<floor")."""
    plots.show(plots.kaplan_meier(result, hide_below=floor), name)
    rows = []
    for group, curve in result["groups"].items():
        rows.append({"group": group, "n": count(curve["at_risk"][0], role), "events": count(sum(curve["events"]), role),
                     "median survival": curve["median"]})  # fmt: skip
    table(pd.DataFrame(rows), f"{name}-summary", index=False)
    if not role.viewer:
        times = plots.at_risk_times(result)
        risk = pd.DataFrame(
            {group: [plots.shown(n, floor) for n in plots.at_risk(curve, times)]
             for group, curve in result["groups"].items()},
            index=[f"{t:g}" for t in times],
        ).T  # fmt: skip
        risk.index.name = "number at risk / time"
        table(risk, f"{name}-at-risk")


def _logrank(name: str, result: dict[str, Any], role: Role) -> None:
    st.write(f"χ² = {result['statistic']:.4f} on {result['df']} df, p = {result['p']:.4g}"
             + (f" (stratified by {', '.join(result['strata'])})" if result["strata"] else ""))  # fmt: skip
    frame = pd.DataFrame(result["groups"]).T
    if role.viewer:
        frame["observed"] = frame["observed"].map(lambda v: count(v, role))
    table(frame, name)


def _cox(name: str, result: dict[str, Any], role: Role) -> None:
    columns = ["coef", "exp_coef", "se", "z", "p", "ci_lower", "ci_upper"]
    table(pd.DataFrame(result["params"]).T[columns], name)
    plots.show(plots.forest(result), f"{name}-forest")
    lr = result["likelihood_ratio_test"]
    st.caption(f"events = {count(result['events'], role)}, ties = {result['ties']}, log-likelihood = "
               f"{result['log_likelihood']:.4f}, LR test {lr['statistic']:.3f} on {lr['df']} df, p = {lr['p']:.3g}")  # fmt: skip


def _ipw_cox(name: str, result: dict[str, Any], role: Role) -> None:
    hazard = result["params"][result["treatment"]]
    st.markdown(f"**Weighted hazard ratio** ({result['weights']} weights{', stabilized' if result['stabilized'] else ''}"
                f"): {hazard['exp_coef']:.3f} [{hazard['exp_ci_lower']:.3f}, {hazard['exp_ci_upper']:.3f}], "
                f"p = {hazard['p']:.3g} (robust SE {hazard['se']:.4f}; model-based {hazard['se_model']:.4f})")  # fmt: skip
    arms = pd.DataFrame(result["arms"]).T
    arms[["n", "events"]] = arms[["n", "events"]].map(lambda v: count(int(v), role))
    table(arms, f"{name}-arms")
    st.markdown("**Covariate balance**")
    plots.show(plots.love(result["balance"]), f"{name}-love")
    table(pd.DataFrame(result["balance"]).T, f"{name}-balance")
    st.markdown("**Propensity model** (logistic)")
    table(pd.DataFrame(result["propensity"]["params"]).T, f"{name}-propensity")


def _cox_time_varying(name: str, result: dict[str, Any], role: Role) -> None:
    st.caption(f"{count(result['n'], role)} patients in {count(result['n_rows'], role)} (start, stop] rows")
    _cox(name, result, role)


def _mantel_haenszel(name: str, result: dict[str, Any], role: Role) -> None:
    exposure, outcome, levels = result["exposure"], result["outcome"], (result["exposed"], result["reference"])
    st.caption(f"{exposure} = {levels[0]} vs {levels[1]} (reference), outcome {outcome} = 1, stratified by "
               f"{', '.join(result['strata'])}")  # fmt: skip
    if "tables" in result:
        heads = [f"{exposure}={level}, {outcome}={event}" for level in levels for event in (1, 0)]
        frame = pd.DataFrame(
            [[str(count(v, role)) for v in entry["table"][0] + entry["table"][1]] for entry in result["tables"]],
            index=[", ".join(f"{k}={v}" for k, v in entry["stratum"].items()) for entry in result["tables"]],
            columns=heads,
        )
        table(frame, f"{name}-tables")
    if "not_computed" in result:
        st.info(f"Statistics not computed: {result['not_computed']}")
        return
    ratios = pd.DataFrame(
        {"estimate": [result["odds_ratio"], result["risk_ratio"]], "ci_lower": [result["ci_lower"], None],
         "ci_upper": [result["ci_upper"], None]},
        index=["odds ratio (Mantel–Haenszel)", "risk ratio (Mantel–Haenszel)"],
    )  # fmt: skip
    table(ratios, name)
    tests = {"CMH (odds ratio = 1)": result["test_null"]}
    if result["test_equal_odds"]:
        tests["Breslow–Day (equal odds ratios)"] = result["test_equal_odds"]
    table(pd.DataFrame(tests).T[["statistic", "df", "p"]], f"{name}-tests")
    st.caption(f"{100 * (1 - result['alpha']):g}% CI from SE(log OR) = {result['log_odds_se']:.4g} "
               f"(Robins–Breslow–Greenland); {result['n_strata']} strata with both levels and both outcomes"
               + ("; CMH with continuity correction" if result["test_null"]["correction"] else ""))  # fmt: skip


def _cumulative_incidence(name: str, result: dict[str, Any], role: Role) -> None:
    """Cumulative incidence curves with confidence bands (a panel per group, a colour per cause) and a summary."""
    groups = result["groups"]
    figure = Figure(figsize=(4.2 * len(groups) + 1, 4))
    axes = figure.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    for ax, (group, causes) in zip(axes, groups.items(), strict=True):
        for colour, (cause, curve) in enumerate(causes.items()):
            ax.step(curve["time"], curve["cif"], where="post", color=f"C{colour}", label=cause)
            ax.fill_between(curve["time"], curve["ci_lower"], curve["ci_upper"], step="post", alpha=0.2,
                            color=f"C{colour}")  # fmt: skip
        ax.set_title(f"{result['group']} = {group}" if result["group"] else "all", fontsize=10)
        ax.set_xlabel("time" + (f" ({result['time_grid']} grid)" if result.get("time_grid") else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[0].set_ylabel("cumulative incidence")
    axes[-1].legend(title="cause", frameon=False)
    figure.tight_layout()
    plots.show(figure, name)
    rows = [{"group": group, "cause": cause, "n": count(curve["at_risk"][0], role),
             "events": count(sum(curve["events"]), role), "at time": curve["time"][-1],
             "cumulative incidence": curve["cif"][-1], "ci_lower": curve["ci_lower"][-1],
             "ci_upper": curve["ci_upper"][-1]}
            for group, causes in groups.items() for cause, curve in causes.items()]  # fmt: skip
    table(pd.DataFrame(rows), f"{name}-summary", index=False)


def training(training_id: str, summary: dict[str, Any], role: Role, out: Path | None = None) -> None:
    st.subheader(f"model {training_id} · {summary.get('task', '')}")
    if "error" in summary:
        st.warning(summary["error"] if not role.viewer else "not available (the training could not be completed)")
        return
    st.caption(f"{summary['model']}, {summary['strategy']}, {len(summary['rounds'])} rounds, "
               f"DP-SGD target ε = {summary['target_epsilon']:g} per site at δ = {summary['delta']:g}")  # fmt: skip
    plots.show(plots.training(summary, per_site=not role.viewer), f"{training_id}-curves")
    rounds = pd.DataFrame([{"round": r["round"], **r["evaluate"]["weighted"]} for r in summary["rounds"]])
    table(rounds, f"{training_id}-rounds", index=False)
    model = out / summary["model_path"] if out else None
    if summary["task"] == "image_segmentation" and model and model.exists():
        with st.expander("The final model on an example series (synthetic, made on this computer)"):
            st.caption("No hospital's image leaves it: this CT series is generated here and read by the nodes' own "
                       "series loader with the training's spacing, size and window.")  # fmt: skip
            plots.show(_example(str(model.parent), model.stat().st_mtime_ns), f"{training_id}-example")
    if not role.viewer:
        plots.show(plots.epsilon(summary), f"{training_id}-epsilon")
        for refusal in summary["refusals"]:
            st.warning(f"round {refusal['round']} ({refusal['phase']}): {refusal['reason']}")


@st.cache_resource(show_spinner="Segmenting an example series …")
def _example(folder: str, version: int) -> Figure:
    """The example-series overlay, made once per model file `version` (a synthetic series is written, read and
    segmented)."""
    return overlay.segmentation_example(Path(folder))


RENDERERS: dict[str, Callable[[str, dict[str, Any], Role], None]] = {
    "describe": _describe,
    "crosstab": _crosstab,
    "ttest": _ttest,
    "anova": _anova,
    "pearson": _pearson,
    "linear": _regression,
    "logistic": _regression,
    "poisson": _regression,
    "logrank": _logrank,
    "rmst": _rmst,
    "cox": _cox,
    "cox_time_varying": _cox_time_varying,
    "ipw_cox": _ipw_cox,
    "cumulative_incidence": _cumulative_incidence,
    "mantel_haenszel": _mantel_haenszel,
    "mixed_linear": _mixed_linear,
}
