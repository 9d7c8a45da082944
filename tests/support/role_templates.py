"""Render an Ansible role's Jinja2 template locally (role defaults + overrides), for tests that run the
rendered file with the real program (Prometheus, Alertmanager) instead of a whole ansible-playbook run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import yaml

from fleet.repo import REPO_ROOT

ROLES = REPO_ROOT / "roles"


def role_defaults(role: str) -> dict[str, Any]:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}


def render(role: str, template: str, **overrides: Any) -> str:
    """roles/<role>/templates/<template> with the role's defaults, `overrides` on top.

    Defaults that are themselves templates ("{{ ... }}") are rendered against the same variables, as
    Ansible does lazily; StrictUndefined makes a variable the template needs and nobody set an error."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["to_json"] = json.dumps
    # Ansible's own filters (combine, to_nice_yaml, bool...) where Jinja has none of that name.
    from ansible.plugins.filter.core import FilterModule

    env.filters.update({k: f for k, f in FilterModule().filters().items() if k not in env.filters})
    variables: dict[str, Any] = {"ansible_managed": "Ansible managed (rendered by a test)", "role_path": str(ROLES / role)}
    variables.update(role_defaults(role))
    variables.update(overrides)
    for _ in range(3):  # nested defaults
        variables = {k: _resolve(env, v, variables) for k, v in variables.items()}
    return env.from_string((ROLES / role / "templates" / template).read_text()).render(**variables)


def _resolve(env: jinja2.Environment, value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, str) and "{{" in value:
        try:
            return env.from_string(value).render(**variables)
        except jinja2.UndefinedError:
            return value  # left for an override or a later pass
    if isinstance(value, dict):
        return {k: _resolve(env, v, variables) for k, v in value.items()}
    return value


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
