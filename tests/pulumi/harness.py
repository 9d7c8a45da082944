"""Run the real Pulumi program (pulumi/__main__.py) under `pulumi.runtime.set_mocks`, offline.

The mocks stand in for the AWS provider only: they echo each resource's inputs back as its state and
add the few computed outputs the program reads (ids, ARNs, bucket names, the AMP endpoint), shaped
as the provider documents them. Everything above the provider (the program, components, Output
plumbing, config) is Pulumi's own code.
"""

from __future__ import annotations

import json
import runpy
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import rpc

with warnings.catch_warnings():
    # pulumi_aws's own import warns about its deprecated *V2 aliases, which the program does not use;
    # warnings from the program itself still show.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pulumi_aws

    pulumi_aws.s3.Bucket  # noqa: B018 (pulumi_aws loads submodules lazily, on first use)

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_DIR = REPO_ROOT / "pulumi"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ACCOUNT = "123456789012"
PARTITION = "aws"


@dataclass
class Resource:
    type: str
    name: str
    inputs: dict[str, Any]
    state: dict[str, Any]
    id: str
    opts: pulumi.ResourceOptions | None = None
    """The options the program gave (protect, depends_on, ...), seen by a stack transformation."""

    def doc(self, prop: str) -> dict:
        """A JSON policy document held in an input (policy, assumeRolePolicy), parsed."""
        return json.loads(self.inputs[prop])


@dataclass
class ProgramRun:
    resources: list[Resource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, token: str) -> list[Resource]:
        return [r for r in self.resources if r.type == token]

    def one(self, token: str, name_contains: str = "") -> Resource:
        found = [r for r in self.of_type(token) if name_contains in r.name]
        assert len(found) == 1, f"expected one {token} named *{name_contains}*, got {[r.name for r in found]}"
        return found[0]

    def by_id(self, id_: str) -> Resource:
        return next(r for r in self.resources if r.id == id_)

    def for_bucket(self, token: str, bucket: Resource) -> list[Resource]:
        """The bucket-level settings resources (versioning, lifecycle, ...) that point at `bucket`."""
        return [r for r in self.of_type(token) if r.inputs.get("bucket") == bucket.id]


def _reveal(value: Any) -> Any:
    """Inputs the provider marks secret (e.g. an SSM parameter's value) arrive wrapped; unwrap them."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return _reveal(value["value"])
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


class AwsMocks(pulumi.runtime.Mocks):
    def __init__(self, region: str):
        self.region = region
        self.run = ProgramRun()
        self.opts: dict[tuple[str, str], pulumi.ResourceOptions] = {}

    def record_opts(self, args: pulumi.ResourceTransformationArgs) -> None:
        """A stack transformation: it sees every resource's options before registration; changes nothing."""
        self.opts[(args.type_, args.name)] = args.opts

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = _reveal(dict(args.inputs))
        module, kind = args.typ.split(":")[1].split("/")[0], args.typ.rsplit(":", 1)[1]
        rid = f"{args.name}-id"
        state = dict(inputs)
        if args.typ == "aws:s3/bucket:Bucket":
            name = inputs.get("bucket") or f"{args.name}-a1b2c3d"  # Pulumi's auto-name: logical name + suffix
            rid = name
            state.update(bucket=name, arn=f"arn:{PARTITION}:s3:::{name}")
        elif args.typ == "aws:amp/workspace:Workspace":
            rid = "ws-0a1b2c3d-4e5f-6789-abcd-ef0123456789"
            state["arn"] = f"arn:{PARTITION}:aps:{self.region}:{ACCOUNT}:workspace/{rid}"
            state["prometheusEndpoint"] = f"https://aps-workspaces.{self.region}.amazonaws.com/workspaces/{rid}/"
        elif args.typ == "aws:kms/key:Key":
            state.update(keyId=rid, arn=f"arn:{PARTITION}:kms:{self.region}:{ACCOUNT}:key/{rid}")
        elif args.typ == "aws:iam/role:Role":
            state.update(name=inputs.get("name", args.name), arn=f"arn:{PARTITION}:iam::{ACCOUNT}:role/{args.name}")
        elif args.typ == "aws:cloudwatch/logGroup:LogGroup":
            state["arn"] = f"arn:{PARTITION}:logs:{self.region}:{ACCOUNT}:log-group:{inputs['name']}"
        elif args.typ == "aws:ssm/parameter:Parameter":
            rid = inputs["name"]
        elif args.typ == "aws:sns/topic:Topic":
            state["arn"] = f"arn:{PARTITION}:sns:{self.region}:{ACCOUNT}:{args.name}"
        elif args.typ == "aws:rolesanywhere/trustAnchor:TrustAnchor":
            state["arn"] = f"arn:{PARTITION}:rolesanywhere:{self.region}:{ACCOUNT}:trust-anchor/{rid}"
        state.setdefault("arn", f"arn:{PARTITION}:{module}:{self.region}:{ACCOUNT}:{kind.lower()}/{rid}")
        self.run.resources.append(Resource(args.typ, args.name, inputs, state, rid, self.opts.get((args.typ, args.name))))
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:{PARTITION}:iam::{ACCOUNT}:user/test", "userId": "AIDTEST",
                    "id": ACCOUNT}
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": PARTITION, "dnsSuffix": "amazonaws.com", "id": PARTITION,
                    "reverseDnsPrefix": "com.amazonaws"}
        raise NotImplementedError(f"no mock for invoke {args.token}")


def config_value(stack: str, key: str) -> Any:
    """One value of pulumi/Pulumi.<stack>.yaml (key without the edgecv-cloud: namespace), as written there."""
    return yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())["config"].get(f"edgecv-cloud:{key}")


def stack_config(stack: str, **overrides: Any) -> dict[str, str]:
    """pulumi/Pulumi.<stack>.yaml's config as the CLI hands it to a program: namespaced keys, string values."""
    raw = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())["config"]
    raw.update({k if ":" in k else f"edgecv-cloud:{k}": v for k, v in overrides.items()})  # None removes a key
    return {k: _as_config_string(v) for k, v in raw.items() if v is not None}


def _as_config_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def run_program(stack: str, config: dict[str, str]) -> ProgramRun:
    """Run pulumi/__main__.py for `stack` with `config`; return what it registered and exported."""
    mocks = AwsMocks(config["aws:region"])
    pulumi.runtime.set_mocks(mocks, project="edgecv-cloud", stack=stack, preview=False)
    pulumi.runtime.set_all_config(config)
    if str(PROJECT_DIR) not in sys.path:
        sys.path.insert(0, str(PROJECT_DIR))
    exported: dict[str, Any] = {}

    @pulumi.runtime.test
    def program():
        pulumi.runtime.register_stack_transformation(mocks.record_opts)
        outputs = runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")["outputs"]
        names = list(outputs)
        return pulumi.Output.all(*[outputs[n] for n in names]).apply(
            lambda values: exported.update(zip(names, values, strict=True)))

    program()
    mocks.run.outputs = exported
    return mocks.run
