"""The edgecv policy pack; the Pulumi CLI runs this (the policies live in edgecv_policies.py)."""

from pulumi_policy import EnforcementLevel, PolicyPack

from edgecv_policies import POLICIES

PolicyPack(name="edgecv-aws", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)
