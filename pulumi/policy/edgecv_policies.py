"""The edgecv AWS policies (pulumi-policy), kept apart from __main__.py so tests can run them directly.

Resource policies check each resource's own inputs as it is registered (in preview too, where the
values are known). Stack policies check that every bucket HAS the settings resource it needs: with
pulumi-aws v7 a bucket's encryption, public-access block, versioning and lifecycle are separate
resources, linked to the bucket through their `bucket` property (read from the engine's property
dependencies, so this also works in preview, before the bucket has a name).

Buckets say what they are with the tag `edgecv:store` (artifact | evidence).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

# pulumi-aws v7 names, and the deprecated *V2 aliases that still create the same AWS objects.
BUCKET = {"aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"}
PUBLIC_ACCESS_BLOCK = {"aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"}
BUCKET_ACL = {"aws:s3/bucketAcl:BucketAcl", "aws:s3/bucketAclV2:BucketAclV2"}
BUCKET_POLICY = {"aws:s3/bucketPolicy:BucketPolicy"}
ENCRYPTION = {"aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
              "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2"}
VERSIONING = {"aws:s3/bucketVersioning:BucketVersioning", "aws:s3/bucketVersioningV2:BucketVersioningV2"}
LIFECYCLE = {"aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
             "aws:s3/bucketLifecycleConfigurationV2:BucketLifecycleConfigurationV2"}
# Identity policies (attached to a principal): never wildcards.
IAM_POLICY = {"aws:iam/policy:Policy", "aws:iam/rolePolicy:RolePolicy", "aws:iam/userPolicy:UserPolicy",
              "aws:iam/groupPolicy:GroupPolicy"}
IAM_ROLE = {"aws:iam/role:Role"}

PUBLIC_ACLS = {"public-read", "public-read-write", "authenticated-read"}
PUBLIC_GRANTEES = ("http://acs.amazonaws.com/groups/global/AllUsers",
                   "http://acs.amazonaws.com/groups/global/AuthenticatedUsers")
PUBLIC_ACCESS_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
KMS_ALGORITHMS = {"aws:kms", "aws:kms:dsse"}
STORE_TAG = "edgecv:store"


# --- helpers -----------------------------------------------------------------------------------

def _as_list(value: Any) -> list:
    # The engine hands props over as read-only Mapping/Sequence proxies, not dicts and lists.
    if value is None:
        return []
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]


def parse_document(value: Any) -> Mapping:
    """A policy document given as JSON text or as an object; ValueError if it is neither."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"policy document is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise ValueError("policy document is not a JSON object")
    return value


def statements(document: Mapping) -> list[Mapping]:
    return [s for s in _as_list(document.get("Statement")) if isinstance(s, Mapping)]


def _is_wildcard_principal(principal: Any) -> bool:
    if principal == "*":
        return True
    if isinstance(principal, Mapping):
        return any("*" in _as_list(v) for v in principal.values())
    return False


def wildcard_problems(document: Mapping) -> list[str]:
    """What in an identity policy's Allow statements is a wildcard (action, or resource beyond an object key)."""
    problems = []
    for i, st in enumerate(statements(document)):
        if st.get("Effect") != "Allow":
            continue
        sid = st.get("Sid") or f"Statement[{i}]"
        if "NotAction" in st:
            problems.append(f"{sid}: Allow with NotAction grants every other action")
        if "NotResource" in st:
            problems.append(f"{sid}: Allow with NotResource grants every other resource")
        for action in _as_list(st.get("Action")):
            if "*" in str(action):
                problems.append(f"{sid}: wildcard action {action!r}")
        for resource in _as_list(st.get("Resource")):
            if _is_wildcard_resource(str(resource)):
                problems.append(f"{sid}: wildcard resource {resource!r}")
    return problems


def _is_wildcard_resource(resource: str) -> bool:
    """'*', or an ARN with a wildcard anywhere but in an S3 object key.

    Object keys under a named bucket (arn:aws:s3:::bucket/prefix/*) are allowed: that is how S3
    object permissions are written, and the bucket stays named.
    """
    parts = resource.split(":", 5)
    if resource == "*" or len(parts) < 6 or parts[0] != "arn":
        return "*" in resource
    if any("*" in p for p in parts[1:5]):
        return True
    service, rest = parts[2], parts[5]
    if service == "s3":
        return "*" in rest.split("/", 1)[0]
    return "*" in rest


