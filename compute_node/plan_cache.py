"""Plans cached by statement shape: the same statement with other literal values is not parsed or
planned again (parsing with sqlglot alone costs more than running a primary-key lookup). A
statement with parameters of its own is cached by its text and declared parameter types.

A statement's shape is its token stream with every literal that may vary replaced by a
parameter: `UPDATE t SET v = v + 5 WHERE id = 7` runs as the template
`UPDATE t SET v = v + $1 WHERE id = $2` with the literal texts '5' and '7' bound as parameters, so
it behaves as if the client had prepared it. A literal's kind is part of the shape and fixes its
parameter's type as PostgreSQL types the literal: an integer is int4 (int8, numeric when wider),
a quoted string unknown (resolved from its context, as a literal's is). A decimal literal stays
in the shape: its type depends on its context (float8 beside a float, numeric elsewhere), which a
parameter of a fixed kind would not follow.

Literals whose value changes the statement's meaning stay in the template text and so in its
identity ("pinned"): ORDER BY and GROUP BY ordinals, LIMIT/OFFSET/FETCH counts, type modifiers
(varchar(20)), INTERVAL and typed literals (DATE '...'), arguments of functions the parser does
not know, decimal and exponent numbers, and escape strings. A shape is learned once, by parsing
its template: the parameters that land in such places are pinned from then on. Invariants: only
statements with no parameters of their own and at least one literal are reshaped; a template
that does not parse, or does not plan, is not used (the statement is parsed as written); at most
PLAN_CACHE_ENTRIES_MAX shapes and as many plans are kept (least recently used go first).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Callable

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import TokenError
from sqlglot.tokens import TokenType

PLAN_CACHE_ENTRIES_MAX = 1024
INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1

_RESHAPED_STATEMENTS = {TokenType.SELECT, TokenType.INSERT, TokenType.UPDATE, TokenType.DELETE, TokenType.WITH}
# A literal after one of these may vary freely; after anything else (a type name, INTERVAL,
# LIMIT, ORDER BY, a function-like keyword) it stays in the template.
_VALUE_CONTEXTS = {
    TokenType.EQ, TokenType.NEQ, TokenType.LT, TokenType.LTE, TokenType.GT, TokenType.GTE, TokenType.COMMA,
    TokenType.L_PAREN, TokenType.PLUS, TokenType.DASH, TokenType.STAR, TokenType.SLASH, TokenType.MOD,
    TokenType.DPIPE, TokenType.LIKE, TokenType.ILIKE, TokenType.THEN, TokenType.ELSE, TokenType.WHEN,
    TokenType.SELECT, TokenType.BETWEEN, TokenType.AND, TokenType.OR, TokenType.NOT, TokenType.IN,
    TokenType.CASE, TokenType.VALUES,
}
_PLAIN_INTEGER = re.compile(r"\d+")
# Places where a parameter cannot stand for a literal without changing what the statement means.
_PINNING_ANCESTORS = (exp.DataType, exp.Limit, exp.Offset, exp.Fetch, exp.Interval, exp.Anonymous)

_tokenizer = Postgres().tokenizer_class()

UNCACHEABLE = "uncacheable"


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """A statement cut into its shape and its literals."""

    key: tuple  # token types and texts, a literal as its kind
    literals: list[tuple[int, int, str]]  # (start, end inclusive, text) of each literal, in order
    kinds: tuple[str, ...]  # the parameter type each literal gives: int4, int8, numeric, unknown


@dataclasses.dataclass(slots=True)
class Entry:
    """A cached template: parsed, planned, and which literals it takes as parameters."""

    node: exp.Expression
    plan: object
    param_types: list[str]  # resolved by planning
    bound: tuple[int, ...]  # indexes of the literals bound as $1, $2, ...


def shape_of(sql: str) -> Shape | None:
    """The shape of a statement worth reshaping, else None."""
    try:
        tokens = _tokenizer.tokenize(sql)
    except (TokenError, ValueError):
        return None
    if not tokens or tokens[0].token_type not in _RESHAPED_STATEMENTS:
        return None
    key, literals, kinds = [], [], []
    previous = None
    for token in tokens:
        kind = None
        if token.token_type is TokenType.PARAMETER:
            return None  # the statement has parameters of its own
        if previous in _VALUE_CONTEXTS:
            kind = _literal_kind(token)
        if kind is None:
            key.append((token.token_type, token.text))
        else:
            key.append((TokenType.PLACEHOLDER, kind))
            literals.append((token.start, token.end, token.text))
            kinds.append(kind)
        previous = token.token_type
    if not literals:
        return None
    return Shape(tuple(key), literals, tuple(kinds))


def _literal_kind(token) -> str | None:
    if token.token_type is TokenType.STRING:
        return "unknown"
    if token.token_type is TokenType.NUMBER and _PLAIN_INTEGER.fullmatch(token.text):
        value = int(token.text)
        return "int4" if value <= INT4_MAX else "int8" if value <= INT8_MAX else "numeric"
    return None


def template_text(sql: str, shape: Shape, bound: tuple[int, ...]) -> str:
    """The statement with the literals of `bound` replaced by $1, $2, ... in order."""
    parts, position, number = [], 0, 0
    bound_set = set(bound)
    for index, (start, end, _) in enumerate(shape.literals):
        if index in bound_set:
            number += 1
            parts.append(sql[position:start])
            parts.append(f"${number}")
            position = end + 1
    parts.append(sql[position:])
    return "".join(parts)


def pinned_parameters(node: exp.Expression) -> set[int]:
    """Numbers ($n) of the parameters of a template that must stay literals (module docstring)."""
    pinned = set()
    for parameter in node.find_all(exp.Parameter):
        number = int(parameter.this.this) if isinstance(parameter.this, exp.Literal) else None
        if number is None:
            continue
        parent = parameter.parent
        if (isinstance(parent, exp.Ordered) or isinstance(parent, exp.Group)
                or parameter.find_ancestor(*_PINNING_ANCESTORS) is not None):
            pinned.add(number)
    return pinned


class PlanCache:
    """Shapes and their templates' plans, for Engine.prepare (engine thread or loop, in a turn)."""

    def __init__(self, entries_max: int = PLAN_CACHE_ENTRIES_MAX):
        self.entries_max = entries_max
        self._pinned: collections.OrderedDict[tuple, tuple[int, ...] | str] = collections.OrderedDict()
        self._entries: collections.OrderedDict[tuple, Entry] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def lookup(self, sql: str, parse: Callable[[str], exp.Expression],
               plan: Callable[[exp.Expression, list[str]], tuple[object, list[str]]],
               is_current: Callable[[object], bool]) -> tuple[Entry, list[str]] | None:
        """The template entry for `sql` and the literal texts to bind, or None (not reshaped).

        `parse(text)` parses a template; `plan(node, types)` plans it (returning the plan and the
        resolved types); `is_current(plan)` says whether a cached plan still matches the catalog."""
        shape = shape_of(sql)
        if shape is None:
            return None
        pinned = self._pinned_for(sql, shape, parse)
        if pinned == UNCACHEABLE:
            return None
        pinned_values = tuple(shape.literals[i][2] for i in pinned)
        entry_key = (shape.key, pinned_values)
        entry = self._entries.get(entry_key)
        if entry is not None and is_current(entry.plan):
            self._entries.move_to_end(entry_key)
            self.hits += 1
        else:
            self.misses += 1
            bound = tuple(i for i in range(len(shape.literals)) if i not in pinned)
            if entry is None:
                node = parse(template_text(sql, shape, bound))
            else:
                node = entry.node
            plan_made, types = plan(node, [shape.kinds[i] for i in bound])
            entry = Entry(node, plan_made, types, bound)
            self._remember(self._entries, entry_key, entry)
        return entry, [shape.literals[i][2] for i in entry.bound]

    def lookup_text(self, sql: str, param_types: list[str], parse, plan, is_current) -> Entry:
        """The entry for a statement with parameters of its own (an extended-protocol Parse, made
        again for every execution by clients that do not name their statements): keyed by its
        text and declared parameter types."""
        entry_key = ("text", sql, tuple(param_types))
        entry = self._entries.get(entry_key)
        if entry is not None and is_current(entry.plan):
            self._entries.move_to_end(entry_key)
            self.hits += 1
            return entry
        self.misses += 1
        node = entry.node if entry is not None else parse(sql)
        plan_made, types = plan(node, list(param_types))
        entry = Entry(node, plan_made, types, ())
        self._remember(self._entries, entry_key, entry)
        return entry

    def _pinned_for(self, sql: str, shape: Shape, parse) -> tuple[int, ...] | str:
        pinned = self._pinned.get(shape.key)
        if pinned is not None:
            self._pinned.move_to_end(shape.key)
            return pinned
        everything = tuple(range(len(shape.literals)))
        try:
            node = parse(template_text(sql, shape, everything))
        except Exception:  # a template that does not parse: the statement is parsed as written
            pinned = UNCACHEABLE
        else:
            pinned = tuple(sorted(number - 1 for number in pinned_parameters(node)))
        self._remember(self._pinned, shape.key, pinned)
        return pinned

    def _remember(self, table: collections.OrderedDict, key, value) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > self.entries_max:
            table.popitem(last=False)

