"""CREATE/DROP TABLE, CREATE/DROP INDEX, TRUNCATE and ALTER TABLE ADD COLUMN / ADD PRIMARY KEY /
ADD UNIQUE: transactional, through new versions of the table's catalog row.

Invariants: a definition is validated whole (types, duplicate columns, one primary key whose
columns exist, defaults) before anything is written; new pages (heaps, index trees, sequences) are
made before the catalog row that names them, so an error or an abort leaves only unreachable
pages; a statement that replaces a table's pages or builds an index fails with 40001 while
another open transaction has changed the table's rows or definition (PostgreSQL would wait for
its lock), so every tuple it reads has a final status or is ours.
"""

from __future__ import annotations

import dataclasses

from sqlglot import exp

from aurora_db.errors import (
    DatabaseError,
    DuplicateColumn,
    DuplicateTable,
    FeatureNotSupported,
    NotNullViolation,
    ProgramLimitExceeded,
    SerializationFailure,
    SyntaxError_,
    UndefinedColumn,
    UndefinedTable,
    WrongObjectType,
)
from aurora_db.pages import XID_COMMITTED
from compute_node import indexes as ix
from compute_node import sql_types as t
from compute_node.backend import Result
from compute_node.btree import BTree
from compute_node.catalog import INDEXES_PER_TABLE_MAX, PRIMARY_KEY_INDEX, ColumnDef, IndexDef, TableDef
from compute_node.heap import Heap
from compute_node.page_store import META_PAGE
from compute_node.sources import Context, Plan
from compute_node.write_plans import check_sizes, check_writable, compile_default

SERIAL_TYPES = {"SMALLSERIAL": "int2", "SERIAL": "int4", "BIGSERIAL": "int8"}
NAME_BYTES_MAX = 63  # PostgreSQL's NAMEDATALEN - 1
IGNORED_STORAGE_PARAMETERS = ("fillfactor",)


class InvalidTableDefinition(DatabaseError):
    sqlstate = "42P16"


class DependentObjectsStillExist(DatabaseError):
    sqlstate = "2BP01"


class UndefinedObject(DatabaseError):
    sqlstate = "42704"


# --- column definitions -----------------------------------------------------------------------


@dataclasses.dataclass
class ColumnSpec:
    """A parsed column definition, before its sequence exists."""

    column: ColumnDef
    primary: bool = False
    unique: list = dataclasses.field(default_factory=list)  # constraint names (None: default name)
    primary_name: str | None = None
    sequence_type: str | None = None  # make a sequence of this type (SERIAL, identity)
    sequence_start: int = 1
    sequence_increment: int = 1


def _literal_int(node) -> int:
    if node is None:
        return 1
    value = node.this if isinstance(node, exp.Literal) else None
    if isinstance(node, exp.Neg):
        return -_literal_int(node.this)
    if value is None:
        raise FeatureNotSupported(f"sequence option {node.sql(dialect='postgres')} is not supported")
    return int(value)


