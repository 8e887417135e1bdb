"""SQL functions over the catalog, as psql's meta-commands and drivers call them: pg_get_userbyid,
pg_table_is_visible, format_type, pg_get_indexdef, pg_get_viewdef, pg_get_constraintdef, pg_get_expr,
obj_description, pg_encoding_to_char, pg_relation_size, pg_database_size, ..., and the casts to regclass, regtype, regnamespace, regrole.

A function reads the catalog when it runs, through the statement's context (scope.runtime.ctx), so
it sees the statement's snapshot, as pg_catalog's tables do (pg_catalog.view). Invariants: the
functions are strict (a NULL argument gives NULL) unless PostgreSQL's are not (format_type); an oid
naming nothing gives NULL, as PostgreSQL's functions do for the ones psql calls; a name that a reg*
cast cannot find is PostgreSQL's error (42P01, 42704, 3F000).
"""

from __future__ import annotations

from aurora_db.constants import PAGE_BYTES_MAX
from aurora_db.errors import DatabaseError, FeatureNotSupported, UndefinedColumn, UndefinedFunction, UndefinedTable
from compute_node import deparse
from compute_node import free_space
from compute_node import indexes as ix
from compute_node import pg_catalog as pg
from compute_node import sql_types as t
from compute_node.heap import Heap
from compute_node.introspection import CURRENT_DATABASE, CURRENT_SCHEMA, SERVER_VERSION_TEXT
from compute_node.page_store import META_PAGE


class UndefinedObject(DatabaseError):
    sqlstate = "42704"


class InvalidCatalogName(DatabaseError):
    sqlstate = "3D000"


class InvalidSchemaName(DatabaseError):
    sqlstate = "3F000"


def _compile(node, scope, expected=None):
    from compute_node.expressions import compile_expr
    return compile_expr(node, scope, expected)


def statement_context(scope, what: str):
    """fn() -> the running statement's context; `what` names the feature where there is none."""
    runtime = scope.runtime
    if runtime is None:
        raise FeatureNotSupported(f"{what} is not supported in this statement")

    def context():
        if runtime.ctx is None:
            raise FeatureNotSupported(f"{what} is not supported in this statement")
        return runtime.ctx
    return context


def _function(name: str, arg_types: tuple[str, ...], result_type: str, impl, *, required: int | None = None,
              strict: bool = True, reads_catalog: bool = True):
    """A handler for `name(args)`: arguments compiled as `arg_types` (the first `required` of them
    must be given), then impl(ctx, *values) at run time; ctx is None unless it `reads_catalog`."""
    required = len(arg_types) if required is None else required

    def handler(node, scope, expected):
        args = list(node.expressions)
        if not required <= len(args) <= len(arg_types):
            shown = ", ".join(t.DISPLAY.get(a, a) for a in arg_types[:len(args)] or arg_types)
            raise UndefinedFunction(f"function {name}({shown}) does not exist")
        fns = [_argument(arg, scope, type_name, name) for arg, type_name in zip(args, arg_types)]
        context = statement_context(scope, f"function {name}()") if reads_catalog else (lambda: None)

        def call(row, params):
            values = [fn(row, params) for fn in fns]
            if strict and any(value is None for value in values):
                return None
            return impl(context(), *values)
        return call, result_type
    return handler


def _argument(node, scope, type_name: str, function: str):
    fn, actual = _compile(node, scope, type_name)
    if actual in (type_name, "unknown"):
        return fn
    if (type_name in t.INTEGERS or type_name in t.REG_TYPES) and (actual in t.INTEGERS or actual in t.REG_TYPES):
        return fn  # oids and reg* values are integers
    if type_name == "text" and actual in t.STRINGS:
        return fn
    raise UndefinedFunction(f"function {function}({t.DISPLAY[actual]}) does not exist")


# --- lookups ----------------------------------------------------------------------------------


def _relation(ctx, oid: int):
    return pg.view(ctx).relations.get(oid)


def quote_ident(name: str) -> str:
    """PostgreSQL's quote_ident: bare when all lower-case letters, digits and '_' and no reserved word."""
    if name and (name[0].islower() or name[0] == "_") and all(c.islower() or c.isdigit() or c == "_" for c in name) \
            and name.isascii() and name.upper() not in RESERVED_WORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


