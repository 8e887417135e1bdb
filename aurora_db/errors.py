"""Typed, expected failures. Each carries the PostgreSQL SQLSTATE a client sees.

A broken invariant is not one of these: it is an AssertionError that stops the process.
"""


class DatabaseError(Exception):
    """An error a client can be told about; `sqlstate` is its PostgreSQL code."""

    sqlstate = "XX000"
    severity = "ERROR"

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint


class SyntaxError_(DatabaseError):
    sqlstate = "42601"


class FeatureNotSupported(DatabaseError):
    sqlstate = "0A000"


class UndefinedTable(DatabaseError):
    sqlstate = "42P01"


class UndefinedColumn(DatabaseError):
    sqlstate = "42703"


class InvalidColumnReference(DatabaseError):
    sqlstate = "42P10"


class UndefinedFunction(DatabaseError):
    sqlstate = "42883"


class DuplicateTable(DatabaseError):
    sqlstate = "42P07"


class DuplicateColumn(DatabaseError):
    sqlstate = "42701"


class UniqueViolation(DatabaseError):
    sqlstate = "23505"


class NotNullViolation(DatabaseError):
    sqlstate = "23502"


class DatatypeMismatch(DatabaseError):
    sqlstate = "42804"


class InvalidTextRepresentation(DatabaseError):
    sqlstate = "22P02"


class NumericValueOutOfRange(DatabaseError):
    sqlstate = "22003"


class StringDataRightTruncation(DatabaseError):
    sqlstate = "22001"


class DivisionByZero(DatabaseError):
    sqlstate = "22012"


class GroupingError(DatabaseError):
    sqlstate = "42803"


class AmbiguousColumn(DatabaseError):
    sqlstate = "42702"


class InvalidParameterValue(DatabaseError):
    sqlstate = "22023"


class ProtocolViolation(DatabaseError):
    sqlstate = "08P01"


class InFailedTransaction(DatabaseError):
    sqlstate = "25P02"


class SerializationFailure(DatabaseError):
    sqlstate = "40001"


class ReadOnlyTransaction(DatabaseError):
    sqlstate = "25006"


class InvalidPreparedStatement(DatabaseError):
    sqlstate = "26000"


class InvalidCursorName(DatabaseError):
    sqlstate = "34000"


class CannotConnectNow(DatabaseError):
    """The volume cannot serve: recovery is running, or a quorum is lost."""

    sqlstate = "57P03"


class QuorumTimeout(DatabaseError):
    """A write quorum did not acknowledge in time. The commit's outcome is unknown to the client,
    exactly as when a connection drops during COMMIT: it may still become durable."""

    sqlstate = "08006"


class StaleEpoch(DatabaseError):
    """This writer was fenced: storage holds a newer volume epoch."""

    sqlstate = "57P01"


class StorageUnavailable(DatabaseError):
    """No segment that is complete at the read point answered in time."""

    sqlstate = "58000"


class ProgramLimitExceeded(DatabaseError):
    sqlstate = "54000"


class InternalError(DatabaseError):
    sqlstate = "XX000"


class CardinalityViolation(DatabaseError):
    """A scalar subquery returned more than one row."""

    sqlstate = "21000"


class WrongObjectType(DatabaseError):
    """A statement names a relation of another kind: DROP TABLE of a view, COPY into a view."""

    sqlstate = "42809"


class DuplicateAlias(DatabaseError):
    sqlstate = "42712"