def column_spec(node: exp.ColumnDef, table_name: str, tables: dict, param_types) -> ColumnSpec:
    kind = node.args.get("kind")
    if kind is None:
        raise SyntaxError_(f'column "{node.name}" has no type')
    type_key = kind.this.name
    serial = SERIAL_TYPES.get(type_key)
    type_name = serial or t.SQLGLOT_TYPES.get(type_key)
    if type_name is None:
        raise FeatureNotSupported(f"type {kind.sql(dialect='postgres').lower()} is not supported yet")
    modifier = t.type_modifier(kind, type_name)
    spec = ColumnSpec(ColumnDef(node.name, type_name, modifier, False))
    not_null = False
    default = None
    identity = None
    if serial:
        spec.sequence_type = serial
        not_null = True
    for constraint in node.args.get("constraints") or []:
        constraint_kind = constraint.args.get("kind")
        name = constraint.this.name if isinstance(constraint.this, exp.Identifier) else None
        if isinstance(constraint_kind, exp.NotNullColumnConstraint):
            if constraint_kind.args.get("allow_null"):
                continue
            not_null = True
        elif isinstance(constraint_kind, exp.PrimaryKeyColumnConstraint):
            spec.primary = True
            spec.primary_name = name
            not_null = True
        elif isinstance(constraint_kind, exp.UniqueColumnConstraint):
            spec.unique.append(name)
        elif isinstance(constraint_kind, exp.DefaultColumnConstraint):
            default = constraint_kind.this
        elif isinstance(constraint_kind, exp.GeneratedAsIdentityColumnConstraint):
            if serial or type_name not in t.INTEGERS:
                raise InvalidTableDefinition("identity column type must be smallint, integer, or bigint")
            identity = "always" if constraint_kind.this else "by default"
            spec.sequence_type = type_name
            spec.sequence_start = _literal_int(constraint_kind.args.get("start"))
            spec.sequence_increment = _literal_int(constraint_kind.args.get("increment"))
            if spec.sequence_increment <= 0 or spec.sequence_start <= 0:
                raise FeatureNotSupported("identity columns with a start or increment below 1 are not supported yet")
            not_null = True
        else:
            raise FeatureNotSupported(f"column constraint {constraint.sql(dialect='postgres')} is not supported yet")
    if default is not None and spec.sequence_type:
        if identity:
            raise SyntaxError_(f'both default and identity specified for column "{node.name}" of table "{table_name}"')
        raise SyntaxError_(f'multiple default values specified for column "{node.name}" of table "{table_name}"')
    sequence = 0
    default_sql = None
    if spec.sequence_type:
        default_sql = f"nextval('{_sequence_name(table_name, node.name)}'::regclass)"
    elif default is not None:
        sequence = _explicit_nextval(default, tables)
        if sequence:
            default_sql = default.sql(dialect="postgres")
        else:
            default_sql = _check_default(default, spec.column, param_types)
    spec.column = ColumnDef(node.name, type_name, modifier, not_null, default_sql, identity, sequence)
    return spec


def _sequence_name(table: str, column: str) -> str:
    return f"{table}_{column}_seq"[:NAME_BYTES_MAX]


def _explicit_nextval(node, tables) -> int:
    """DEFAULT nextval('t_c_seq'): the sequence of an existing SERIAL or identity column."""
    if not (isinstance(node, exp.Anonymous) and node.name.lower() == "nextval"):
        return 0
    argument = node.expressions[0] if len(node.expressions) == 1 else None
    if isinstance(argument, exp.Cast):
        argument = argument.this
    if not (isinstance(argument, exp.Literal) and argument.is_string):
        raise FeatureNotSupported("nextval() in DEFAULT needs a sequence name literal")
    wanted = argument.this
    for table in tables.values():
        for column in table.columns:
            if column.sequence and _sequence_name(table.name, column.name) == wanted:
                return column.sequence
    raise UndefinedTable(f'relation "{wanted}" does not exist')


def _check_default(node, column: ColumnDef, param_types) -> str:
    if any(node.find_all(exp.Column)):
        raise FeatureNotSupported("cannot use column reference in DEFAULT expression")
    if any(node.find_all(exp.Select)):
        raise FeatureNotSupported("cannot use subquery in DEFAULT expression")
    sql = node.transform(_spelled_now).sql(dialect="postgres")
    compile_default(dataclasses.replace(column, default=sql), list(param_types))  # names, types: errors now
    return sql


def _spelled_now(node):
    """sqlglot reads now() and CURRENT_TIMESTAMP as one node, which PostgreSQL displays differently
    (\\d); the call form keeps its name's span in meta, and is kept as pg_catalog.now()."""
    if isinstance(node, exp.CurrentTimestamp) and node.meta.get("end", -1) - node.meta.get("start", 0) + 1 == len("now"):
        return exp.Dot(this=exp.to_identifier("pg_catalog"), expression=exp.Anonymous(this="now"))
    return node


def _make_sequences(ctx: Context, table_name: str, specs: list[ColumnSpec]) -> list[ColumnDef]:
    columns = []
    for spec in specs:
        column = spec.column
        if spec.sequence_type:
            page_id = ctx.catalog.sequences.create(_sequence_name(table_name, column.name), spec.sequence_type,
                                                   spec.sequence_start, spec.sequence_increment)
            column = dataclasses.replace(column, sequence=page_id)
        columns.append(column)
    return columns


