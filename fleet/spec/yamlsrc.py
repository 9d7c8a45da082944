"""Load YAML while remembering the line of every key, so errors can point at file:line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class YamlSourceError(ValueError):
    """A file that is not valid YAML (or not a mapping at the top)."""

    def __init__(self, path: Path, line: int, message: str):
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = path, line, message


@dataclass
class YamlDoc:
    """A parsed YAML mapping plus the 1-based line of each key path."""

    path: Path
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)

    def line_of(self, loc: tuple) -> int:
        """Line of the deepest known prefix of `loc` (a pydantic error location)."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return 1


def _construct(node: yaml.Node, loc: tuple, lines: dict[tuple, int]) -> Any:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, loc + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, loc + (i,), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    # Resolve one scalar with SafeLoader's rules (ints, floats, bools, null, strings).
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> YamlDoc:
    """Parse `path`; raise YamlSourceError with the line on syntax errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlSourceError(path, 1, f"cannot read file: {exc.strerror}") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlSourceError(path, line, f"invalid YAML: {exc.problem or exc}") from exc
    if node is None:
        raise YamlSourceError(path, 1, "file is empty")
    if not isinstance(node, yaml.MappingNode):
        raise YamlSourceError(path, node.start_mark.line + 1, "top level must be a mapping")
    lines: dict[tuple, int] = {}
    data = _construct(node, (), lines)
    return YamlDoc(path=path, data=data, lines=lines)
