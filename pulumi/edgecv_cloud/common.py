"""Small things every component needs: the account context, tags, policy-document JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

PROJECT_TAG = "edgecv"


@dataclass(frozen=True)
class AwsContext:
    """Where the stack deploys: resolved once by the stack and handed to every component."""

    account_id: pulumi.Input[str]
    region: str
    partition: pulumi.Input[str]

    def arn(self, service: str, resource: str) -> pulumi.Output[str]:
        """arn:<partition>:<service>:<region>:<account>:<resource> (a regional service's ARN)."""
        return pulumi.Output.concat("arn:", self.partition, f":{service}:{self.region}:", self.account_id, f":{resource}")

    def root_principal(self) -> pulumi.Output[str]:
        return pulumi.Output.concat("arn:", self.partition, ":iam::", self.account_id, ":root")


def tags(environment: str, **extra: str) -> dict[str, str]:
    """Tags on every resource; `edgecv:store` tells the policy pack which rules a bucket must meet."""
    return {"project": PROJECT_TAG, "environment": environment, **extra}


def policy_json(*statements: dict[str, Any]) -> pulumi.Output[str]:
    """An IAM policy document (statements may hold Outputs) as the JSON string AWS wants."""
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": list(statements)})


def child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(parent=parent, **kwargs)