def _index_name(base: str, suffix: str, taken) -> str:
    name = f"{base}_{suffix}"[:NAME_BYTES_MAX]
    counter = 0
    while name in taken:
        counter += 1
        tail = f"{suffix}{counter}"
        name = f"{base}"[:NAME_BYTES_MAX - len(tail) - 1] + "_" + tail
    return name


def _relation_names(ctx: Context) -> set[str]:
    tables = ctx.catalog.tables(ctx.snapshot, ctx.xid)
    return set(tables) | {index.name for table in tables.values() for index in table.indexes}


def _new_roots(ctx: Context, count: int) -> list[int]:
    """Empty B-trees, made in one MTR."""
    if not count:
        return []
    with ctx.store.mtr(META_PAGE):
        return [BTree.create(ctx.store) for _ in range(count)]


# --- CREATE TABLE -----------------------------------------------------------------------------


class CreateTablePlan(Plan):
    writes = True
    restartable = False

    def __init__(self, create: exp.Create, tables, param_types):
        schema = create.this
        if not isinstance(schema, exp.Schema) or create.expression is not None:
            raise FeatureNotSupported("CREATE TABLE AS is not supported yet")
        self._check_properties(create)
        self.name = schema.this.name
        self.if_not_exists = bool(create.args.get("exists"))
        specs: list[ColumnSpec] = []
        primary_key: list[str] = []
        primary_name = None
        uniques: list[tuple[str | None, list[str]]] = []
        for item in schema.expressions:
            constraint_name = None
            if isinstance(item, exp.Constraint):
                constraint_name = item.this.name
                if len(item.expressions) != 1:
                    raise FeatureNotSupported(f"table constraint {item.sql(dialect='postgres')} is not supported yet")
                item = item.expressions[0]
            if isinstance(item, exp.ColumnDef):
                spec = column_spec(item, self.name, tables, param_types)
                if any(s.column.name == spec.column.name for s in specs):
                    raise DuplicateColumn(f'column "{spec.column.name}" specified more than once')
                specs.append(spec)
                if spec.primary:
                    if primary_key:
                        raise InvalidTableDefinition(f'multiple primary keys for table "{self.name}" are not allowed')
                    primary_key, primary_name = [spec.column.name], spec.primary_name
                uniques += [(name, [spec.column.name]) for name in spec.unique]
            elif isinstance(item, exp.PrimaryKey):
                if primary_key:
                    raise InvalidTableDefinition(f'multiple primary keys for table "{self.name}" are not allowed')
                primary_key, primary_name = [e.name for e in item.expressions], constraint_name
            elif isinstance(item, exp.UniqueColumnConstraint) and isinstance(item.this, exp.Schema):
                uniques.append((constraint_name, [e.name for e in item.this.expressions]))
            else:
                raise FeatureNotSupported(f"table constraint {item.sql(dialect='postgres')} is not supported yet")
        names = [s.column.name for s in specs]
        for key in [primary_key] + [columns for _, columns in uniques]:
            for name in key:
                if name not in names:
                    raise UndefinedColumn(f'column "{name}" named in key does not exist')
            if len(set(key)) != len(key):
                raise DuplicateColumn(f'column "{key[0]}" appears twice in {"primary key" if key is primary_key else "unique"} constraint')
        for spec in specs:
            if spec.column.name in primary_key:
                spec.column = dataclasses.replace(spec.column, not_null=True)
        if 1 + len(uniques) > INDEXES_PER_TABLE_MAX:
            raise ProgramLimitExceeded(f"a table may have at most {INDEXES_PER_TABLE_MAX} indexes")
        self.specs, self.primary_key, self.primary_name, self.uniques = specs, primary_key, primary_name, uniques
        self.tables = {self.name: tables[self.name].tid} if self.name in tables else {self.name: None}

    @staticmethod
    def _check_properties(create: exp.Create) -> None:
        properties = create.args.get("properties")
        for prop in (properties.expressions if properties else []):
            if isinstance(prop, exp.Property) and prop.name.lower() in IGNORED_STORAGE_PARAMETERS:
                continue
            raise FeatureNotSupported(f"CREATE TABLE option {prop.sql(dialect='postgres')} is not supported yet")

    def run(self, ctx: Context) -> Result:
        if self.if_not_exists and self.name in ctx.catalog.tables(ctx.snapshot, ctx.xid):
            return Result("CREATE TABLE")
        xid = ctx.ensure_xid()
        ctx.catalog.check_relation_name_free(self.name, ctx.snapshot, xid)
        taken = _relation_names(ctx) | {self.name}
        index_names = []
        if self.primary_key:
            index_names.append(self.primary_name or _index_name(self.name, "pkey", taken))
            taken.add(index_names[-1])
        for name, columns in self.uniques:
            index_names.append(name or _index_name(f"{self.name}_{'_'.join(columns)}", "key", taken))
            taken.add(index_names[-1])
        if len(set(index_names)) != len(index_names):
            raise DuplicateTable(f'relation "{index_names[-1]}" already exists')
        for name in index_names:
            ctx.catalog.check_relation_name_free(name, ctx.snapshot, xid)
        columns = _make_sequences(ctx, self.name, self.specs)
        table_page_id, pkey_root = ctx.catalog.make_pages(bool(self.primary_key))
        roots = _new_roots(ctx, len(self.uniques))
        indexes = []
        if self.primary_key:
            indexes.append(IndexDef(index_names[0], tuple(self.primary_key), True, pkey_root, True, True))
        for (_, key), name, root in zip(self.uniques, index_names[len(indexes):], roots):
            indexes.append(IndexDef(name, tuple(key), True, root, False, True))
        table = TableDef(self.name, table_page_id, tuple(columns), tuple(self.primary_key), (0, 0), tuple(indexes))
        ctx.catalog.create(table, ctx.snapshot, xid)
        return Result("CREATE TABLE")


