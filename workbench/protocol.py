"""Study protocols: TOML validated against a schema, identified by the SHA-256 of their text.

Nodes read the same module to interpret a protocol they receive, so coordinator and
sites can never disagree on what an analysis block means.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from analyses.columns import Level, label
from analyses.describe import DescribeSpec
from analyses.registry import TYPES, AnySpec
from analyses.spec import Spec
from workbench.errors import UserError
from workbench.omop_cohort import ConceptSet, Covariate, Entry, Exposure, OmopCohort, Outcome
from workbench.training_spec import TrainingPrivacy, TrainingSpec


class ProtocolError(UserError):
    """The protocol file is not valid; the message names the field."""


class StudySection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    title: str = Field(min_length=1)
    version: str = "1"
    description: str = ""
    purpose: str = Field("", description="why the study is done (ethics review, GDPR Art. 35(7)(a))")
    research_questions: list[str] = Field(default_factory=list)
    principal_investigator: str = ""
    lawful_basis: str = Field(
        "", description="e.g. GDPR Art. 6(1)(e) and 9(2)(j): scientific research in the public interest"
    )
    retention: str = Field("", description="how long results and logs are kept")


Operator = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "missing", "not missing"]
Value = float | str


class Filter(BaseModel):
    """One structured condition on the cohort table (never evaluated as code)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    op: Operator
    value: Value | list[Value] | None = None

    @model_validator(mode="after")
    def _value_fits_operator(self) -> Filter:
        if self.op in ("missing", "not missing"):
            if self.value is not None:
                raise ValueError(f"operator '{self.op}' takes no value")
        elif self.op in ("in", "not in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"operator '{self.op}' needs a list value, e.g. value = [0, 1]")
        elif self.value is None or isinstance(self.value, list):
            raise ValueError(f"operator '{self.op}' needs a single value")
        return self


class CohortSection(BaseModel):
    """The study population: a site table with filters, or (`source = "omop"`) a cohort on the site's OMOP CDM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["files", "omop"] = "files"
    table: str = Field("patients", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", max_length=64)
    filters: list[Filter] = Field(default_factory=list)
    missing: Literal["complete_cases", "per_analysis"] = Field(
        "complete_cases",
        description="complete_cases: every analysis uses the rows with a value in every variable the protocol's "
        "analyses read (one population per study); per_analysis: each analysis drops only its own incomplete rows",
    )
    concept_sets: dict[str, ConceptSet] = Field(default_factory=dict)
    exposure: Exposure | None = None
    entry: Entry = Entry()
    outcome: Outcome | None = None
    covariates: list[Covariate] = Field(default_factory=list)

    @model_validator(mode="after")
    def _source_fields(self) -> CohortSection:
        omop = ("concept_sets", "exposure", "entry", "outcome", "covariates")
        given = [name for name in omop if name in self.model_fields_set]
        if self.source == "files" and given:
            raise ValueError(f"'{given[0]}' belongs to an OMOP cohort: add source = \"omop\" to [cohort]")
        if self.source == "omop":
            if "table" in self.model_fields_set:
                raise ValueError("an OMOP cohort is built from the site's CDM, not a table: remove 'table'")
            if self.exposure is None:
                raise ValueError("an OMOP cohort needs [cohort.exposure] (its first exposure is the index date)")
            try:
                self.omop  # noqa: B018 (validates the whole definition)
            except ValidationError as error:
                raise ValueError(str(error.errors()[0]["msg"]).removeprefix("Value error, ")) from None
        return self

    @functools.cached_property
    def omop(self) -> OmopCohort | None:
        """The OMOP cohort definition (None for a file cohort)."""
        if self.source != "omop" or self.exposure is None:
            return None
        return OmopCohort(concept_sets=self.concept_sets, exposure=self.exposure, entry=self.entry,
                          outcome=self.outcome, covariates=self.covariates)  # fmt: skip


class VariableSection(BaseModel):
    """What the protocol declares about one column: the values it may take."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: list[float | str] = Field(min_length=1, description="every value the column may take")

    @field_validator("levels")
    @classmethod
    def _one_kind(cls, levels: list[float | str]) -> list[float | str]:
        if len({isinstance(level, str) for level in levels}) > 1:
            raise ValueError("levels must be all numbers or all text")
        if len(set(levels)) != len(levels):
            raise ValueError("a level is listed twice")
        return levels


class PrivacySection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    secure_aggregation: bool = True
    """Sites mask every additive reply so the coordinator learns only cross-site sums."""


class FederationSection(BaseModel):
    """The study's sites and their pinned identity keys (OpenSSH `ssh-ed25519 …` lines)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sites: dict[str, str] = Field(default_factory=dict)

    @field_validator("sites")
    @classmethod
    def _keys(cls, sites: dict[str, str]) -> dict[str, str]:
        for site, line in sites.items():
            try:
                key = serialization.load_ssh_public_key(line.encode())
            except (ValueError, UnsupportedAlgorithm):
                raise ValueError(
                    f"site '{site}': not an OpenSSH public key (workbench node identity prints it)"
                ) from None
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"site '{site}': the identity key must be ssh-ed25519")
        return sites


class ProtocolModel(BaseModel):
    """The whole protocol: `[study]`, `[cohort]`, `[variables]`, `[privacy]`, `[federation]`, `[[analysis]]` and
    `[[training]]` blocks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: StudySection
    cohort: CohortSection = CohortSection()
    variables: dict[str, VariableSection] = Field(default_factory=dict)
    privacy: PrivacySection = PrivacySection()
    federation: FederationSection = FederationSection()
    analysis: list[AnySpec] = Field(default_factory=list)
    training: list[TrainingSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something_to_do(self) -> ProtocolModel:
        if not self.analysis and not self.training:
            raise ValueError("the protocol has no [[analysis]] and no [[training]] block")
        ids = [block.id for block in [*self.analysis, *self.training]]
        ids += [t.scaling_id for t in self.training if t.task == "tabular_classification"]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"id '{repeated[0]}' is used twice; give each analysis and training its own id")
        if self.privacy.secure_aggregation and not self.federation.sites:
            raise ValueError(
                "[privacy] secure_aggregation is on (the default) but [federation.sites] pins no site: add one line "
                "per site, as `workbench node identity --site DIR` prints it, or set secure_aggregation = false"
            )
        return self

    @model_validator(mode="after")
    def _declared_levels(self) -> ProtocolModel:
        for spec in self.analysis:
            for name in spec.grouping():
                if name not in self.variables:
                    raise ValueError(
                        f"analysis '{spec.id}' groups by '{name}': declare the values it may take in [variables], "
                        f"e.g. {_toml_key(name)} = {{ levels = [1, 2] }}"
                    )
            wanted = getattr(spec, "groups", None) or []
            known = {label(level) for level in self.variables[spec.grouping()[0]].levels} if wanted else set()
            for group in wanted:
                if label(group) not in known:
                    raise ValueError(f"analysis '{spec.id}': group {label(group)!r} is not among the declared levels "
                                     f"of '{spec.grouping()[0]}' ({', '.join(sorted(known))})")  # fmt: skip
        return self


@dataclass(frozen=True)
class Protocol:
    """A validated protocol with the exact text it came from and that text's SHA-256."""

    model: ProtocolModel
    text: str
    sha256: str
    source: str

    @property
    def analyses(self) -> dict[str, Spec]:
        """The analysis blocks, and for each table training the describe of its features (for scaling)."""
        specs: dict[str, Spec] = {spec.id: spec for spec in self.model.analysis}
        for training in self.model.training:
            if training.task == "tabular_classification":
                specs[training.scaling_id] = DescribeSpec(
                    id=training.scaling_id, type="describe", variables=training.features
                )
        return specs

    @property
    def trainings(self) -> dict[str, TrainingSpec]:
        return {spec.id: spec for spec in self.model.training}

    @property
    def cohort_columns(self) -> list[str]:
        """Columns the cohort filters read."""
        return [condition.column for condition in self.model.cohort.filters]

    @property
    def levels(self) -> dict[str, list[Level]]:
        """The values each column may take, as `[variables]` declares them."""
        return {name: list(section.levels) for name, section in self.model.variables.items()}

    @property
    def study_columns(self) -> list[str]:
        """Every column the protocol's analyses read (a row needs all of them for the study's one population)."""
        return list(dict.fromkeys(name for spec in self.analyses.values() for name in spec.columns()))

    def population(self, spec: Spec) -> list[str]:
        """Columns a cohort row needs a value in to be used by `spec` (see `[cohort] missing`)."""
        return spec.drops() if self.model.cohort.missing == "per_analysis" else self.study_columns

    def variables(self, spec: Spec) -> list[str]:
        """Columns an analysis reads, its cohort filters' columns included."""
        return list(dict.fromkeys([*spec.columns(), *self.cohort_columns]))


def load(path: str | Path) -> Protocol:
    """Read and validate a protocol file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtocolError(f"{path}: protocol file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ProtocolError(f"{path}: cannot read the protocol ({error})") from None
    return parse(text, source=path.name)


@functools.lru_cache(maxsize=64)
def parse(text: str, source: str = "protocol.toml") -> Protocol:
    """Validate protocol text; errors name the analysis and field and suggest the likely fix.

    Remembered per text (a node reads the same approved protocol in every round of a study)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProtocolError(f"{source}: not valid TOML: {error}") from None
    problems = _check_types(data)
    if problems:
        raise ProtocolError(f"{source}: " + "; ".join(problems))
    try:
        model = ProtocolModel.model_validate(data)
    except ValidationError as error:
        raise ProtocolError(f"{source}: " + "; ".join(_problems(error, data))) from None
    return Protocol(model=model, text=text, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), source=source)


