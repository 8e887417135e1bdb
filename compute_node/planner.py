"""The FROM clause of one SELECT: which tables, in which order, joined how (DESIGN.md 8).

A FromPlan turns `FROM a, b JOIN c ON ... LEFT JOIN d USING (...)` plus WHERE into joined rows.
WHERE and inner-join ON conditions are split into conjuncts: one naming a single table filters that
table's scan (and may make it an index scan, compute_node/index_scans.py); an equality between
two sides is a hash-join key; the rest are checked as soon as every table they name is joined.
Join order is greedy, chosen per execution from the filtered inputs: start with the smallest,
then join the smallest table connected to what is joined by an equality, cross joins last. With a
LEFT JOIN the written order is kept. Invariants: a joined row is one flat list with every table at
a fixed offset (FROM order), NULLs where a table is not joined yet or had no match; conjuncts
holding a subquery run after all joins; nothing here does I/O except through the sources.
"""

from __future__ import annotations

import functools

from sqlglot import exp

from aurora_db.errors import (
    DuplicateAlias,
    FeatureNotSupported,
    InvalidColumnReference,
    InvalidParameterValue,
    ProgramLimitExceeded,
    SyntaxError_,
    UndefinedColumn,
    UndefinedFunction,
)
from compute_node import sql_types as t
from compute_node.expressions import Scope, ScopeColumn, compile_expr
from compute_node.index_scans import choose_index
from compute_node.sources import TableSource, ViewSource, conjuncts, resolve_source

JOIN_TABLES_MAX = 64
SERIES_ROWS_MAX = 1_000_000  # generate_series in FROM: rows are held in memory


class DerivedSource:
    """A subquery in FROM: its rows, computed by its own plan."""

    def __init__(self, plan, alias: str):
        self.plan = plan
        self.alias = alias
        self.table = None
        self.column_defs = [(c.name, type_name) for c, type_name in zip(plan.columns, plan.out_types)]

    def scope_columns(self, offset=0):
        return [ScopeColumn(self.alias, name, type_name, offset + i) for i, (name, type_name) in enumerate(self.column_defs)]

    def rows(self, ctx, access=None):
        for row in self.plan.rows(ctx):
            yield None, row


def _common_type(types: list[str], unify_types) -> str:
    """A VALUES column's type, as PostgreSQL's select_common_type: the known types unified in
    order, unknowns left out; text when every value is unknown."""
    known = [type_name for type_name in types if type_name != "unknown"]
    if not known:
        return "text"
    return functools.reduce(lambda a, b: unify_types(a, b, "VALUES"), known)


class ValuesSource:
    """(VALUES (...), ...) AS alias(columns) in FROM, as SQLAlchemy's many-row INSERT ... SELECT
    sends it. A row's expressions may use parameters and columns of enclosing queries, not of
    this FROM clause. Column types resolve over all rows as UNION's do (a column of unknown
    literals only is text), and every value is converted to its column's type."""

    table = None

    def __init__(self, values: exp.Values, scope: Scope):
        from compute_node.compound import converter, unify_types
        alias = values.args.get("alias")
        if alias is None or not alias.name:
            raise SyntaxError_("VALUES in FROM must have an alias")
        rows = [row.expressions if isinstance(row, exp.Tuple) else [row] for row in values.expressions]
        width = len(rows[0])
        if any(len(row) != width for row in rows):
            raise SyntaxError_("VALUES lists must all be the same length")
        row_scope = scope.derive([])
        compiled = [[compile_expr(node, row_scope) for node in row] for row in rows]
        types = [_common_type([row[i][1] for row in compiled], unify_types) for i in range(width)]
        for row_nodes, row in zip(rows, compiled):  # unknowns (NULL, '...', $n) take the column's type
            for i, (node, (_, type_name)) in enumerate(zip(row_nodes, row)):
                if type_name == "unknown" and types[i] != "text":
                    row[i] = compile_expr(node, row_scope, types[i])
        self.row_fns = [[(fn, converter(type_name, types[i])) for i, (fn, type_name) in enumerate(row)]
                        for row in compiled]
        names = [column.name for column in alias.columns]
        if len(names) > width:
            raise InvalidColumnReference(f'table "{alias.name}" has {width} columns available but '
                                         f'{len(names)} columns specified')
        self.alias = alias.name
        self.column_defs = [(names[i] if i < len(names) else f"column{i + 1}", types[i]) for i in range(width)]

    def scope_columns(self, offset=0):
        return [ScopeColumn(self.alias, name, type_name, offset + i) for i, (name, type_name) in enumerate(self.column_defs)]

    def rows(self, ctx, access=None):
        for row in self.row_fns:
            values = []
            for fn, convert in row:
                value = fn([], ctx.params)
                values.append(value if convert is None else convert(value))
            yield None, values