RESERVED_WORDS = frozenset("""ALL ANALYSE ANALYZE AND ANY ARRAY AS ASC ASYMMETRIC AUTHORIZATION BETWEEN BIGINT BINARY
    BIT BOOLEAN BOTH CASE CAST CHAR CHARACTER CHECK COALESCE COLLATE COLLATION COLUMN CONCURRENTLY CONSTRAINT CREATE
    CROSS CURRENT_CATALOG CURRENT_DATE CURRENT_ROLE CURRENT_SCHEMA CURRENT_TIME CURRENT_TIMESTAMP CURRENT_USER DEC
    DECIMAL DEFAULT DEFERRABLE DESC DISTINCT DO ELSE END EXCEPT EXISTS EXTRACT FALSE FETCH FLOAT FOR FOREIGN FREEZE
    FROM FULL GRANT GREATEST GROUP GROUPING HAVING ILIKE IN INITIALLY INNER INOUT INT INTEGER INTERSECT INTERVAL INTO
    IS ISNULL JOIN LATERAL LEADING LEAST LEFT LIKE LIMIT LOCALTIME LOCALTIMESTAMP NATIONAL NATURAL NCHAR NONE
    NORMALIZE NOT NOTNULL NULL NULLIF NUMERIC OFFSET ON ONLY OR ORDER OUT OUTER OVERLAPS OVERLAY PLACING POSITION
    PRECISION PRIMARY REAL REFERENCES RETURNING RIGHT ROW SELECT SESSION_USER SETOF SIMILAR SMALLINT SOME SUBSTRING
    SYMMETRIC TABLE TABLESAMPLE THEN TIME TIMESTAMP TO TRAILING TREAT TRIM TRUE UNION UNIQUE USER USING VALUES
    VARCHAR VARIADIC VERBOSE WHEN WHERE WINDOW WITH XMLATTRIBUTES XMLCONCAT XMLELEMENT XMLEXISTS XMLFOREST
    XMLNAMESPACES XMLPARSE XMLPI XMLROOT XMLSERIALIZE XMLTABLE""".split())


def _index_columns(relation) -> str:
    return ", ".join(quote_ident(name) for name in relation.index.columns)


# --- the functions ----------------------------------------------------------------------------


def _pg_get_userbyid(ctx, oid):
    return pg.role_name(ctx, oid) or f"unknown (OID={oid})"


def _pg_table_is_visible(ctx, oid):
    return True if _relation(ctx, oid) is not None else None


def _pg_type_is_visible(ctx, oid):
    return True if pg.type_name_of(oid) is not None else None


def _format_type(ctx, oid, typmod=None):
    return None if oid is None else pg.format_type(oid, typmod)


def _pg_get_indexdef(ctx, oid, column=0, pretty=False):
    relation = _relation(ctx, oid)
    if relation is None or relation.kind != "i":
        return None
    if column:
        names = relation.index.columns
        return quote_ident(names[column - 1]) if 1 <= column <= len(names) else ""
    unique = "UNIQUE " if relation.index.unique else ""
    return (f"CREATE {unique}INDEX {quote_ident(relation.name)} ON public.{quote_ident(relation.table.name)} "
            f"USING btree ({_index_columns(relation)})")


def _pg_get_viewdef(ctx, oid, pretty=False):
    """The view's stored query (PostgreSQL prints its own deparse; this is the query as stored)."""
    relation = _relation(ctx, oid)
    if relation is None or relation.kind != "v":
        return None
    return f" {relation.table.query};"


def _pg_get_constraintdef(ctx, oid, pretty=False):
    relation = _relation(ctx, oid)
    if relation is None or relation.kind != "i" or not (relation.index.primary or relation.index.constraint):
        return None
    kind = "PRIMARY KEY" if relation.index.primary else "UNIQUE"
    return f"{kind} ({_index_columns(relation)})"


def _pg_get_expr(ctx, node_tree, relation_oid, pretty=False):
    parsed = pg.parse_node_tree(node_tree)
    if parsed is None:
        raise FeatureNotSupported("pg_get_expr() of this expression is not supported")
    type_name, type_modifier, sql = parsed
    return deparse.default_expression(sql, type_name, type_modifier, pretty=bool(pretty))


def _no_description(ctx, *args):
    """obj_description, col_description, shobj_description: pg_description is empty, nothing has a comment."""
    return None