def _check_types(data: dict[str, Any]) -> list[str]:
    """Clear messages for missing or unknown analysis types (before the schema's own)."""
    problems = []
    blocks = data.get("analysis", [])
    for number, block in enumerate(blocks if isinstance(blocks, list) else [], start=1):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        where = _where(number, block)
        if kind is None:
            problems.append(f"{where}: missing 'type' (one of: {', '.join(TYPES)})")
        elif kind not in TYPES:
            problems.append(f"{where}: unknown type '{kind}'" + _suggest(str(kind), list(TYPES)))
    return problems


def _toml_key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() else f'"{name}"'


def _where(number: int, block: Any, kind: str = "analysis") -> str:
    named = isinstance(block, dict) and isinstance(block.get("id"), str)
    return f"{kind} #{number}" + (f" (id '{block['id']}')" if named else "")


def _describe(error: Any, data: dict[str, Any]) -> str:
    """One pydantic error as 'where: what'."""
    loc = list(error["loc"])
    if not loc:
        return str(error["msg"]).removeprefix("Value error, ")
    if len(loc) == 1 and error["type"] in ("missing", "extra_forbidden"):
        if error["type"] == "missing":
            return f"missing section [{loc[0]}]"
        return f"unknown section [{loc[0]}]" + _suggest(str(loc[0]), list(ProtocolModel.model_fields))
    if loc[0] == "training" and len(loc) > 1 and isinstance(loc[1], int):
        where, loc = _where(loc[1] + 1, data["training"][loc[1]], "training"), loc[2:]
        fields = list((TrainingPrivacy if loc[:1] == ["privacy"] else TrainingSpec).model_fields)
    elif loc[0] == "analysis" and len(loc) > 1 and isinstance(loc[1], int):
        block = data["analysis"][loc[1]]
        where, fields = _where(loc[1] + 1, block), list(TYPES[block["type"]].spec.model_fields)
        loc = loc[3:]  # drop "analysis", the index and the discriminator tag
    elif loc[:2] == ["cohort", "filters"] and len(loc) > 2:
        where, fields = f"[cohort] filter #{int(loc[2]) + 1}", list(Filter.model_fields)
        loc = loc[3:]
    elif loc[0] == "cohort" and len(loc) > 2 and loc[1] in ("concept_sets", "covariates"):
        kind = loc[1]
        where = (
            f"[cohort.concept_sets.{loc[2]}]" if kind == "concept_sets" else f"[[cohort.covariates]] #{int(loc[2]) + 1}"
        )
        fields, loc = list((ConceptSet if kind == "concept_sets" else Covariate).model_fields), loc[3:]
    elif loc[0] == "cohort" and len(loc) > 2 and loc[1] in ("exposure", "entry", "outcome"):
        where, loc = f"[cohort.{loc[1]}]", loc[2:]
        fields = list({"exposure": Exposure, "entry": Entry, "outcome": Outcome}[str(where[8:-1])].model_fields)
    elif loc[0] == "variables" and len(loc) > 1:
        where, fields, loc = f"[variables] '{loc[1]}'", list(VariableSection.model_fields), loc[2:3]
    else:
        section = {"study": StudySection, "cohort": CohortSection, "privacy": PrivacySection,
                   "federation": FederationSection}.get(str(loc[0]))  # fmt: skip
        where, fields = f"[{loc[0]}]", list(section.model_fields) if section else []
        loc = loc[1:]
    field = ".".join(str(part) for part in loc)
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field '{field}'" + _suggest(str(loc[-1]), fields)
    if error["type"] == "missing":
        return f"{where}: missing required field '{field}'"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: field '{field}': {message}" if field else f"{where}: {message}"


def _suggest(name: str, known: list[str]) -> str:
    hint = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(known)})"


def _problems(error: ValidationError, data: dict[str, Any]) -> list[str]:
    """Readable problems, without 'missing x' where an unknown field already suggests 'x'."""
    problems = [_describe(e, data) for e in error.errors()]
    suggested = {(p.split(":")[0], p.split("did you mean ")[1].split("'")[1]) for p in problems if "did you mean" in p}

    def redundant(problem: str) -> bool:
        where, _, rest = problem.partition(": missing required field '")
        return bool(rest) and (where, rest.rstrip("'").split(".")[-1]) in suggested

    return [p for p in problems if not redundant(p)]