# --- DROP TABLE / DROP INDEX ------------------------------------------------------------------


RELATION_KINDS = {False: "table", True: "view"}  # TableDef.is_view -> the word DROP and errors use


class DropRelationPlan(Plan):
    """DROP TABLE and DROP VIEW: every named relation is checked before any is dropped. Views that
    read a dropped relation fail the statement (2BP01), or with CASCADE are dropped with it."""

    writes = True
    restartable = False

    def __init__(self, drop: exp.Drop, tables, param_types):
        self.kind = (drop.args.get("kind") or "").lower()
        self.if_exists = bool(drop.args.get("exists"))
        self.cascade = bool(drop.args.get("cascade"))
        targets = drop.args.get("tables") or [drop.this]
        self.names = [table.name for table in targets]
        self.tables = {name: tables[name].tid if name in tables else None for name in self.names}

    def run(self, ctx: Context) -> Result:
        visible = ctx.catalog.tables(ctx.snapshot, ctx.xid)
        dropped = {}
        for name in self.names:
            relation = self._target(ctx, visible, name)
            if relation is not None:
                dropped[relation.oid] = relation
        dependents = ctx.catalog.dependent_views(dropped, ctx.snapshot, ctx.xid) if dropped else []
        if dependents and not self.cascade:
            first = next(iter(dropped.values()))
            raise DependentObjectsStillExist(
                f"cannot drop {RELATION_KINDS[first.is_view]} {first.name} because other objects depend on it",
                detail=_dependency_detail(dropped, dependents),
                hint="Use DROP ... CASCADE to drop the dependent objects too.")
        for relation in list(dropped.values()) + dependents:
            xid = ctx.ensure_xid()
            check_writable(ctx, relation.tid, ctx.catalog.heap.fetch(relation.tid)[1])
            ctx.catalog.drop(relation, xid)
        return Result(f"DROP {self.kind.upper()}")

    def _target(self, ctx: Context, visible: dict, name: str) -> TableDef | None:
        """The relation to drop, None if it is missing and IF EXISTS; 42809 if it is of another kind."""
        relation = visible.get(name)
        if relation is None:
            if ctx.catalog.find_index(name, ctx.snapshot, ctx.xid) is not None:
                raise WrongObjectType(f'"{name}" is not a {self.kind}', hint="Use DROP INDEX to remove an index.")
            if self.if_exists:
                return None
            raise UndefinedTable(f'{self.kind} "{name}" does not exist')
        if RELATION_KINDS[relation.is_view] != self.kind:
            other = RELATION_KINDS[relation.is_view]
            raise WrongObjectType(f'"{name}" is not a {self.kind}', hint=f"Use DROP {other.upper()} to remove a {other}.")
        return relation