def _to_reg(target: str):
    """to_regclass(text), to_regtype(text): the reg* value of a name, NULL where the cast would fail."""
    def lookup(ctx, text):
        try:
            return reg_from_name(ctx, target, text)
        except (UndefinedTable, UndefinedObject, InvalidSchemaName):
            return None
    return lookup


def _pg_encoding_to_char(ctx, encoding):
    return pg.ENCODING_NAMES.get(encoding, "")


def _pg_relation_is_publishable(ctx, oid):
    relation = _relation(ctx, oid)
    return None if relation is None else relation.kind == "r"


def _pg_get_statisticsobjdef_columns(ctx, oid):
    return None  # pg_statistic_ext is empty: no oid names a statistics object


def _pg_relation_size(ctx, oid):
    """Bytes of a table's heap pages or an index's nodes (PostgreSQL's main fork); 0 for others."""
    relation = _relation(ctx, oid)
    if relation is None:
        return None
    if relation.kind == "r":
        return Heap(ctx.store, relation.table.table_page_id).page_count() * PAGE_BYTES_MAX
    if relation.kind == "i":
        return ix.tree_of(ctx.store, relation.table, relation.index).page_count() * PAGE_BYTES_MAX
    return 0


def _pg_database_size(ctx, name):
    """Bytes of the volume's pages in use: every page it grew to, less those on its free list."""
    if name != CURRENT_DATABASE:
        raise InvalidCatalogName(f'database "{name}" does not exist')
    pages_used = ctx.store.get(META_PAGE).values["next_page_id"] - free_space.free_page_count(ctx.store)
    return pages_used * PAGE_BYTES_MAX


def _pg_get_serial_sequence(ctx, table_name, column_name):
    table = pg.view(ctx).tables.get(_unqualified(table_name))
    if table is None:
        raise UndefinedTable(f'relation "{table_name}" does not exist')
    index = table.column_index(column_name)
    if index is None:
        raise UndefinedColumn(f'column "{column_name}" of relation "{table.name}" does not exist')
    sequence = pg.sequence_name(table.columns[index])
    return None if sequence is None else f"public.{quote_ident(sequence)}"


def _unqualified(name: str) -> str:
    """'t', 'public.t' or '"T"' as the relation name the catalog holds."""
    for schema in ("public.", "pg_catalog."):
        if name.startswith(schema):
            name = name[len(schema):]
    return name[1:-1].replace('""', '"') if name.startswith('"') and name.endswith('"') else name.lower()


FUNCTIONS = {
    "pg_get_userbyid": _function("pg_get_userbyid", ("int8",), "text", _pg_get_userbyid),
    "pg_table_is_visible": _function("pg_table_is_visible", ("int8",), "bool", _pg_table_is_visible),
    "pg_type_is_visible": _function("pg_type_is_visible", ("int8",), "bool", _pg_type_is_visible,
                                    reads_catalog=False),
    "format_type": _function("format_type", ("int8", "int4"), "text", _format_type, strict=False,
                             reads_catalog=False),
    "pg_get_indexdef": _function("pg_get_indexdef", ("int8", "int4", "bool"), "text", _pg_get_indexdef, required=1),
    "pg_get_viewdef": _function("pg_get_viewdef", ("int8", "bool"), "text", _pg_get_viewdef, required=1),
    "pg_get_constraintdef": _function("pg_get_constraintdef", ("int8", "bool"), "text", _pg_get_constraintdef,
                                      required=1),
    "pg_get_expr": _function("pg_get_expr", ("text", "int8", "bool"), "text", _pg_get_expr, required=2),
    "obj_description": _function("obj_description", ("int8", "text"), "text", _no_description, required=1),
    "col_description": _function("col_description", ("int8", "int4"), "text", _no_description),
    "shobj_description": _function("shobj_description", ("int8", "text"), "text", _no_description),
    "pg_encoding_to_char": _function("pg_encoding_to_char", ("int4",), "text", _pg_encoding_to_char,
                                     reads_catalog=False),
    "pg_relation_is_publishable": _function("pg_relation_is_publishable", ("int8",), "bool",
                                            _pg_relation_is_publishable),
    "pg_get_statisticsobjdef_columns": _function("pg_get_statisticsobjdef_columns", ("int8",), "text",
                                                 _pg_get_statisticsobjdef_columns),
    "pg_get_serial_sequence": _function("pg_get_serial_sequence", ("text", "text"), "text", _pg_get_serial_sequence),
    "pg_relation_size": _function("pg_relation_size", ("regclass",), "int8", _pg_relation_size),
    "pg_database_size": _function("pg_database_size", ("text",), "int8", _pg_database_size),
    "quote_ident": _function("quote_ident", ("text",), "text", lambda ctx, name: quote_ident(name),
                             reads_catalog=False),
    "to_regclass": _function("to_regclass", ("text",), "regclass", _to_reg("regclass")),
    "to_regtype": _function("to_regtype", ("text",), "regtype", _to_reg("regtype")),
    "current_database": _function("current_database", (), "text", lambda ctx: CURRENT_DATABASE, reads_catalog=False),
    "current_schema": _function("current_schema", (), "text", lambda ctx: CURRENT_SCHEMA, reads_catalog=False),
    "version": _function("version", (), "text", lambda ctx: SERVER_VERSION_TEXT, reads_catalog=False),
    "pg_is_in_recovery": _function("pg_is_in_recovery", (), "bool", lambda ctx: ctx.session.engine.read_only),
    "current_user": _function("current_user", (), "text", pg.session_user),
    "session_user": _function("session_user", (), "text", pg.session_user),
}


