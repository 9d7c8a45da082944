"""OData query options as pinejs (the balena API) reads them: parsed, never string-matched.

Covers what balena-sdk (through pine-client) sends for fleets, releases, devices and tags:
$filter (eq ne gt ge lt le, in, and, or, not, any/all lambdas, navigation paths),
$select, $expand with nested options, $orderby, $top, $skip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote


class ODataError(ValueError):
    """A query the double cannot read: answered with 400 and this message."""


# ---------------------------------------------------------------- filter AST


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Path:
    parts: tuple[str, ...]


@dataclass(frozen=True)
class Compare:
    op: str  # eq ne gt ge lt le
    left: Any
    right: Any


@dataclass(frozen=True)
class In:
    left: Any
    values: tuple[Any, ...]
    consts: frozenset | None = field(default=None, compare=False)  # the values, when all are literals


@dataclass(frozen=True)
class BoolOp:
    op: str  # and / or
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    item: Any


@dataclass(frozen=True)
class Lambda:
    kind: str  # any / all
    collection: Path
    alias: str
    body: Any


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^']|'')*')
    | (?P<dt>datetime'[^']*')
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<name>[A-Za-z_$@][A-Za-z0-9_$]*(?:/[A-Za-z_$][A-Za-z0-9_$]*)*)
    | (?P<punct>[(),:/])
    )""",
    re.VERBOSE,
)
_COMPARE = {"eq", "ne", "gt", "ge", "lt", "le"}


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise ODataError(f"cannot read $filter at {text[pos:pos + 30]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _FilterParser:
    """Recursive descent over: or > and > not > comparison > operand."""

    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise ODataError(f"expected {value or 'more'} in $filter, got {tok[1] if tok else 'the end'}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        node = self.expr()
        if self.peek() is not None:
            raise ODataError(f"unexpected {self.peek()[1]!r} in $filter")
        return node

    def expr(self) -> Any:
        items = [self.conj()]
        while self.peek() == ("name", "or"):
            self.take()
            items.append(self.conj())
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def conj(self) -> Any:
        items = [self.unary()]
        while self.peek() == ("name", "and"):
            self.take()
            items.append(self.unary())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def unary(self) -> Any:
        if self.peek() == ("name", "not"):
            self.take()
            return Not(self.unary())
        return self.comparison()

    def comparison(self) -> Any:
        left = self.operand()
        tok = self.peek()
        if tok and tok[0] == "name" and tok[1] in _COMPARE:
            self.take()
            return Compare(tok[1], left, self.operand())
        if tok == ("name", "in"):
            self.take()
            self.take("(")
            values = [self.operand()]
            while self.peek() == ("punct", ","):
                self.take()
                values.append(self.operand())
            self.take(")")
            consts = frozenset(v.value for v in values) if all(isinstance(v, Literal) for v in values) else None
            return In(left, tuple(values), consts)
        return left

    def operand(self) -> Any:
        kind, value = self.take()
        if kind == "punct" and value == "(":
            node = self.expr()
            self.take(")")
            return node
        if kind == "str":
            return Literal(value[1:-1].replace("''", "'"))
        if kind == "dt":
            return Literal(value[len("datetime'") : -1])
        if kind == "num":
            return Literal(float(value) if "." in value else int(value))
        if kind == "name":
            if value in ("null", "true", "false"):
                return Literal({"null": None, "true": True, "false": False}[value])
            parts = value.split("/")
            if parts[-1] in ("any", "all") and self.peek() == ("punct", "("):
                self.take("(")
                alias = self.take()[1]
                self.take(":")
                body = self.expr()
                self.take(")")
                return Lambda(parts[-1], Path(tuple(parts[:-1])), alias, body)
            if self.peek() == ("punct", "("):
                raise ODataError(f"function {value}() is not supported by the double")
            return Path(tuple(parts))
        raise ODataError(f"unexpected {value!r} in $filter")


def parse_filter(text: str) -> Any:
    return _FilterParser(text).parse()


# ---------------------------------------------------------------- options


@dataclass
class Options:
    filter: Any = None
    select: list[str] | None = None
    expand: dict[str, Options] = field(default_factory=dict)
    orderby: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    top: int | None = None
    skip: int = 0


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses and quoted strings."""
    parts, depth, quoted, cur = [], 0, False, []
    for ch in text:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == sep and depth == 0 and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p != ""]


def _parse_expand(text: str) -> dict[str, Options]:
    out: dict[str, Options] = {}
    for item in _split_top(text, ","):
        item = item.strip()
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:\((.*)\))?", item, re.DOTALL)
        if not m:
            raise ODataError(f"cannot read $expand item {item!r}")
        name, inner = m.group(1), m.group(2)
        opts = Options()
        for raw in _split_top(inner or "", ";"):
            key, _, value = raw.partition("=")
            _apply(opts, key, value)
        out[name] = opts
    return out


def _apply(opts: Options, key: str, value: str) -> None:
    if key == "$filter":
        opts.filter = parse_filter(value)
    elif key == "$select":
        opts.select = [s.strip() for s in value.split(",") if s.strip()]
    elif key == "$expand":
        opts.expand.update(_parse_expand(value))
    elif key == "$orderby":
        for part in value.split(","):
            words = part.split()
            if not words or len(words) > 2 or (len(words) == 2 and words[1] not in ("asc", "desc")):
                raise ODataError(f"cannot read $orderby {value!r}")
            opts.orderby.append((words[0], len(words) == 2 and words[1] == "desc"))
    elif key in ("$top", "$skip"):
        if not value.isdigit():
            raise ODataError(f"{key} must be a number, got {value!r}")
        setattr(opts, key[1:], int(value))
    elif key == "$format":
        pass
    else:
        raise ODataError(f"unknown query option {key!r}")


def parse_query(raw_query: str) -> Options:
    """Parse a raw (still percent-encoded) query string: split on '&' first, then decode each value."""
    opts = Options()
    for pair in raw_query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        _apply(opts, unquote(key), unquote(value))
    return opts


def parse_key(text: str) -> dict[str, Any]:
    """The part in resource(...): '5' -> {'id': 5}; "uuid='abc'" -> {'uuid': 'abc'}."""
    text = unquote(text)
    if re.fullmatch(r"\d+", text):
        return {"id": int(text)}
    out = {}
    for part in _split_top(text, ","):
        name, eq, value = part.partition("=")
        if not eq:
            raise ODataError(f"cannot read resource key {text!r}")
        lit = _FilterParser(value).operand()
        if not isinstance(lit, Literal):
            raise ODataError(f"resource key values must be literals: {text!r}")
        out[name.strip()] = lit.value
    return out