def _dependency_detail(dropped: dict, dependents: list[TableDef]) -> str:
    """PostgreSQL's DETAIL: a line "view v depends on table t" (or "on view w") per dependent view."""
    involved = dict(dropped)
    lines = []
    for view in dependents:
        read = next(involved[oid] for oid in view.depends_on if oid in involved)
        lines.append(f"view {view.name} depends on {RELATION_KINDS[read.is_view]} {read.name}")
        involved[view.oid] = view
    return "\n".join(lines)


class DropIndexPlan(Plan):
    writes = True
    restartable = False

    def __init__(self, drop: exp.Drop, tables, param_types):
        if drop.args.get("concurrently"):
            raise FeatureNotSupported("DROP INDEX CONCURRENTLY is not supported yet")
        self.if_exists = bool(drop.args.get("exists"))
        targets = drop.args.get("tables") or [drop.this]
        self.names = [target.name for target in targets]
        self.tables = {table.name: table.tid for table in tables.values()
                       if any(table.index(name) for name in self.names)}

    def run(self, ctx: Context) -> Result:
        for name in self.names:
            found = ctx.catalog.find_index(name, ctx.snapshot, ctx.xid)
            if found is None:
                relation = ctx.catalog.tables(ctx.snapshot, ctx.xid).get(name)
                if relation is not None:
                    kind = RELATION_KINDS[relation.is_view]
                    raise WrongObjectType(f'"{name}" is not an index', hint=f"Use DROP {kind.upper()} to remove a {kind}.")
                if self.if_exists:
                    continue
                raise UndefinedObject(f'index "{name}" does not exist')
            table, index = found
            if index.primary or index.constraint:
                raise DependentObjectsStillExist(
                    f'cannot drop index {name} because constraint {name} on table {table.name} requires it',
                    hint=f"You can drop constraint {name} on table {table.name} instead.")
            _begin_alter(ctx, table)
            new = dataclasses.replace(table, indexes=tuple(i for i in table.indexes if i.name != name))
            ctx.catalog.replace(table, new, ctx.ensure_xid())
        return Result("DROP INDEX")


# --- CREATE INDEX -----------------------------------------------------------------------------