def public_policy_problems(document: Mapping) -> list[str]:
    return [f"{st.get('Sid') or f'Statement[{i}]'}: Allow to every principal ('*')"
            for i, st in enumerate(statements(document))
            if st.get("Effect") == "Allow" and _is_wildcard_principal(st.get("Principal"))]


def _check_document(args: ResourceValidationArgs, report: ReportViolation, prop: str, check) -> None:
    if args.props.get(prop) is None:
        return
    try:
        document = parse_document(args.props[prop])
    except ValueError as exc:
        report(f"{args.resource_type} '{args.name}': {prop}: {exc}")
        return
    for problem in check(document):
        report(f"{args.resource_type} '{args.name}': {prop}: {problem}")


def _dependents(resources: list[PolicyResource], types: set[str]) -> dict[str, list[PolicyResource]]:
    """URN of a bucket -> the resources of `types` whose `bucket` property depends on it."""
    out: dict[str, list[PolicyResource]] = {}
    for r in resources:
        if r.resource_type in types:
            for bucket in r.property_dependencies.get("bucket", []):
                out.setdefault(bucket.urn, []).append(r)
    return out


def _buckets(resources: list[PolicyResource], store: str | None = None) -> Iterator[PolicyResource]:
    for r in resources:
        if r.resource_type in BUCKET and (store is None or (r.props.get("tags") or {}).get(STORE_TAG) == store):
            yield r


# --- no public buckets -------------------------------------------------------------------------

