"""What the API reads and answers (pydantic, through django-ninja): the OpenAPI
document is generated from these. No schema has a field for a secret, its ciphertext or
its fingerprint; the one input that carries a secret (KeyIn.secret) is never answered."""

from datetime import date, datetime
from typing import Literal

from ninja import Schema
from pydantic import Field

from keys.models import Kind, Provider
from keys.states import FlagName, RotationState

KindName = Literal[tuple(Kind.values)]
ProviderName = Literal[tuple(Provider.values)]
StateName = Literal[tuple(RotationState.values)]
FlagValue = Literal[tuple(FlagName.values)]


class ErrorDetail(Schema):
    code: str
    message: str
    fields: dict[str, list[str]] | None = None


class ErrorOut(Schema):
    error: ErrorDetail


class OrganizationOut(Schema):
    id: int
    slug: str
    name: str
    openai_org_id: str
    rotation_policy_days: int
    monthly_budget_usd: str | None
    alert_thresholds: list[int]
    created: datetime


class OrganizationPage(Schema):
    items: list[OrganizationOut]
    next_cursor: str | None


class ProjectOut(Schema):
    id: int
    organization: str = Field(description="The organization's slug.")
    name: str
    openai_project_id: str
    environment: str
    tier: str | None
    monthly_budget_usd: str | None
    rotation_policy_days: int = Field(description="The effective policy: the override, else the organization's.")
    archived_at: datetime | None
    created: datetime


class ProjectPage(Schema):
    items: list[ProjectOut]
    next_cursor: str | None


class ProbeStatus(Schema):
    last_probe_outcome: str | None = Field(description="Empty until the first probe.")
    last_probe_at: datetime | None
    last_success_at: datetime | None
    consecutive_failures: int
    next_probe_at: datetime | None


class FlagOut(Schema):
    name: FlagValue
    reason: str
    since: datetime | None


class RotationOut(Schema):
    state: StateName
    policy_days: int
    next_due_at: datetime
    days_overdue: int
    flags: list[FlagOut]


class KeyOut(Schema):
    id: str
    name: str
    organization: str = Field(description="The organization's slug.")
    project_id: int | None
    project: str | None
    kind: KindName
    provider: ProviderName
    hint: str = Field(description="A display hint such as sk-proj-…Ab3d; never the secret.")
    owner: str
    upstream_key_id: str
    base_url: str
    azure_endpoint: str
    issued_at: datetime
    rotated_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    leaked_at: datetime | None
    last_used_at: datetime | None
    created: datetime
    status: ProbeStatus
    rotation: RotationOut


class KeyPage(Schema):
    items: list[KeyOut]
    next_cursor: str | None


class KeyStatusOut(Schema):
    id: str
    name: str
    hint: str
    revoked_at: datetime | None
    status: ProbeStatus
    rotation: RotationOut


class KeyIn(Schema):
    organization: str | None = Field(None, description="Slug; may be left out when a project is given.")
    project: int | None = Field(None, description="Project id; required except for admin keys.")
    name: str = Field(max_length=200)
    kind: KindName = "project"
    provider: ProviderName = "openai"
    secret: str = Field(max_length=500, description="The key. Encrypted at once, never answered or logged.")
    base_url: str = Field("", max_length=200)
    azure_endpoint: str = Field("", max_length=200)
    azure_api_version: str = Field("", max_length=40)
    upstream_key_id: str = Field("", max_length=100)
    owner: str = Field("", max_length=200)
    issued_at: datetime | None = Field(None, description="Default: now.")
    expires_at: datetime | None = None


class KeyCreatedOut(KeyOut):
    first_probe_queued: bool | None = Field(
        description="True: queued for a worker. False: no worker queue answered; the next sweep probes it."
    )


class ProbeQueuedOut(Schema):
    id: str
    queued: bool
    message: str


class ReportRowOut(Schema):
    organization: str
    project: str
    environment: str
    key_name: str
    key_id: str
    kind: str
    hint: str
    owner: str
    issued_at: datetime
    last_rotated_at: datetime | None
    last_rotated_by: str
    policy_days: int
    next_due_at: datetime
    days_overdue: int
    state: StateName
    state_label: str
    flags: list[FlagOut]
    last_probe_outcome: str
    last_probe_at: datetime | None
    last_used_at: datetime | None = Field(description="null: unknown.")
    encryption_key_version: int


class RotationReportOut(Schema):
    generated_at: datetime
    as_of: datetime | None
    filters: dict[str, str]
    count: int = Field(description="Rows matching the filters (all pages).")
    totals: dict[str, int] = Field(description="Rows per rotation state.")
    flag_totals: dict[str, int] = Field(description="Rows per stale flag.")
    page: int
    rows: list[ReportRowOut]
    next_page: int | None


class SpendOut(Schema):
    billed_usd: str
    estimated_usd: str
    total_usd: str
    estimated_days: list[date]
    unpriced_models: list[str]


class BudgetOut(Schema):
    scope: Literal["organization", "project"]
    organization: str
    project_id: int | None
    project: str | None
    month_start: datetime
    budget_usd: str | None
    spend: SpendOut
    percent_used: str | None
    forecast_usd: str
    state: str
    thresholds: list[int]
    thresholds_crossed: list[int]


class BudgetPage(Schema):
    items: list[BudgetOut]
    next_cursor: str | None