class CreateIndexPlan(Plan):
    writes = True
    restartable = False

    def __init__(self, create: exp.Create, tables, param_types):
        node = create.this
        if create.args.get("concurrently"):
            raise FeatureNotSupported("CREATE INDEX CONCURRENTLY is not supported yet")
        params = node.args.get("params")
        table_node = node.args.get("table")
        if params is None or table_node is None:
            raise FeatureNotSupported("this form of CREATE INDEX is not supported yet")
        using = params.args.get("using")
        if using is not None and using.name.lower() != "btree":
            raise FeatureNotSupported(f"index access method {using.name} is not supported yet")
        for option in ("where", "include", "partition_by", "with_storage", "tablespace", "on"):
            if params.args.get(option):
                what = {"where": "partial indexes (WHERE)", "include": "INCLUDE"}.get(option, option.upper())
                raise FeatureNotSupported(f"CREATE INDEX with {what} is not supported yet")
        self.table_name = table_node.name
        if table_node.db not in ("", "public"):
            raise UndefinedTable(f'relation "{table_node.db}.{self.table_name}" does not exist')
        if self.table_name not in tables:
            raise UndefinedTable(f'relation "{self.table_name}" does not exist')
        table = tables[self.table_name]
        if table.is_view:
            raise WrongObjectType(f'cannot create index on relation "{self.table_name}"',
                                  detail="This operation is not supported for views.")
        columns = []
        for ordered in params.args.get("columns") or []:
            column = ordered.this if isinstance(ordered, exp.Ordered) else ordered
            if not isinstance(column, exp.Column) or column.table:
                raise FeatureNotSupported("index expressions are not supported yet")
            if table.column_index(column.name) is None:
                raise UndefinedColumn(f'column "{column.name}" does not exist')
            columns.append(column.name)
        if not columns:
            raise SyntaxError_("an index needs at least one column")
        self.key_columns = tuple(columns)
        self.unique = bool(create.args.get("unique"))
        self.name = node.this.name if node.this is not None else None
        self.if_not_exists = bool(create.args.get("exists"))
        self.tables = {self.table_name: table.tid}

    def run(self, ctx: Context) -> Result:
        table = ctx.catalog.get(self.table_name, ctx.snapshot, ctx.xid)
        taken = _relation_names(ctx)
        name = self.name or _index_name(f"{table.name}_{'_'.join(self.key_columns)}", "idx", taken)
        if name in taken:
            if self.if_not_exists:
                return Result("CREATE INDEX")
            raise DuplicateTable(f'relation "{name}" already exists')
        if len(table.indexes) >= INDEXES_PER_TABLE_MAX:
            raise ProgramLimitExceeded(f"a table may have at most {INDEXES_PER_TABLE_MAX} indexes")
        xid = ctx.ensure_xid()
        ctx.catalog.check_relation_name_free(name, ctx.snapshot, xid)
        _begin_alter(ctx, table)
        (root,) = _new_roots(ctx, 1)
        index = IndexDef(name, self.key_columns, self.unique, root, False)
        ix.build(ctx, table, index)
        ctx.catalog.replace(table, dataclasses.replace(table, indexes=table.indexes + (index,)), xid)
        return Result("CREATE INDEX")


def _begin_alter(ctx: Context, table: TableDef) -> None:
    """Before replacing a table's definition or pages: no other open transaction may be changing
    its definition (the catalog row) or its rows."""
    ctx.ensure_xid()
    check_writable(ctx, table.tid, ctx.catalog.heap.fetch(table.tid)[1])
    if ctx.catalog.other_open_writers(table, ctx.xid):
        raise SerializationFailure(
            f'could not serialize access: relation "{table.name}" has rows changed by a concurrent open transaction')


# --- TRUNCATE ---------------------------------------------------------------------------------


class TruncatePlan(Plan):
    writes = True
    restartable = False

    def __init__(self, truncate: exp.TruncateTable, tables, param_types):
        if (truncate.args.get("identity") or "").upper() == "RESTART":
            raise FeatureNotSupported("TRUNCATE ... RESTART IDENTITY is not supported yet")
        if truncate.args.get("is_database") or truncate.args.get("partition") or truncate.args.get("cluster"):
            raise FeatureNotSupported("this form of TRUNCATE is not supported")
        self.names = []
        for node in truncate.expressions:
            if node.db not in ("", "public"):
                raise UndefinedTable(f'relation "{node.db}.{node.name}" does not exist')
            if node.name not in tables:
                raise UndefinedTable(f'relation "{node.name}" does not exist')
            if tables[node.name].is_view:
                raise WrongObjectType(f'"{node.name}" is not a table')
            self.names.append(node.name)
        self.tables = {name: tables[name].tid for name in self.names}

    def run(self, ctx: Context) -> Result:
        visible = ctx.catalog.tables(ctx.snapshot, ctx.xid)
        for name in self.names:
            _begin_alter(ctx, visible[name])
        for name in dict.fromkeys(self.names):
            table = visible[name]
            ctx.catalog.replace(table, _fresh_pages(ctx, table), ctx.ensure_xid())
        return Result("TRUNCATE TABLE")


def _fresh_pages(ctx: Context, table: TableDef, **changes) -> TableDef:
    """The table's definition moved to new, empty pages (heap and every index), same oid."""
    table_page_id, pkey_root = ctx.catalog.make_pages(table.primary_index is not None)
    secondary = [index for index in table.indexes if not index.primary]
    roots = iter(_new_roots(ctx, len(secondary)))
    indexes = tuple(dataclasses.replace(index, root_page_id=pkey_root if index.primary else next(roots))
                    for index in table.indexes)
    return dataclasses.replace(table, table_page_id=table_page_id, indexes=indexes, relation_oid=table.oid,
                               **changes)