def _no_public_access(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    if t in PUBLIC_ACCESS_BLOCK:
        off = [f for f in PUBLIC_ACCESS_FLAGS if props.get(f) is not True]
        if off:
            report(f"public access block '{args.name}': {', '.join(off)} must be true")
    elif t in BUCKET or t in BUCKET_ACL:
        if props.get("acl") in PUBLIC_ACLS:
            report(f"{t} '{args.name}': acl {props['acl']!r} makes the bucket public")
        grants = _as_list(props.get("grants")) + _as_list((props.get("accessControlPolicy") or {}).get("grants"))
        for grant in grants:
            grantee = grant.get("grantee") if "grantee" in grant else grant
            if (grantee or {}).get("uri") in PUBLIC_GRANTEES:
                report(f"{t} '{args.name}': grant to {grantee['uri']} makes the bucket public")
        if t in BUCKET:
            _check_document(args, report, "policy", public_policy_problems)
    elif t in BUCKET_POLICY:
        _check_document(args, report, "policy", public_policy_problems)


def _public_access_block_required(args: StackValidationArgs, report: ReportViolation) -> None:
    blocks = _dependents(args.resources, PUBLIC_ACCESS_BLOCK)
    for bucket in _buckets(args.resources):
        if not blocks.get(bucket.urn):
            report(f"bucket '{bucket.name}' has no aws.s3.BucketPublicAccessBlock", bucket.urn)


no_public_access = ResourceValidationPolicy(
    name="s3-no-public-access",
    description="S3 buckets are never public: all four public-access-block flags, no public ACL or policy.",
    validate=_no_public_access,
    enforcement_level=EnforcementLevel.MANDATORY,
)
public_access_block_required = StackValidationPolicy(
    name="s3-public-access-block-required",
    description="Every S3 bucket has a public access block.",
    validate=_public_access_block_required,
    enforcement_level=EnforcementLevel.MANDATORY,
)


# --- encryption --------------------------------------------------------------------------------

def _sse_algorithms(rules: Any) -> list[Any]:
    return [((r or {}).get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm") for r in _as_list(rules)]


def _kms_encryption(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    if t in ENCRYPTION:
        algorithms = _sse_algorithms(props.get("rules"))
    elif t in BUCKET and props.get("serverSideEncryptionConfiguration"):
        algorithms = _sse_algorithms((props["serverSideEncryptionConfiguration"] or {}).get("rule"))
    else:
        return
    if not algorithms or any(a not in KMS_ALGORITHMS for a in algorithms):
        report(f"{t} '{args.name}': server-side encryption must be aws:kms (a customer key), got {algorithms}")


def _encryption_required(args: StackValidationArgs, report: ReportViolation) -> None:
    configs = _dependents(args.resources, ENCRYPTION)
    for bucket in _buckets(args.resources):
        if not configs.get(bucket.urn):
            report(f"bucket '{bucket.name}' has no aws.s3.BucketServerSideEncryptionConfiguration", bucket.urn)


kms_encryption = ResourceValidationPolicy(
    name="s3-kms-encryption",
    description="S3 server-side encryption uses KMS.",
    validate=_kms_encryption,
    enforcement_level=EnforcementLevel.MANDATORY,
)
encryption_required = StackValidationPolicy(
    name="s3-encryption-required",
    description="Every S3 bucket has a server-side encryption configuration.",
    validate=_encryption_required,
    enforcement_level=EnforcementLevel.MANDATORY,
)


# --- versioning on artifact stores ---------------------------------------------------------------

def _artifact_versioning(args: StackValidationArgs, report: ReportViolation) -> None:
    versionings = _dependents(args.resources, VERSIONING)
    for bucket in _buckets(args.resources, "artifact"):
        statuses = [(v.props.get("versioningConfiguration") or {}).get("status") for v in versionings.get(bucket.urn, [])]
        if "Enabled" not in statuses:
            report(f"artifact bucket '{bucket.name}' needs aws.s3.BucketVersioning with status Enabled "
                   f"(has {statuses or 'none'})", bucket.urn)


artifact_versioning = StackValidationPolicy(
    name="s3-artifact-versioning",
    description="Artifact buckets (tag edgecv:store=artifact) keep every version.",
    validate=_artifact_versioning,
    enforcement_level=EnforcementLevel.MANDATORY,
)


# --- lifecycle on evidence ---------------------------------------------------------------------

def _expires_everything(rule: Mapping) -> bool:
    """An enabled rule that expires current objects after N days, for the whole bucket."""
    if rule.get("status") != "Enabled" or not ((rule.get("expiration") or {}).get("days") or 0) > 0:
        return False
    scope = rule.get("filter") or {}
    return not scope.get("prefix") and not scope.get("tag") and not scope.get("and") and not rule.get("prefix")


def _evidence_lifecycle(args: StackValidationArgs, report: ReportViolation) -> None:
    lifecycles = _dependents(args.resources, LIFECYCLE)
    for bucket in _buckets(args.resources, "evidence"):
        rules = [rule for lc in lifecycles.get(bucket.urn, []) for rule in _as_list(lc.props.get("rules"))]
        if not any(_expires_everything(r) for r in rules):
            report(f"evidence bucket '{bucket.name}' needs an enabled lifecycle rule expiring all objects "
                   f"after N days", bucket.urn)


evidence_lifecycle = StackValidationPolicy(
    name="s3-evidence-lifecycle",
    description="Evidence buckets (tag edgecv:store=evidence) expire their objects.",
    validate=_evidence_lifecycle,
    enforcement_level=EnforcementLevel.MANDATORY,
)


# --- no wildcard IAM ---------------------------------------------------------------------------

def _no_wildcard_iam(args: ResourceValidationArgs, report: ReportViolation) -> None:
    t, props = args.resource_type, args.props
    if t in IAM_POLICY:
        _check_document(args, report, "policy", wildcard_problems)
    elif t in IAM_ROLE:
        _check_document(args, report, "assumeRolePolicy", lambda d: [
            p.replace("Allow to every principal", "anyone may assume this role") for p in public_policy_problems(d)])
        for inline in _as_list(props.get("inlinePolicies")):
            if inline and inline.get("policy"):
                try:
                    document = parse_document(inline["policy"])
                except ValueError as exc:
                    report(f"{t} '{args.name}': inlinePolicies {inline.get('name')!r}: {exc}")
                    continue
                for problem in wildcard_problems(document):
                    report(f"{t} '{args.name}': inlinePolicies {inline.get('name')!r}: {problem}")


no_wildcard_iam = ResourceValidationPolicy(
    name="iam-no-wildcards",
    description="IAM policies name their actions and resources: no '*' actions, no '*' resources, "
                "no NotAction/NotResource in Allow, no role anyone may assume.",
    validate=_no_wildcard_iam,
    enforcement_level=EnforcementLevel.MANDATORY,
)


POLICIES = [
    no_public_access,
    public_access_block_required,
    kms_encryption,
    encryption_required,
    artifact_versioning,
    evidence_lifecycle,
    no_wildcard_iam,
]
