"""A dry run of a protocol at one site: every gate, for every analysis, with nothing released.

The node runs each analysis of the approved protocol alone on its own rows, through the same
policy check, differencing guard (checked, nothing recorded) and disclosure release it would apply
in the study's mode, checks each training against its policy and privacy budget, and reports per
analysis and training either "" (it would compute) or the rule that would refuse it. Rules on cross-site totals (under secure aggregation) can only be applied to real
totals, so they are not part of a dry run; in the clear, per-time checks use this site's own times.
"""

from __future__ import annotations

from analyses import driver, registry
from analyses.contract import DataError
from analyses.disclosure import Refused
from hospital_node import population
from hospital_node.ledger import Ledger
from hospital_node.privacy_ledger import PrivacyLedger
from hospital_node.site import Site
from workbench.protocol import Protocol
from workbench.training_spec import TrainingSpec


def verdicts(site: Site, protocol: Protocol, masked: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Per analysis: "" (would compute) or why this site would refuse it; and, for the site's own log only,
    the private details of data errors (e.g. an undeclared value)."""
    study = population.cohort(site, protocol)
    ledger = Ledger(site.state)
    found, private = {}, {}
    for analysis_id, spec in protocol.analyses.items():
        try:
            problems = site.policy.conflicts(spec.type, protocol.variables(spec))  # type: ignore[attr-defined]
            if problems:
                raise Refused("; ".join(problems))
            for rows, columns in population.row_sets(protocol, spec, study):
                ledger.check(rows, site.policy.min_cell_count, columns)
            exchange = driver.in_memory({site.id: study.rows}, {analysis_id: spec}, site.policy.limits, masked,
                                        {analysis_id: protocol.population(spec)})  # fmt: skip
            driver.run({analysis_id: registry.plan(spec, protocol.levels)}, exchange)
            found[analysis_id] = ""  # failures of a one-site fit (too few rows, no convergence) say nothing here
        except Refused as refusal:
            found[analysis_id] = str(refusal)
        except DataError as error:
            found[analysis_id] = f"bad data: {error}"
            if error.private:
                private[analysis_id] = error.private
    ledger_of_budget = PrivacyLedger(site.state)
    for spec in protocol.model.training:
        found[spec.id] = _training(site, protocol, spec, ledger_of_budget)
    return found, private


def _training(site: Site, protocol: Protocol, spec: TrainingSpec, ledger: PrivacyLedger) -> str:
    """Whether the site's policy and privacy budget let the whole training run (it spends its target ε)."""
    problems = site.policy.conflicts(spec.task, [*spec.columns(), *protocol.cohort_columns])
    if problems:
        return "; ".join(problems)
    if spec.privacy.delta > site.policy.delta:
        return f"the training's δ = {spec.privacy.delta:g} is above the site's δ = {site.policy.delta:g}"
    key = f"{protocol.sha256}/{spec.id}"
    if ledger.entry(key)["epsilon"] >= spec.privacy.target_epsilon * (1 - 1e-6):
        return "this training's privacy budget at the site is already spent (a finished training cannot be rerun)"
    total = ledger.spent_elsewhere(key) + spec.privacy.target_epsilon
    if total > site.policy.max_epsilon:
        return (f"the training would bring the site's ε to {total:.3g}, above its max_epsilon = "
                f"{site.policy.max_epsilon:g}")  # fmt: skip
    return ""