# --- ALTER TABLE ------------------------------------------------------------------------------


class AlterTablePlan(Plan):
    writes = True
    restartable = False

    def __init__(self, alter: exp.Alter, tables, param_types):
        if (alter.args.get("kind") or "").upper() != "TABLE":
            raise FeatureNotSupported(f"ALTER {alter.args.get('kind')} is not supported yet")
        self.name = alter.this.name
        self.if_exists = bool(alter.args.get("exists"))
        self.tables = {self.name: tables[self.name].tid if self.name in tables else None}
        if self.name not in tables:
            if self.if_exists:
                self.actions = []
                return
            raise UndefinedTable(f'relation "{self.name}" does not exist')
        table = tables[self.name]
        self.actions = []
        for action in alter.args.get("actions") or []:
            if table.is_view:
                what = "ADD COLUMN" if isinstance(action, exp.ColumnDef) else "ADD CONSTRAINT" \
                    if isinstance(action, exp.AddConstraint) else action.key.upper()
                raise WrongObjectType(f'ALTER action {what} cannot be performed on relation "{self.name}"',
                                      detail="This operation is not supported for views.")
            if isinstance(action, exp.ColumnDef):
                spec = column_spec(action, self.name, tables, param_types)
                self.actions.append(("add_column", spec, bool(action.args.get("exists"))))
                if spec.primary:  # the column's constraints, once it exists
                    self.actions.append(("add_key", spec.primary_name, [spec.column.name], True))
                self.actions += [("add_key", name, [spec.column.name], False) for name in spec.unique]
            elif isinstance(action, exp.AddConstraint):
                for item in action.expressions:
                    name = None
                    if isinstance(item, exp.Constraint):
                        name = item.this.name
                        item = item.expressions[0] if len(item.expressions) == 1 else None
                    if isinstance(item, exp.PrimaryKey):
                        self.actions.append(("add_key", name, [e.name for e in item.expressions], True))
                    elif isinstance(item, exp.UniqueColumnConstraint) and isinstance(item.this, exp.Schema):
                        self.actions.append(("add_key", name, [e.name for e in item.this.expressions], False))
                    else:
                        shown = item.sql(dialect="postgres") if item is not None else action.sql(dialect="postgres")
                        raise FeatureNotSupported(f"ALTER TABLE ADD {shown} is not supported yet")
            else:
                raise FeatureNotSupported(f"ALTER TABLE {action.sql(dialect='postgres')} is not supported yet")
        added = {action[1].column.name for action in self.actions if action[0] == "add_column"}
        for action in self.actions:
            if action[0] == "add_key":
                for column in action[2]:
                    if table.column_index(column) is None and column not in added:
                        raise UndefinedColumn(f'column "{column}" of relation "{self.name}" does not exist')

    def run(self, ctx: Context) -> Result:
        for action in self.actions:
            table = ctx.catalog.tables(ctx.snapshot, ctx.xid).get(self.name)
            if table is None:
                if self.if_exists:
                    break
                raise UndefinedTable(f'relation "{self.name}" does not exist')
            if action[0] == "add_column":
                _add_column(ctx, table, action[1], action[2])
            else:
                _add_key(ctx, table, *action[1:])
        return Result("ALTER TABLE")


def _live_rows(ctx: Context, table: TableDef):
    """Tuples that are live now (no other open transaction wrote the table: see _begin_alter)."""
    status = ctx.transactions.status
    for tid, (xmin, xmax, values) in Heap(ctx.store, table.table_page_id).scan():
        if xmin != ctx.xid and status(xmin) != XID_COMMITTED:
            continue
        if xmax and (xmax == ctx.xid or status(xmax) == XID_COMMITTED):
            continue
        yield tid, xmin, values


