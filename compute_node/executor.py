"""Plans and runs one SQL statement over the catalog, heaps and B-trees (DESIGN.md 8).

analyze (names, types, SQLSTATE errors) -> a Plan holding compiled closures -> run against a
snapshot. Invariants: a plan is bound to the table definitions it was made from and is remade if
any of them changed; UPDATE and DELETE collect their target rows before changing any, so a
statement never sees its own new row versions; each row's heap tuple and index entries change in
one MTR; an error before a row's MTR leaves nothing of that row behind, and the transaction is
aborted by the session, so a failed statement is never half-applied.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
from typing import Callable, Iterator

from sqlglot import exp

from aurora_db.errors import (
    DuplicateColumn,
    FeatureNotSupported,
    GroupingError,
    InvalidParameterValue,
    NotNullViolation,
    SerializationFailure,
    SyntaxError_,
    UndefinedColumn,
    UndefinedTable,
    UniqueViolation,
)
from aurora_db.pages import XID_ABORTED, XID_COMMITTED
from compute_node import sql_types as t
from compute_node.backend import Column, Result
from compute_node.btree import BTree
from compute_node.catalog import PRIMARY_KEY_INDEX, ColumnDef, TableDef
from compute_node.expressions import Scope, ScopeColumn, compile_expr
from compute_node.heap import Heap

AGGREGATES = (exp.Count, exp.Sum, exp.Min, exp.Max, exp.Avg)


@dataclasses.dataclass
class Context:
    """What a plan runs against: the engine's parts, the statement's snapshot and parameters."""

    store: object
    transactions: object
    catalog: object
    snapshot: object
    session: object  # has .xid (None until the first write) and .ensure_xid()
    params: list
    settings: dict

    @property
    def xid(self) -> int | None:
        return self.session.xid

    def ensure_xid(self) -> int:
        return self.session.ensure_xid()

    def visible(self, xmin, xmax) -> bool:
        return self.transactions.visible(xmin, xmax, self.snapshot, self.xid)


class Plan:
    columns: list[Column] | None = None
    tables: dict[str, tuple] = {}  # name -> catalog tid the plan was made from
    writes = False

    def run(self, ctx: Context) -> Result:
        raise NotImplementedError


# --- sources ------------------------------------------------------------------------------------


class TableSource:
    """Rows of one table visible to the snapshot, by full scan or by primary-key lookup."""

    def __init__(self, table: TableDef, alias: str):
        self.table = table
        self.alias = alias
        self.types = [c.type_name for c in table.columns]

    def scope_columns(self, offset=0):
        return [ScopeColumn(self.alias, c.name, c.type_name, offset + i) for i, c in enumerate(self.table.columns)]

    def rows(self, ctx: Context, key_fns=None) -> Iterator[tuple[tuple, list]]:
        heap = Heap(ctx.store, self.table.table_page_id)
        if key_fns is not None:
            key = tuple(fn([], ctx.params) for fn in key_fns)
            if any(value is None for value in key):
                return
            tree = BTree(ctx.store, self._index_root(ctx))
            for tid in tree.lookup(key):
                xmin, xmax, values = heap.fetch(tid)
                if ctx.visible(xmin, xmax):
                    yield tid, values
            return
        for tid, (xmin, xmax, values) in heap.scan():
            if ctx.visible(xmin, xmax):
                yield tid, values

    def _index_root(self, ctx):
        return ctx.store.get(self.table.table_page_id).values["indexes"][PRIMARY_KEY_INDEX]


class VirtualSource:
    """A read-only table computed from the catalog (information_schema)."""

    def __init__(self, name: str, columns: list[tuple[str, str]], produce: Callable[[Context], list[list]], alias: str):
        self.name = name
        self.column_defs = columns
        self.produce = produce
        self.alias = alias
        self.table = None

    def scope_columns(self, offset=0):
        return [ScopeColumn(self.alias, name, type_name, offset + i) for i, (name, type_name) in enumerate(self.column_defs)]

    def rows(self, ctx, key_fns=None):
        for row in self.produce(ctx):
            yield None, row


class NoSource:
    alias = ""
    table = None

    def scope_columns(self, offset=0):
        return []

    def rows(self, ctx, key_fns=None):
        yield None, []


# --- information_schema -------------------------------------------------------------------------


def _info_tables(ctx):
    return [["postgres", "public", name, "BASE TABLE"] for name in sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid))]


def _info_columns(ctx):
    rows = []
    for name, table in sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid).items()):
        for position, column in enumerate(table.columns, 1):
            length = column.type_modifier if column.type_name == "varchar" and column.type_modifier >= 0 else None
            rows.append(["postgres", "public", name, column.name, position, None,
                         "NO" if column.not_null else "YES", t.DISPLAY[column.type_name], length])
    return rows


def _info_constraints(ctx):
    return [[f"{name}_pkey", "public", name, "PRIMARY KEY"]
            for name, table in sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid).items()) if table.primary_key]


def _info_key_columns(ctx):
    rows = []
    for name, table in sorted(ctx.catalog.tables(ctx.snapshot, ctx.xid).items()):
        for position, column in enumerate(table.primary_key, 1):
            rows.append([f"{name}_pkey", "public", name, column, position])
    return rows


INFORMATION_SCHEMA = {
    "tables": ([("table_catalog", "text"), ("table_schema", "text"), ("table_name", "text"), ("table_type", "text")],
               _info_tables),
    "columns": ([("table_catalog", "text"), ("table_schema", "text"), ("table_name", "text"), ("column_name", "text"),
                 ("ordinal_position", "int4"), ("column_default", "text"), ("is_nullable", "text"),
                 ("data_type", "text"), ("character_maximum_length", "int4")], _info_columns),
    "table_constraints": ([("constraint_name", "text"), ("table_schema", "text"), ("table_name", "text"),
                           ("constraint_type", "text")], _info_constraints),
    "key_column_usage": ([("constraint_name", "text"), ("table_schema", "text"), ("table_name", "text"),
                          ("column_name", "text"), ("ordinal_position", "int4")], _info_key_columns),
}


def resolve_source(table: exp.Table, tables: dict[str, TableDef]):
    name = table.name
    schema = table.db
    alias = table.alias_or_name
    if schema == "information_schema":
        if name not in INFORMATION_SCHEMA:
            raise UndefinedTable(f'relation "information_schema.{name}" does not exist')
        columns, produce = INFORMATION_SCHEMA[name]
        return VirtualSource(name, columns, produce, alias)
    if schema not in ("", "public"):
        raise UndefinedTable(f'relation "{schema}.{name}" does not exist')
    if name not in tables:
        raise UndefinedTable(f'relation "{name}" does not exist')
    return TableSource(tables[name], alias)


def output_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Alias):
        return node.alias
    if isinstance(node, exp.Column):
        return node.name
    if isinstance(node, exp.Cast):
        inner = node.this
        return output_name(inner) if isinstance(inner, (exp.Column, exp.Cast)) else t.SQLGLOT_TYPES.get(
            node.to.this.name, "?column?").replace("int4", "int4")
    if isinstance(node, exp.Func) and not isinstance(node, (exp.Binary, exp.Unary)):
        return node.sql_name().lower() if not isinstance(node, exp.Count) else "count"
    if isinstance(node, exp.Paren):
        return output_name(node.this)
    return "?column?"


def _conjuncts(node):
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    if isinstance(node, exp.Paren):
        return _conjuncts(node.this)
    return [node]


def key_lookup(where: exp.Expression | None, source, scope: Scope):
    """If WHERE pins every primary-key column to a constant, the closures computing the key."""
    table = getattr(source, "table", None)
    if where is None or not isinstance(source, TableSource) or not table.primary_key:
        return None
    pinned = {}
    for conjunct in _conjuncts(where):
        if not isinstance(conjunct, exp.EQ):
            continue
        for column, other in ((conjunct.this, conjunct.expression), (conjunct.expression, conjunct.this)):
            if isinstance(column, exp.Column) and column.name in table.primary_key and not list(other.find_all(exp.Column)) \
                    and not (column.table and column.table != source.alias):
                type_name = table.columns[table.column_index(column.name)].type_name
                fn, value_type = compile_expr(other, scope, type_name)
                if value_type not in t.NUMBERS and value_type != type_name and value_type != "unknown":
                    continue
                pinned[column.name] = _coerce_key(fn, value_type, type_name)
    if set(pinned) != set(table.primary_key):
        return None
    return [pinned[name] for name in table.primary_key]


def _coerce_key(fn, source_type, target_type):
    if source_type == target_type:
        return fn
    def coerced(row, params):
        value = fn(row, params)
        if value is None:
            return None
        if target_type in t.INTEGERS and isinstance(value, (float, decimal.Decimal)) and value != int(value):
            return _NO_MATCH
        try:
            return t.cast(value, source_type, target_type)
        except Exception:
            return _NO_MATCH
    return coerced


class _NoMatch:
    def __eq__(self, other):
        return False

    def __lt__(self, other):
        return False

    def __gt__(self, other):
        return False

    __hash__ = object.__hash__


_NO_MATCH = _NoMatch()


def _constant(node, scope, what: str, expected="int8"):
    if node is None:
        return None
    fn, _ = compile_expr(node, scope, expected)
    def value(ctx):
        result = fn([], ctx.params)
        if result is not None and (not isinstance(result, int) or result < 0):
            raise InvalidParameterValue(f"{what} must not be negative")
        return result
    return value


# --- SELECT -------------------------------------------------------------------------------------


@functools.total_ordering
class _SortKey:
    """One ORDER BY value: NULLs sort last ascending and first descending, as in PostgreSQL."""

    __slots__ = ("value", "descending")

    def __init__(self, value, descending):
        self.value = value
        self.descending = descending

    def __eq__(self, other):
        return self.value == other.value

    def __lt__(self, other):
        a, b = self.value, other.value
        if a is None or b is None:
            if a is None and b is None:
                return False
            less = b is None  # non-NULL before NULL ascending
        else:
            less = a < b
            if not less and a == b:
                return False
        return (not less) if self.descending else less


class Accumulator:
    def __init__(self, kind: str, distinct: bool):
        self.kind = kind
        self.distinct = distinct
        self.seen = set() if distinct else None
        self.count = 0
        self.value = None

    def add(self, value):
        if self.kind == "count_star":
            self.count += 1
            return
        if value is None:
            return
        if self.seen is not None:
            if value in self.seen:
                return
            self.seen.add(value)
        self.count += 1
        if self.kind in ("sum", "avg"):
            self.value = value if self.value is None else self.value + value
        elif self.kind == "min":
            self.value = value if self.value is None or value < self.value else self.value
        elif self.kind == "max":
            self.value = value if self.value is None or value > self.value else self.value

    def result(self, result_type):
        if self.kind in ("count", "count_star"):
            return self.count
        if self.kind == "avg":
            if not self.count:
                return None
            if result_type == "numeric":
                quotient = decimal.Decimal(self.value) / decimal.Decimal(self.count)
                return quotient.quantize(decimal.Decimal(1).scaleb(-16)).normalize() if quotient != quotient.to_integral() \
                    else quotient.quantize(decimal.Decimal("1.0000000000000000"))
            return self.value / self.count
        if self.kind == "sum" and result_type == "numeric" and self.value is not None:
            return decimal.Decimal(self.value)
        return self.value


def _aggregate_type(kind, arg_type):
    if kind in ("count", "count_star"):
        return "int8"
    if kind == "sum":
        return {"int2": "int8", "int4": "int8", "int8": "numeric", "float4": "float4", "float8": "float8",
                "numeric": "numeric"}.get(arg_type) or _bad_aggregate(kind, arg_type)
    if kind == "avg":
        return {"int2": "numeric", "int4": "numeric", "int8": "numeric", "float4": "float8", "float8": "float8",
                "numeric": "numeric"}.get(arg_type) or _bad_aggregate(kind, arg_type)
    return arg_type


def _bad_aggregate(kind, arg_type):
    from aurora_db.errors import UndefinedFunction
    raise UndefinedFunction(f"function {kind}({t.DISPLAY[arg_type]}) does not exist")


class SelectPlan(Plan):
    def __init__(self, select: exp.Select, tables: dict[str, TableDef], param_types: list[str]):
        if select.args.get("joins"):
            raise FeatureNotSupported("joins are not supported yet")
        for unsupported in ("with_", "with", "windows", "qualify"):
            if select.args.get(unsupported):
                raise FeatureNotSupported(f"{unsupported.rstrip('_').upper()} is not supported")
        from_ = select.args.get("from_") or select.args.get("from")
        if from_ is not None:
            if not isinstance(from_.this, exp.Table):
                raise FeatureNotSupported("subqueries in FROM are not supported yet")
            self.source = resolve_source(from_.this, tables)
        else:
            self.source = NoSource()
        if self.source.table is not None:
            self.tables = {self.source.table.name: self.source.table.tid}
        scope = Scope(self.source.scope_columns(), param_types)
        self.scope = scope
        where = select.args.get("where")
        self.where_fn = compile_expr(where.this, scope, "bool")[0] if where is not None else None
        self.key_fns = key_lookup(where.this, self.source, scope) if where is not None else None

        projections = []
        for node in select.expressions:
            if isinstance(node, exp.Star):
                projections += [(exp.column(c.name, table=c.table), c.name) for c in scope.columns]
            elif isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
                projections += [(exp.column(c.name, table=c.table), c.name) for c in scope.columns
                                if c.table == node.table]
            else:
                projections.append((node.this if isinstance(node, exp.Alias) else node, output_name(node)))
        group = select.args.get("group")
        having = select.args.get("having")
        order = select.args.get("order")
        aggregates = [a for node, _ in projections for a in node.find_all(*AGGREGATES)]
        if having is not None:
            aggregates += list(having.this.find_all(*AGGREGATES))
        if order is not None:
            aggregates += [a for o in order.expressions for a in o.find_all(*AGGREGATES)]
        self.grouped = bool(aggregates) or group is not None
        self.output_fns = []
        out_types = []
        if self.grouped:
            self._plan_grouping(group, aggregates, scope)
        for node, _ in projections:
            fn, type_name = compile_expr(node, self.out_scope if self.grouped else scope)
            self.output_fns.append(fn)
            out_types.append("text" if type_name == "unknown" else type_name)
        self.having_fn = compile_expr(having.this, self.out_scope, "bool")[0] if having is not None else None
        self.columns = [Column(name, t.OIDS[type_name], *self._origin(node)) for (node, name), type_name
                        in zip(projections, out_types)]
        self.out_types = out_types
        self.sort = self._plan_order(order, projections, scope) if order is not None else None
        self.distinct = bool(select.args.get("distinct"))
        self.limit = _constant(select.args.get("limit") and select.args["limit"].expression, scope, "LIMIT")
        offset = select.args.get("offset")
        self.offset = _constant(offset and offset.expression, scope, "OFFSET")

    def _origin(self, node):
        if isinstance(node, exp.Column) and isinstance(self.source, TableSource):
            index = self.source.table.column_index(node.name)
            if index is not None:
                return self.source.table.oid, index + 1
        return 0, 0

    def _plan_grouping(self, group, aggregates, scope):
        self.group_fns = []
        replacements = {}
        out_columns = []
        for node in (group.expressions if group is not None else []):
            fn, type_name = compile_expr(node, scope)
            slot = len(self.group_fns)
            self.group_fns.append(fn)
            replacements[node.sql(dialect="postgres")] = (slot, type_name)
            if isinstance(node, exp.Column):
                resolved = scope.resolve(node)
                replacements[exp.column(resolved.name).sql(dialect="postgres")] = (slot, type_name)
                replacements[exp.column(resolved.name, table=resolved.table).sql(dialect="postgres")] = (slot, type_name)
        self.aggregate_specs = []
        for aggregate in aggregates:
            key = aggregate.sql(dialect="postgres")
            if key in replacements:
                continue
            arg = aggregate.this
            distinct = isinstance(arg, exp.Distinct)
            if distinct:
                arg = arg.expressions[0]
            if isinstance(aggregate, exp.Count) and (arg is None or isinstance(arg, exp.Star)):
                kind, arg_fn, arg_type = "count_star", None, "int8"
            else:
                if any(arg.find_all(*AGGREGATES)):
                    raise GroupingError("aggregate function calls cannot be nested")
                arg_fn, arg_type = compile_expr(arg, scope)
                kind = type(aggregate).__name__.lower()
                if arg_type == "unknown":
                    arg_type = "text"
            result_type = _aggregate_type(kind, arg_type)
            slot = len(self.group_fns) + len(self.aggregate_specs)
            self.aggregate_specs.append((kind, distinct, arg_fn, result_type))
            replacements[key] = (slot, result_type)
        self.out_scope = Scope([], scope.param_types)
        self.out_scope.replacements = replacements
        # A column not grouped and not inside an aggregate is an error, as in PostgreSQL.
        self.group_scope_error = lambda column: GroupingError(
            f'column "{column}" must appear in the GROUP BY clause or be used in an aggregate function')
        self.out_scope.resolve = lambda column: (_ for _ in ()).throw(self.group_scope_error(
            f"{column.table}.{column.name}" if column.table else column.name))

    def _plan_order(self, order, projections, scope):
        keys = []
        names = {name: i for i, (_, name) in enumerate(projections)}
        for ordered in order.expressions:
            node = ordered.this
            descending = bool(ordered.args.get("desc"))
            if isinstance(node, exp.Literal) and not node.is_string:
                position = int(node.this)
                if not 1 <= position <= len(projections):
                    raise UndefinedColumn(f"ORDER BY position {position} is not in select list")
                keys.append(("output", position - 1, descending))
            elif isinstance(node, exp.Column) and not node.table and node.name in names and \
                    not any(c.name == node.name for c in scope.columns if not self.grouped):
                keys.append(("output", names[node.name], descending))
            elif isinstance(node, exp.Column) and not node.table and node.name in names and \
                    isinstance(projections[names[node.name]][0], exp.Column):
                keys.append(("output", names[node.name], descending))
            else:
                fn, _ = compile_expr(node, self.out_scope if self.grouped else scope)
                keys.append(("input", fn, descending))
        return keys

    def run(self, ctx: Context) -> Result:
        params = ctx.params
        out_rows = []
        if self.grouped:
            rows_with_input = self._run_grouped(ctx)
        else:
            rows_with_input = self._run_plain(ctx)
        keyed = []
        for output, input_row in rows_with_input:
            if self.sort:
                key = tuple(_SortKey(output[spec] if kind == "output" else spec(input_row, params), descending)
                            for kind, spec, descending in self.sort)
                keyed.append((key, output))
            else:
                keyed.append((None, output))
        if self.sort:
            keyed.sort(key=lambda pair: pair[0])
        out_rows = [tuple(output) for _, output in keyed]
        if self.distinct:
            seen = set()
            unique = []
            for row in out_rows:
                if row not in seen:
                    seen.add(row)
                    unique.append(row)
            out_rows = unique
        offset = self.offset(ctx) if self.offset else None
        limit = self.limit(ctx) if self.limit else None
        if offset:
            out_rows = out_rows[offset:]
        if limit is not None:
            out_rows = out_rows[:limit]
        return Result(f"SELECT {len(out_rows)}", self.columns, out_rows)

    def _input_rows(self, ctx):
        params = ctx.params
        where = self.where_fn
        for _, values in self.source.rows(ctx, self.key_fns):
            if where is None or where(values, params) is True:
                yield values

    def _run_plain(self, ctx):
        params = ctx.params
        fns = self.output_fns
        for values in self._input_rows(ctx):
            yield [fn(values, params) for fn in fns], values

    def _run_grouped(self, ctx):
        params = ctx.params
        groups: dict[tuple, list] = {}
        for values in self._input_rows(ctx):
            key = tuple(fn(values, params) for fn in self.group_fns)
            accumulators = groups.get(key)
            if accumulators is None:
                accumulators = groups[key] = [Accumulator(kind, distinct) for kind, distinct, _, _ in self.aggregate_specs]
            for accumulator, (_, _, arg_fn, _) in zip(accumulators, self.aggregate_specs):
                accumulator.add(arg_fn(values, params) if arg_fn else None)
        if not groups and not self.group_fns:
            groups[()] = [Accumulator(kind, distinct) for kind, distinct, _, _ in self.aggregate_specs]
        for key, accumulators in groups.items():
            row = list(key) + [acc.result(spec[3]) for acc, spec in zip(accumulators, self.aggregate_specs)]
            if self.having_fn is not None and self.having_fn(row, params) is not True:
                continue
            yield [fn(row, params) for fn in self.output_fns], row


# --- writes -------------------------------------------------------------------------------------


def _pkey_name(table: TableDef) -> str:
    return f"{table.name}_pkey"


def check_row(table: TableDef, values: list) -> None:
    for column, value in zip(table.columns, values):
        if value is None and (column.not_null or column.name in table.primary_key):
            raise NotNullViolation(
                f'null value in column "{column.name}" of relation "{table.name}" violates not-null constraint')


def check_writable(ctx: Context, tid, xmax: int) -> bool:
    """May this transaction set xmax on the tuple? False: it already deleted it itself."""
    if xmax == 0:
        return True
    if xmax == ctx.xid:
        return False
    status = ctx.transactions.status(xmax)
    if status == XID_ABORTED:
        return True
    if status == XID_COMMITTED:
        raise SerializationFailure("could not serialize access due to concurrent update")
    raise SerializationFailure("could not serialize access: the row is being changed by a concurrent transaction")


def check_unique(ctx: Context, table: TableDef, tree: BTree, heap: Heap, key: tuple) -> None:
    for tid in tree.lookup(key):
        xmin, xmax, _ = heap.fetch(tid)
        if xmin != ctx.xid:
            status = ctx.transactions.status(xmin)
            if status == XID_ABORTED:
                continue
            if status != XID_COMMITTED:
                raise SerializationFailure(
                    f'could not insert key into "{_pkey_name(table)}": a concurrent transaction holds it')
        if xmax == ctx.xid:
            continue
        if xmax:
            status = ctx.transactions.status(xmax)
            if status == XID_COMMITTED:
                continue
            if status != XID_ABORTED:
                raise SerializationFailure(
                    f'could not insert key into "{_pkey_name(table)}": a concurrent transaction is deleting it')
        shown = ", ".join(t.to_text(v) for v in key)
        raise UniqueViolation(f'duplicate key value violates unique constraint "{_pkey_name(table)}"',
                              detail=f"Key ({', '.join(table.primary_key)})=({shown}) already exists.")


def write_row(ctx: Context, table: TableDef, values: list, old_tid=None) -> tuple:
    """Insert one row version (and, for an UPDATE, end the old one) with its index entry, in one MTR."""
    store = ctx.store
    xid = ctx.ensure_xid()
    heap = Heap(store, table.table_page_id)
    tree = None
    key = None
    if table.primary_key:
        tree = BTree(store, store.get(table.table_page_id).values["indexes"][PRIMARY_KEY_INDEX])
        key = tuple(values[i] for i in table.primary_key_indexes)
    target = heap.prepare_insert(values)
    path = tree.prepare_insert(key) if tree else None
    if old_tid is not None:
        store.get(old_tid[0])
    with store.mtr():
        if old_tid is not None:
            store.log(old_tid[0], "heap_set_xmax", old_tid[1], xid)
        tid = heap.insert(values, xid, target)
        if tree:
            tree.insert(key, tid, path)
    return tid


class InsertPlan(Plan):
    writes = True

    def __init__(self, insert: exp.Insert, tables, param_types):
        target = insert.this
        table_node = target.this if isinstance(target, exp.Schema) else target
        if not isinstance(table_node, exp.Table):
            raise FeatureNotSupported("INSERT target must be a table")
        source = resolve_source(table_node, tables)
        if not isinstance(source, TableSource):
            raise FeatureNotSupported("cannot insert into a system view")
        self.table = table = source.table
        self.tables = {table.name: table.tid}
        if insert.args.get("returning"):
            raise FeatureNotSupported("RETURNING is not supported yet")
        if insert.args.get("conflict"):
            raise FeatureNotSupported("ON CONFLICT is not supported yet")
        if isinstance(target, exp.Schema) and target.expressions:
            names = [identifier.name for identifier in target.expressions]
        else:
            names = [c.name for c in table.columns]
        positions = []
        for name in names:
            index = table.column_index(name)
            if index is None:
                raise UndefinedColumn(f'column "{name}" of relation "{table.name}" does not exist')
            if index in positions:
                raise DuplicateColumn(f'column "{name}" specified more than once')
            positions.append(index)
        values = insert.expression
        if not isinstance(values, exp.Values):
            raise FeatureNotSupported("INSERT ... SELECT is not supported yet")
        scope = Scope([], param_types)
        self.rows = []
        for row in values.expressions:
            items = row.expressions if isinstance(row, exp.Tuple) else [row]
            if len(items) > len(positions):
                raise SyntaxError_("INSERT has more expressions than target columns")
            if len(items) < len(positions) and isinstance(target, exp.Schema) and target.expressions:
                raise SyntaxError_("INSERT has more target columns than expressions")
            compiled = []
            for position, item in zip(positions, items):
                column = table.columns[position]
                if isinstance(item, exp.Var) and item.name.upper() == "DEFAULT":
                    continue
                fn, type_name = compile_expr(item, scope, column.type_name)
                compiled.append((position, fn, type_name, column))
            self.rows.append(compiled)

    def run(self, ctx: Context) -> Result:
        table = self.table
        heap = Heap(ctx.store, table.table_page_id)
        count = 0
        for compiled in self.rows:
            values = [None] * len(table.columns)
            for position, fn, type_name, column in compiled:
                values[position] = t.assign(fn([], ctx.params), type_name, column.type_name, column.type_modifier)
            check_row(table, values)
            if table.primary_key:
                tree = BTree(ctx.store, ctx.store.get(table.table_page_id).values["indexes"][PRIMARY_KEY_INDEX])
                check_unique(ctx, table, tree, heap, tuple(values[i] for i in table.primary_key_indexes))
            write_row(ctx, table, values)
            count += 1
        return Result(f"INSERT 0 {count}")


class _TargetedPlan(Plan):
    """UPDATE and DELETE: find the target rows first, then change them."""

    writes = True

    def _bind_target(self, node, where, tables, param_types):
        source = resolve_source(node, tables)
        if not isinstance(source, TableSource):
            raise FeatureNotSupported("cannot change a system view")
        self.source = source
        self.table = source.table
        self.tables = {self.table.name: self.table.tid}
        self.scope = Scope(source.scope_columns(), param_types)
        self.where_fn = compile_expr(where.this, self.scope, "bool")[0] if where is not None else None
        self.key_fns = key_lookup(where.this, source, self.scope) if where is not None else None

    def targets(self, ctx):
        params = ctx.params
        return [(tid, values) for tid, values in self.source.rows(ctx, self.key_fns)
                if self.where_fn is None or self.where_fn(values, params) is True]


class UpdatePlan(_TargetedPlan):
    def __init__(self, update: exp.Update, tables, param_types):
        for unsupported in ("from_", "from", "returning", "joins"):
            if update.args.get(unsupported):
                raise FeatureNotSupported(f"UPDATE with {unsupported.rstrip('_').upper()} is not supported yet")
        self._bind_target(update.this, update.args.get("where"), tables, param_types)
        self.assignments = []
        for assignment in update.expressions:
            column_node = assignment.this
            index = self.table.column_index(column_node.name)
            if index is None:
                raise UndefinedColumn(f'column "{column_node.name}" of relation "{self.table.name}" does not exist')
            column = self.table.columns[index]
            fn, type_name = compile_expr(assignment.expression, self.scope, column.type_name)
            self.assignments.append((index, fn, type_name, column))

    def run(self, ctx: Context) -> Result:
        table = self.table
        heap = Heap(ctx.store, table.table_page_id)
        key_indexes = table.primary_key_indexes
        count = 0
        for tid, values in self.targets(ctx):
            new_values = list(values)
            for index, fn, type_name, column in self.assignments:
                new_values[index] = t.assign(fn(values, ctx.params), type_name, column.type_name, column.type_modifier)
            check_row(table, new_values)
            ctx.ensure_xid()
            if not check_writable(ctx, tid, heap.fetch(tid)[1]):
                continue
            if key_indexes and any(new_values[i] != values[i] for i in key_indexes):
                tree = BTree(ctx.store, ctx.store.get(table.table_page_id).values["indexes"][PRIMARY_KEY_INDEX])
                check_unique(ctx, table, tree, heap, tuple(new_values[i] for i in key_indexes))
            write_row(ctx, table, new_values, old_tid=tid)
            count += 1
        return Result(f"UPDATE {count}")


class DeletePlan(_TargetedPlan):
    def __init__(self, delete: exp.Delete, tables, param_types):
        if delete.args.get("using") or delete.args.get("returning"):
            raise FeatureNotSupported("DELETE with USING or RETURNING is not supported yet")
        self._bind_target(delete.this, delete.args.get("where"), tables, param_types)

    def run(self, ctx: Context) -> Result:
        heap = Heap(ctx.store, self.table.table_page_id)
        count = 0
        for tid, _ in self.targets(ctx):
            xid = ctx.ensure_xid()
            if not check_writable(ctx, tid, heap.fetch(tid)[1]):
                continue
            ctx.store.get(tid[0])
            with ctx.store.mtr():
                ctx.store.log(tid[0], "heap_set_xmax", tid[1], xid)
            count += 1
        return Result(f"DELETE {count}")


# --- DDL ----------------------------------------------------------------------------------------


def column_def(node: exp.ColumnDef) -> tuple[ColumnDef, bool]:
    kind = node.args.get("kind")
    if kind is None:
        raise SyntaxError_(f'column "{node.name}" has no type')
    type_name = t.SQLGLOT_TYPES.get(kind.this.name)
    if type_name is None or type_name == "numeric":
        raise FeatureNotSupported(f"type {kind.sql(dialect='postgres').lower()} is not supported yet")
    modifier = -1
    if type_name == "varchar" and kind.expressions:
        modifier = int(kind.expressions[0].this.this)
    not_null = primary = False
    for constraint in node.args.get("constraints") or []:
        constraint_kind = constraint.args.get("kind")
        if isinstance(constraint_kind, exp.NotNullColumnConstraint):
            if constraint_kind.args.get("allow_null"):
                continue
            not_null = True
        elif isinstance(constraint_kind, exp.PrimaryKeyColumnConstraint):
            primary = True
            not_null = True
        else:
            raise FeatureNotSupported(f"column constraint {constraint.sql(dialect='postgres')} is not supported yet")
    return ColumnDef(node.name, type_name, modifier, not_null), primary


class CreateTablePlan(Plan):
    writes = True

    def __init__(self, create: exp.Create, tables, param_types):
        if (create.args.get("kind") or "").upper() != "TABLE":
            raise FeatureNotSupported(f"CREATE {create.args.get('kind')} is not supported yet")
        schema = create.this
        if not isinstance(schema, exp.Schema) or create.expression is not None:
            raise FeatureNotSupported("CREATE TABLE AS is not supported yet")
        self.name = schema.this.name
        self.if_not_exists = bool(create.args.get("exists"))
        columns, primary_key = [], []
        for item in schema.expressions:
            if isinstance(item, exp.ColumnDef):
                column, primary = column_def(item)
                if any(c.name == column.name for c in columns):
                    raise DuplicateColumn(f'column "{column.name}" specified more than once')
                columns.append(column)
                if primary:
                    if primary_key:
                        raise SyntaxError_(f'multiple primary keys for table "{self.name}" are not allowed')
                    primary_key = [column.name]
            elif isinstance(item, exp.PrimaryKey):
                if primary_key:
                    raise SyntaxError_(f'multiple primary keys for table "{self.name}" are not allowed')
                primary_key = [e.name for e in item.expressions]
            else:
                raise FeatureNotSupported(f"table constraint {item.sql(dialect='postgres')} is not supported yet")
        for name in primary_key:
            index = next((i for i, c in enumerate(columns) if c.name == name), None)
            if index is None:
                raise UndefinedColumn(f'column "{name}" named in key does not exist')
            columns[index] = dataclasses.replace(columns[index], not_null=True)
        self.column_defs, self.primary_key = columns, primary_key
        self.tables = {self.name: tables[self.name].tid} if self.name in tables else {self.name: None}

    def run(self, ctx: Context) -> Result:
        if self.if_not_exists and self.name in ctx.catalog.tables(ctx.snapshot, ctx.xid):
            return Result("CREATE TABLE")
        ctx.catalog.create(self.name, self.column_defs, self.primary_key, ctx.snapshot, ctx.ensure_xid())
        return Result("CREATE TABLE")


class DropTablePlan(Plan):
    writes = True

    def __init__(self, drop: exp.Drop, tables, param_types):
        if (drop.args.get("kind") or "").upper() != "TABLE":
            raise FeatureNotSupported(f"DROP {drop.args.get('kind')} is not supported yet")
        self.if_exists = bool(drop.args.get("exists"))
        targets = drop.args.get("tables") or [drop.this]
        self.names = [table.name for table in targets]
        self.tables = {name: tables[name].tid if name in tables else None for name in self.names}

    def run(self, ctx: Context) -> Result:
        visible = ctx.catalog.tables(ctx.snapshot, ctx.xid)
        for name in self.names:
            if name not in visible and not self.if_exists:
                raise UndefinedTable(f'table "{name}" does not exist')
        for name in self.names:
            if name in visible:
                table = visible[name]
                xid = ctx.ensure_xid()
                check_writable(ctx, table.tid, ctx.catalog.heap.fetch(table.tid)[1])
                ctx.catalog.drop(table, xid)
        return Result("DROP TABLE")


PLANS = {exp.Select: SelectPlan, exp.Insert: InsertPlan, exp.Update: UpdatePlan, exp.Delete: DeletePlan,
         exp.Create: CreateTablePlan, exp.Drop: DropTablePlan}


def plan_statement(node: exp.Expression, tables: dict[str, TableDef], param_types: list[str]) -> Plan:
    plan_class = PLANS.get(type(node))
    if plan_class is None:
        raise FeatureNotSupported(f"statement {node.key.upper()} is not supported yet")
    return plan_class(node, tables, param_types)