class SeriesSource:
    """generate_series(start, stop [, step]) in FROM: one integer column, named by the alias (or its
    column alias). Its arguments may name columns of enclosing queries, not of this FROM clause."""

    name = "generate_series"
    table = None

    def __init__(self, call: exp.Expression, alias: exp.TableAlias | None, scope: Scope):
        args = [call.args.get(key) for key in ("start", "end", "step")]
        if args[0] is None or args[1] is None:
            raise UndefinedFunction("function generate_series() needs a start and a stop")
        compiled = [compile_expr(arg, scope, "int4") for arg in args if arg is not None]
        types = [type_name for _, type_name in compiled]
        if any(type_name not in t.INTEGERS and type_name != "unknown" for type_name in types):
            shown = ", ".join(t.DISPLAY[type_name] for type_name in types)
            raise FeatureNotSupported(f"generate_series({shown}) is not supported")
        self.fns = [fn for fn, _ in compiled]
        self.type_name = "int8" if "int8" in types else "int4"
        self.alias = alias.name if alias is not None and alias.name else self.name
        column_aliases = alias.columns if alias is not None else []
        self.column_name = column_aliases[0].name if column_aliases else self.alias

    def scope_columns(self, offset=0):
        return [ScopeColumn(self.alias, self.column_name, self.type_name, offset)]

    def rows(self, ctx, access=None):
        values = [fn([], ctx.params) for fn in self.fns]
        if any(value is None for value in values):
            return
        start, stop, step = (values + [1])[:3]
        if step == 0:
            raise InvalidParameterValue("step size cannot equal zero")
        count = max(0, (stop - start) // step + 1)
        if count > SERIES_ROWS_MAX:
            raise ProgramLimitExceeded(f"generate_series() in FROM returns at most {SERIES_ROWS_MAX} rows")
        for value in range(start, stop + (1 if step > 0 else -1), step):
            yield None, [value]


class Relation:
    """One FROM item: its source, its slots in the joined row, the filters pushed down to its scan."""

    def __init__(self, number: int, source, offset: int, nullable: bool):
        self.number = number
        self.source = source
        self.offset = offset
        self.width = len(source.scope_columns())
        self.nullable = nullable  # the right side of a LEFT JOIN: WHERE may not filter its scan
        self.filter_nodes: list[exp.Expression] = []
        self.filters: list = []  # every pushed-down condition, checked on each row even after an index scan
        self.access = None  # the index scan chosen for the table, if any

    @property
    def label(self) -> str:
        name = self.source.table.name if self.source.table is not None else getattr(self.source, "name", "subquery")
        return name if self.source.alias in ("", name) else f"{name} {self.source.alias}"


class Conjunct:
    """One AND-ed condition: its closure over the joined row and the relations it names."""

    __slots__ = ("node", "fn", "tables", "sides")

    def __init__(self, node, fn, tables: frozenset, sides=None):
        self.node = node
        self.fn = fn
        self.tables = tables
        self.sides = sides  # equality: ((tables, fn over joined row, fn over one table's row or None), x2)


class JoinStep:
    """An explicit JOIN of the written order (used when a LEFT JOIN fixes the order)."""

    def __init__(self, relation: Relation, outer: bool, conditions: list[Conjunct]):
        self.relation = relation
        self.outer = outer
        self.conditions = conditions


def _has_subquery(node) -> bool:
    return node.find(exp.Select) is not None


class FromPlan:
    def __init__(self, select: exp.Select, tables: dict, scope_template: Scope):
        from_ = select.args.get("from_") or select.args.get("from")
        joins = select.args.get("joins") or []
        self.relations: list[Relation] = []
        self.runtime = scope_template.runtime
        items = [] if from_ is None else [(from_.this, None)] + [(join.this, join) for join in joins]
        if len(items) > JOIN_TABLES_MAX:
            raise ProgramLimitExceeded(f"at most {JOIN_TABLES_MAX} tables can be joined")
        self.outer_mode = any((join.side or "").upper() == "LEFT" for join in joins)
        columns: list[ScopeColumn] = []
        using_conditions: dict[int, list[exp.Expression]] = {}
        for number, (item, join) in enumerate(items):
            if join is not None:
                side = (join.side or "").upper()
                if side in ("RIGHT", "FULL") or join.args.get("method"):
                    raise FeatureNotSupported(f"{side or join.args['method'].upper()} JOIN is not supported yet")
            source = self._source(item, scope_template)
            if source.alias and any(r.source.alias == source.alias for r in self.relations):
                raise DuplicateAlias(f'table name "{source.alias}" specified more than once')
            relation = Relation(number, source, len(columns), nullable=join is not None and (join.side or "").upper() == "LEFT")
            new_columns = source.scope_columns(relation.offset)
            if join is not None and join.args.get("using"):
                hidden, conditions = self._using(join.args["using"], columns, new_columns, source.alias)
                new_columns = [ScopeColumn(c.table, c.name, c.type_name, c.index, c.name in hidden) for c in new_columns]
                using_conditions[number] = conditions
            columns += new_columns
            self.relations.append(relation)
            if source.table is not None:
                self.runtime.tables[source.table.name] = source.table.tid
        self.width = len(columns)
        self.scope = scope_template.derive(columns)
        self.origins = self._origins()
        self.local_scopes = [self.scope.derive(r.source.scope_columns()) for r in self.relations]

        where = select.args.get("where")
        where_nodes = conjuncts(where.this) if where is not None else []
        self.pool: list[Conjunct] = []  # inner joins: conditions placed by the join order
        self.final: list[Conjunct] = []  # checked on fully joined rows
        self.steps: list[JoinStep] = []
        for number, (item, join) in enumerate(items):
            if join is None:
                continue
            nodes = conjuncts(join.args["on"]) if join.args.get("on") is not None else []
            nodes += using_conditions.get(number, [])
            if self.outer_mode:
                relation = self.relations[number]
                step_conditions = []
                for node in nodes:
                    if self._tables_of(node) <= {number} and not _has_subquery(node):
                        self._push(relation, node)
                    else:
                        step_conditions.append(self._conjunct(node))
                self.steps.append(JoinStep(relation, relation.nullable, step_conditions))
            else:
                where_nodes = where_nodes + nodes
        for node in where_nodes:
            subquery = _has_subquery(node)
            tables = self._tables_of(node)
            if not subquery and self.relations and len(tables) <= 1 and not self._nullable(tables):
                self._push(self.relations[min(tables, default=0)], node)
            elif subquery or not self.relations or self.outer_mode:
                self.final.append(self._conjunct(node))
            else:
                self.pool.append(self._conjunct(node))
        for relation, local_scope in zip(self.relations, self.local_scopes):
            if relation.filter_nodes and isinstance(relation.source, TableSource):
                relation.access = choose_index(relation.filter_nodes, relation.source.table, local_scope)

    def _origins(self) -> dict[int, tuple[int, int]]:
        """Joined-row slot -> (table oid, column number) for columns read straight from a table, also
        through a view, as PostgreSQL reports them in RowDescription."""
        origins = {}
        for relation in self.relations:
            source = relation.source
            if isinstance(source, TableSource):
                for i in range(relation.width):
                    origins[relation.offset + i] = (source.table.oid, i + 1)
            elif isinstance(source, ViewSource):
                for i, column in enumerate(source.plan.columns[:relation.width]):
                    if column.table_oid:
                        origins[relation.offset + i] = (column.table_oid, column.column_number)
        return origins

    def _source(self, item, scope_template: Scope):
        if isinstance(item, exp.Values):
            return ValuesSource(item, scope_template)
        if isinstance(item, exp.Table) and isinstance(item.this, (exp.ExplodingGenerateSeries, exp.GenerateSeries)):
            return SeriesSource(item.this, item.args.get("alias"), scope_template)
        if isinstance(item, exp.Table):
            if not item.name:
                raise FeatureNotSupported(f"FROM {item.sql(dialect='postgres')[:60]} is not supported")
            return resolve_source(item, scope_template.tables, scope_template.runtime)
        if isinstance(item, exp.Subquery):
            from compute_node.subqueries import plan_query
            alias = item.alias
            if not alias:
                raise FeatureNotSupported("a subquery in FROM must have an alias")
            plan = plan_query(item.this, scope_template.tables, scope_template.param_types, scope_template.outer,
                              scope_template.runtime)
            return DerivedSource(plan, alias)
        raise FeatureNotSupported(f"FROM {item.key.upper()} is not supported")

    def _using(self, names, left_columns, right_columns, right_alias):
        left_scope = Scope([c for c in left_columns], [])
        hidden = set()
        conditions = []
        for identifier in names:
            name = identifier.name
            left = left_scope.lookup(exp.column(name))
            if left is None or not any(c.name == name for c in right_columns):
                raise UndefinedColumn(f'column "{name}" specified in USING clause does not exist in '
                                      f'{"left" if left is None else "right"} table')
            hidden.add(name)
            conditions.append(exp.EQ(this=exp.column(name, table=left.table), expression=exp.column(name, table=right_alias)))
        return hidden, conditions

    def _nullable(self, tables) -> bool:
        return any(self.relations[number].nullable for number in tables)

    def _tables_of(self, node) -> frozenset:
        """The relations a condition names outside its subqueries."""
        found = set()
        for column in node.find_all(exp.Column):
            if isinstance(column.this, exp.Star) or _inside_subquery(column, node):
                continue
            resolved = self.scope.lookup(column)
            if resolved is not None:
                found.add(self._relation_at(resolved.index))
        return frozenset(found)

    def _relation_at(self, index: int) -> int:
        for relation in reversed(self.relations):
            if index >= relation.offset:
                return relation.number
        raise AssertionError(index)

    def _push(self, relation: Relation, node) -> None:
        relation.filter_nodes.append(node)
        relation.filters.append(compile_expr(node, self.local_scopes[relation.number], "bool")[0])

    def _conjunct(self, node) -> Conjunct:
        fn, _ = compile_expr(node, self.scope, "bool")
        tables = self._tables_of(node)
        sides = None
        if isinstance(node, exp.EQ) and not _has_subquery(node):
            left_tables, right_tables = self._tables_of(node.this), self._tables_of(node.expression)
            if left_tables and right_tables and not left_tables & right_tables:
                sides = (self._side(node.this, left_tables), self._side(node.expression, right_tables))
                if sides[0][3] != sides[1][3]:
                    sides = None
        return Conjunct(node, fn, tables, sides)

    def _side(self, node, tables):
        full_fn, type_name = compile_expr(node, self.scope)
        local_fn = compile_expr(node, self.local_scopes[next(iter(tables))])[0] if len(tables) == 1 else None
        kind = "number" if type_name in ("int2", "int4", "int8", "numeric", "float4", "float8") else \
            "string" if type_name in ("text", "varchar") else type_name
        return tables, full_fn, local_fn, kind

    # --- run ----------------------------------------------------------------------------------

    def _scan(self, relation: Relation, ctx) -> list:
        params = ctx.params
        filters = relation.filters
        if not filters:
            return [values for _, values in relation.source.rows(ctx, relation.access)]
        return [values for _, values in relation.source.rows(ctx, relation.access)
                if all(fn(values, params) is True for fn in filters)]

    def rows(self, ctx, trace: list | None = None) -> list[list]:
        params = ctx.params
        if not self.relations:
            rows = [[]]
        else:
            inputs = [self._scan(relation, ctx) for relation in self.relations]
            rows = self._join_outer(inputs, params, trace) if self.outer_mode else self._join_inner(inputs, params, trace)
        for conjunct in self.final:
            fn = conjunct.fn
            rows = [row for row in rows if fn(row, params) is True]
        return rows

    def _widen(self, relation: Relation, local_rows: list) -> list[list]:
        width, start, end = self.width, relation.offset, relation.offset + relation.width
        out = []
        for values in local_rows:
            row = [None] * width
            row[start:end] = values
            out.append(row)
        return out

    def _join_inner(self, inputs, params, trace):
        remaining = set(range(len(self.relations)))
        start = min(remaining, key=lambda n: (len(inputs[n]), n))
        joined = {start}
        remaining.discard(start)
        rows = self._widen(self.relations[start], inputs[start])
        if trace is not None:
            trace.append(("scan", self.relations[start], len(inputs[start])))
        pending = list(self.pool)
        while remaining:
            connected = [n for n in remaining if any(self._key_of(c, joined, n) for c in pending)]
            number = min(connected or remaining, key=lambda n: (len(inputs[n]), n))
            remaining.discard(number)
            keys, residuals, still_pending = [], [], []
            for conjunct in pending:
                key = self._key_of(conjunct, joined, number)
                if key is not None:
                    keys.append(key)
                elif conjunct.tables <= joined | {number}:
                    residuals.append(conjunct.fn)
                else:
                    still_pending.append(conjunct)
            pending = still_pending
            joined.add(number)
            relation = self.relations[number]
            if trace is not None:
                trace.append(("hash" if keys else "nested", relation, len(inputs[number]), False))
            rows = self._join(rows, inputs[number], relation, keys, residuals, params, keep_unmatched=False)
        assert not pending, [c.node.sql() for c in pending]
        return rows

    @staticmethod
    def _key_of(conjunct: Conjunct, joined: set, number: int):
        """(fn over joined rows, fn over the new table's rows) if the conjunct is an equality between them."""
        if conjunct.sides is None:
            return None
        for old, new in (conjunct.sides, conjunct.sides[::-1]):
            if new[0] == {number} and old[0] <= joined:
                return old[1], new[2]
        return None

    def _join_outer(self, inputs, params, trace):
        first = self.relations[0]
        rows = self._widen(first, inputs[0])
        if trace is not None:
            trace.append(("scan", first, len(inputs[0])))
        joined = {0}
        for step in self.steps:
            number = step.relation.number
            keys, residuals = [], []
            for conjunct in step.conditions:
                key = self._key_of(conjunct, joined, number)
                if key is not None:
                    keys.append(key)
                else:
                    residuals.append(conjunct.fn)
            if trace is not None:
                trace.append(("hash" if keys else "nested", step.relation, len(inputs[number]), step.outer))
            rows = self._join(rows, inputs[number], step.relation, keys, residuals, params, step.outer)
            joined.add(number)
        return rows

    @staticmethod
    def _join(left_rows, right_rows, relation, keys, residuals, params, keep_unmatched):
        """Hash join on `keys` (nested loop without), then the residual conditions on each pair."""
        start, end = relation.offset, relation.offset + relation.width
        if keys:
            left_fns = [left for left, _ in keys]
            right_fns = [right for _, right in keys]
            table: dict[tuple, list] = {}
            for values in right_rows:
                key = tuple(fn(values, params) for fn in right_fns)
                if None not in key:
                    table.setdefault(key, []).append(values)
        out = []
        for left in left_rows:
            if keys:
                key = tuple(fn(left, params) for fn in left_fns)
                matches = table.get(key, ()) if None not in key else ()
            else:
                matches = right_rows
            matched = False
            for values in matches:
                row = left.copy()
                row[start:end] = values
                if all(fn(row, params) is True for fn in residuals):
                    out.append(row)
                    matched = True
            if keep_unmatched and not matched:
                out.append(left.copy())
        return out

    def explain(self, trace) -> list[str]:
        lines = []
        for entry in trace:
            kind, relation = entry[0], entry[1]
            described = f"{self._scan_described(relation)} rows={entry[2]}"
            if kind == "scan":
                lines.append(described)
            else:
                join = ("Hash Left Join" if entry[3] else "Hash Join") if kind == "hash" else \
                    ("Nested Loop Left Join" if entry[3] else "Nested Loop")
                lines.append(f"{join} with {described}")
        for conjunct in self.final:
            lines.append(f"Filter: {conjunct.node.sql(dialect='postgres')}")
        return lines


    @staticmethod
    def _scan_described(relation: Relation) -> str:
        """How one FROM item is read, in PostgreSQL's words, with the conditions its scan checks
        (an index scan's own conditions shown apart)."""
        access = relation.access
        if access is not None:
            scan = access.describe(relation.label)
            rest = [node for node in relation.filter_nodes if not any(node is used for used in access.conditions)]
        else:
            kind = "Subquery Scan" if isinstance(relation.source, ViewSource) else "Seq Scan"
            scan, rest = f"{kind} on {relation.label}", relation.filter_nodes
        filters = f" (filter: {' AND '.join(n.sql(dialect='postgres') for n in rest)})" if rest else ""
        return scan + filters


def _inside_subquery(column, top) -> bool:
    node = column
    while node is not None and node is not top:
        if isinstance(node, exp.Select):
            return True
        node = node.parent
    return False