def _add_column(ctx: Context, table: TableDef, spec: ColumnSpec, if_not_exists: bool) -> None:
    """PostgreSQL's table rewrite: live rows are copied (keeping their xmin) to new pages with the
    new column's default, and every index is rebuilt."""
    if table.column_index(spec.column.name) is not None:
        if if_not_exists:
            return
        raise DuplicateColumn(f'column "{spec.column.name}" of relation "{table.name}" already exists')
    _begin_alter(ctx, table)
    xid = ctx.xid
    rows = list(_live_rows(ctx, table))
    (column,) = _make_sequences(ctx, table.name, [spec])
    default = compile_default(column, [])
    new_rows = []
    for _, xmin, values in rows:
        value = default(ctx)
        if value is None and column.not_null:
            raise NotNullViolation(f'column "{column.name}" of relation "{table.name}" contains null values')
        new_rows.append((xmin, values + [value]))
    new = _fresh_pages(ctx, table, columns=table.columns + (column,))
    heap = Heap(ctx.store, new.table_page_id)
    for xmin, values in new_rows:
        check_sizes(new, values)
        target = heap.prepare_insert(values)
        with ctx.store.mtr(*heap.pages_for_insert()):
            heap.insert(values, xmin, target)
    for index in new.indexes:
        ix.build(ctx, new, index)
    ctx.catalog.replace(table, new, xid)


def _add_key(ctx: Context, table: TableDef, name: str | None, columns: list[str], primary: bool) -> None:
    if primary and table.primary_index is not None:
        raise InvalidTableDefinition(f'multiple primary keys for table "{table.name}" are not allowed')
    if len(table.indexes) >= INDEXES_PER_TABLE_MAX:
        raise ProgramLimitExceeded(f"a table may have at most {INDEXES_PER_TABLE_MAX} indexes")
    taken = _relation_names(ctx)
    name = name or _index_name(table.name if primary else f"{table.name}_{'_'.join(columns)}",
                               "pkey" if primary else "key", taken)
    if name in taken:
        raise DuplicateTable(f'relation "{name}" already exists')
    _begin_alter(ctx, table)
    xid = ctx.xid
    positions = [table.column_index(c) for c in columns]
    columns_def = list(table.columns)
    if primary:
        for _, _, values in _live_rows(ctx, table):
            for position in positions:
                if values[position] is None:
                    raise NotNullViolation(
                        f'column "{table.columns[position].name}" of relation "{table.name}" contains null values')
        for position in positions:
            columns_def[position] = dataclasses.replace(columns_def[position], not_null=True)
    with ctx.store.mtr(META_PAGE, table.table_page_id):
        root = BTree.create(ctx.store)
        if primary:
            indexes_entry = dict(ctx.store.get(table.table_page_id).values.get("indexes") or {})
            indexes_entry[PRIMARY_KEY_INDEX] = root
            ctx.store.log(table.table_page_id, "table_set", "indexes", indexes_entry)
    index = IndexDef(name, tuple(columns), True, root, primary, True)
    ix.build(ctx, table, index)
    if primary:
        new = dataclasses.replace(table, columns=tuple(columns_def), primary_key=tuple(columns),
                                  indexes=(index,) + table.indexes)
    else:
        new = dataclasses.replace(table, indexes=table.indexes + (index,))
    ctx.catalog.replace(table, new, xid)


# --- dispatch (compute_node/executor.py) ------------------------------------------------------


def create_plan(create: exp.Create, tables, param_types) -> Plan:
    kind = (create.args.get("kind") or "").upper()
    if kind == "TABLE":
        return CreateTablePlan(create, tables, param_types)
    if kind == "INDEX":
        return CreateIndexPlan(create, tables, param_types)
    raise FeatureNotSupported(f"CREATE {kind} is not supported yet")


def drop_plan(drop: exp.Drop, tables, param_types) -> Plan:
    kind = (drop.args.get("kind") or "").upper()
    if kind in ("TABLE", "VIEW") and not drop.args.get("materialized"):
        return DropRelationPlan(drop, tables, param_types)
    if kind == "INDEX":
        return DropIndexPlan(drop, tables, param_types)
    raise FeatureNotSupported(f"DROP {kind} is not supported yet")