# --- reg* casts -------------------------------------------------------------------------------


def compile_reg_cast(fn, source: str, target: str, scope):
    """x::regclass (regtype, regnamespace, regrole): from an oid, the object's name is looked up; from
    text, the named object's oid. Either way the value is a RegOid: an int that prints as the name."""
    if not (source in t.INTEGERS or source in t.REG_TYPES or source in t.STRINGS):
        raise t.CannotCoerce(f"cannot cast type {t.DISPLAY[source]} to {target}")
    context = statement_context(scope, f"a cast to {target}")
    by_name = source in t.STRINGS

    def convert(row, params):
        value = fn(row, params)
        if value is None:
            return None
        if by_name:
            return reg_from_name(context(), target, value)
        return reg_from_oid(context(), target, int(value))
    return convert, target


def reg_from_oid(ctx, target: str, oid: int) -> t.RegOid:
    if target == "regclass":
        relation = _relation(ctx, oid)
        name = quote_ident(relation.name) if relation is not None else None
    elif target == "regtype":
        name = pg.format_type(oid, -1) if pg.type_name_of(oid) is not None else None
    elif target == "regnamespace":
        name = pg.namespace_name(oid)
    else:
        name = pg.role_name(ctx, oid)
    return t.RegOid(oid, name)


def reg_from_name(ctx, target: str, text: str) -> t.RegOid:
    stripped = text.strip()
    if stripped.isdigit():
        return reg_from_oid(ctx, target, int(stripped))
    if target == "regclass":
        wanted = _unqualified(stripped)
        for relation in pg.view(ctx).relations.values():
            if relation.name == wanted:
                return t.RegOid(relation.oid, quote_ident(relation.name))
        raise UndefinedTable(f'relation "{stripped}" does not exist')
    if target == "regtype":
        oid = _type_oid_by_name(stripped)
        if oid is None:
            raise UndefinedObject(f'type "{stripped}" does not exist')
        return t.RegOid(oid, pg.format_type(oid, -1))
    if target == "regnamespace":
        oid = next((oid for oid, name, _ in pg.NAMESPACES if name == _unqualified(stripped)), None)
        if oid is None:
            raise InvalidSchemaName(f'schema "{stripped}" does not exist')
        return t.RegOid(oid, pg.namespace_name(oid))
    for oid in (pg.SUPERUSER_OID, pg.DATABASE_OWNER_ROLE_OID):
        if pg.role_name(ctx, oid) == _unqualified(stripped):
            return t.RegOid(oid, pg.role_name(ctx, oid))
    raise UndefinedObject(f'role "{stripped}" does not exist')


def _type_oid_by_name(text: str) -> int | None:
    name = " ".join(_unqualified(text).split())
    array = name.endswith("[]")
    name = name[:-2].strip() if array else name
    for type_name, oid, _, array_oid, _ in pg.TYPES:
        if name in (type_name, pg.TYPE_DISPLAY.get(type_name)) or t.DISPLAY.get(type_name) == name:
            return array_oid if array else oid
    aliases = {"int": "int4", "decimal": "numeric", "character": "bpchar", "char": "bpchar"}
    if name in aliases:
        return _type_oid_by_name(aliases[name] + ("[]" if array else ""))
    return None
