"""The stack's configuration (`Pulumi.<stack>.yaml`, namespace `edgecv-cloud`), validated once.

Every key is camelCase in the stack file, as Pulumi convention has it; a bad value fails the
program before any resource is registered, with the stack file and the key in the message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

NAMESPACE = "edgecv-cloud"
PROJECT_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = PROJECT_DIR.parent
# The alert rules the central Prometheus evaluates (roles/telemetry); AMP gets the same files.
DEFAULT_RULES_GLOB = "roles/telemetry/files/rules/*.rules.yml"
# CloudWatch Logs accepts only these retention periods (days).
# S3's minimum storage duration per archive class (days): an object deleted sooner is billed the minimum,
# so archiving evidence that expires sooner than this costs more than keeping it in STANDARD.
MIN_STORAGE_DAYS = {"STANDARD_IA": 30, "ONEZONE_IA": 30, "GLACIER_IR": 90, "GLACIER": 90, "DEEP_ARCHIVE": 180}
LOG_RETENTION_DAYS = {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653}


class ConfigError(ValueError):
    """A stack configuration problem; the message names the stack file and the key."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class DeviceCa(_Model):
    """The CA that issues device certificates: an AWS Private CA, or our own CA's PEM bundle."""

    pca_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:acm-pca:[a-z0-9-]+:\d{12}:certificate-authority/.+$")
    certificate_bundle_file: str | None = Field(None, description="PEM file, relative to pulumi/ or absolute")

    @model_validator(mode="after")
    def _exactly_one(self) -> DeviceCa:
        if (self.pca_arn is None) == (self.certificate_bundle_file is None):
            raise ValueError("set exactly one of pcaArn or certificateBundleFile")
        return self

    def bundle_pem(self) -> str | None:
        """The PEM text of certificateBundleFile (None for a Private CA); checked to hold certificates."""
        if self.certificate_bundle_file is None:
            return None
        path = Path(self.certificate_bundle_file)
        path = path if path.is_absolute() else PROJECT_DIR / path
        if not path.is_file():
            raise ConfigError(f"deviceCa.certificateBundleFile: {path}: no such file")
        text = path.read_text()
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ConfigError(f"deviceCa.certificateBundleFile: {path}: no PEM certificate in it")
        return text


class StackConfig(_Model):
    environment: str = Field(pattern=r"^[a-z][a-z0-9-]{1,15}$", description="dev, prod, ...: names and tags")
    # Artifact store: object-lock retention of every model version, and when non-current versions go.
    artifact_lock_days: int = Field(30, ge=1, le=3650)
    artifact_noncurrent_days: int = Field(90, ge=1)
    # Evidence store: evidence is personal data at many sites; it expires, optionally archived first.
    evidence_expiry_days: int = Field(30, ge=1)
    evidence_archive_days: int | None = Field(None, ge=0)
    evidence_archive_class: Literal["GLACIER_IR", "GLACIER", "DEEP_ARCHIVE", "STANDARD_IA", "ONEZONE_IA"] = "GLACIER_IR"
    # Telemetry.
    log_retention_days: int = 30
    alert_rules_glob: str = Field(DEFAULT_RULES_GLOB, description="relative to the repository root, or absolute")
    # Identities.
    github_repo: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
    github_branch: str = Field("main", pattern=r"^[A-Za-z0-9_./-]+$")
    github_oidc_provider_arn: str | None = Field(None, pattern=r"^arn:aws[a-z-]*:iam::\d{12}:oidc-provider/.+$")
    device_ca: DeviceCa
    device_session_seconds: int = Field(3600, ge=900, le=43200)

    @model_validator(mode="after")
    def _consistent(self) -> StackConfig:
        # Lifecycle cannot remove a locked version anyway; a shorter expiry only hides the real one.
        if self.artifact_noncurrent_days < self.artifact_lock_days:
            raise ValueError(f"artifactNoncurrentDays ({self.artifact_noncurrent_days}) must be >= "
                             f"artifactLockDays ({self.artifact_lock_days})")
        if self.evidence_archive_days is not None:
            if self.evidence_archive_days >= self.evidence_expiry_days:
                raise ValueError(f"evidenceArchiveDays ({self.evidence_archive_days}) must be < "
                                 f"evidenceExpiryDays ({self.evidence_expiry_days})")
            if self.evidence_archive_class in ("STANDARD_IA", "ONEZONE_IA") and self.evidence_archive_days < 30:
                raise ValueError(f"S3 moves objects to {self.evidence_archive_class} after 30 days at the earliest "
                                 f"(evidenceArchiveDays is {self.evidence_archive_days})")
            stored = self.evidence_expiry_days - self.evidence_archive_days
            minimum = MIN_STORAGE_DAYS[self.evidence_archive_class]
            if stored < minimum:
                raise ValueError(
                    f"{self.evidence_archive_class} bills at least {minimum} days per object, but evidence stays "
                    f"there {stored} days (evidenceExpiryDays {self.evidence_expiry_days} - evidenceArchiveDays "
                    f"{self.evidence_archive_days}): archive earlier, expire later, or pick a class with a shorter minimum")
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ValueError(f"logRetentionDays {self.log_retention_days} is not one CloudWatch accepts: "
                             f"{sorted(LOG_RETENTION_DAYS)}")
        return self

    def rule_files(self) -> list[Path]:
        """The alert-rule files the glob matches now, sorted (none is fine: empty rule groups)."""
        pattern = Path(self.alert_rules_glob)
        if pattern.is_absolute():
            return sorted(Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor))))
        return sorted(REPO_ROOT.glob(self.alert_rules_glob))


def parse(values: Mapping[str, Any], stack: str) -> StackConfig:
    """Validate raw config values (keys without namespace; strings as Pulumi hands them over)."""
    source = f"pulumi/Pulumi.{stack}.yaml"
    data: dict[str, Any] = {"environment": stack}
    if "grafana" in values:
        raise ConfigError(f"{source}: {NAMESPACE}:grafana: the stack no longer makes a managed Grafana "
                          "(see pulumi/README.md, \"Dashboards\"); remove the key")
    for key, raw in values.items():
        # Pulumi passes objects and lists as JSON text.
        data[key] = json.loads(raw) if isinstance(raw, str) and raw[:1] in "{[" else raw
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            key = ".".join(str(p) for p in err["loc"])
            where = f"{NAMESPACE}:{key}" if key else NAMESPACE
            lines.append(f"{source}: {where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None


def load(stack: str) -> StackConfig:
    """The running stack's configuration, read through Pulumi's config API."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    cfg = pulumi.Config(NAMESPACE)
    # Every key set in our namespace, so a typo in the stack file is reported, not ignored.
    known = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    names = {k.split(":", 1)[1] for k in known if k.startswith(f"{NAMESPACE}:")}
    values = {name: v for name in sorted(names) if (v := cfg.get(name)) is not None}
    return parse(values, stack)
