"""Alert rule files (Prometheus rule-file YAML) as Amazon Managed Prometheus rule group namespaces.

The same files the central Prometheus loads (roles/telemetry/files/rules/) go to AMP unchanged,
one namespace per file; they are checked here so a bad file fails the preview with its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

# AMP's rule group namespace names.
NAMESPACE_NAME = re.compile(r"^[0-9A-Za-z][-.0-9A-Z_a-z]{0,63}$")


class RuleFileError(ValueError):
    """A rule file AMP would reject; the message starts with the file's path."""


@dataclass(frozen=True)
class RuleNamespace:
    name: str
    data: str
    """The file's text, as AMP takes it."""
    groups: tuple[str, ...]


def namespace_name(path: Path) -> str:
    """`edgecv.rules.yml` -> `edgecv`."""
    name = path.name
    for suffix in (".yml", ".yaml"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".rules")


def load_rule_file(path: Path) -> RuleNamespace:
    text = path.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleFileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise RuleFileError(f"{path}: groups: a rule file needs a top-level 'groups' list")
    names = []
    for i, group in enumerate(doc["groups"]):
        where = f"{path}: groups[{i}]"
        if not isinstance(group, dict) or not isinstance(group.get("name"), str) or not group["name"]:
            raise RuleFileError(f"{where}.name: every group needs a name")
        if not isinstance(group.get("rules"), list):
            raise RuleFileError(f"{where}.rules: group {group['name']!r} needs a 'rules' list")
        for j, rule in enumerate(group["rules"]):
            if not isinstance(rule, dict) or not ({"alert", "record"} & rule.keys()) or "expr" not in rule:
                raise RuleFileError(f"{where}.rules[{j}]: a rule needs 'alert' or 'record', and 'expr'")
        names.append(group["name"])
    if len(set(names)) != len(names):
        raise RuleFileError(f"{path}: groups: group names repeat: {names}")
    name = namespace_name(path)
    if not NAMESPACE_NAME.match(name):
        raise RuleFileError(f"{path}: the file name gives namespace {name!r}, which AMP does not accept "
                            "(letters, digits, '-', '.', '_'; at most 64)")
    return RuleNamespace(name=name, data=text, groups=tuple(names))


def load_rule_namespaces(files: list[Path]) -> list[RuleNamespace]:
    namespaces = [load_rule_file(f) for f in files]
    seen: dict[str, Path] = {}
    for f, ns in zip(files, namespaces, strict=True):
        if ns.name in seen:
            raise RuleFileError(f"{f}: namespace {ns.name!r} is also made by {seen[ns.name]}")
        seen[ns.name] = f
    return namespaces
