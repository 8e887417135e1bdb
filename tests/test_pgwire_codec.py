"""The PostgreSQL wire codec without sockets: frontend decoding, backend encoding, value formats.

Expected strings were checked against PostgreSQL 15 (float8out, float4out, and the traces of
psycopg and asyncpg talking to it).
"""

from __future__ import annotations

import datetime
import decimal
import math
import struct

import pytest

from aurora_db import errors, pgwire
from compute_node.backend import (
    BOOL_OID,
    BYTEA_OID,
    FLOAT4_OID,
    FLOAT8_OID,
    INT2_OID,
    INT4_OID,
    INT8_OID,
    NUMERIC_OID,
    TEXT_OID,
    UNKNOWN_OID,
    VARCHAR_OID,
    Column,
)


def frontend_message(type_byte: bytes, body: bytes = b"") -> bytes:
    return type_byte + struct.pack(">i", len(body) + 4) + body


def cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def startup_packet(parameters: dict[str, str], version: int = pgwire.PROTOCOL_VERSION_3_0) -> bytes:
    body = struct.pack(">i", version) + b"".join(cstring(k) + cstring(v) for k, v in parameters.items()) + b"\x00"
    return struct.pack(">i", len(body) + 4) + body


def started_decoder() -> pgwire.FrontendDecoder:
    decoder = pgwire.FrontendDecoder()
    assert decoder.feed(startup_packet({"user": "postgres"})) == [pgwire.StartupMessage(196608, {"user": "postgres"})]
    return decoder


def parse_backend(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split backend bytes into (type, body) pairs, checking every length field."""
    messages = []
    while data:
        (length,) = struct.unpack_from(">i", data, 1)
        messages.append((data[:1], data[5 : 1 + length]))
        data = data[1 + length :]
    return messages


# Startup phase.


def test_startup_message_carries_its_parameters():
    packet = startup_packet({"user": "alice", "database": "db", "application_name": "pgbench"})
    decoder = pgwire.FrontendDecoder()
    [message] = decoder.feed(packet)
    assert message == pgwire.StartupMessage(3 << 16, {"user": "alice", "database": "db", "application_name": "pgbench"})
    assert decoder.phase is pgwire.DecoderPhase.TYPED


def test_ssl_and_gssenc_requests_keep_the_decoder_in_startup():
    decoder = pgwire.FrontendDecoder()
    assert decoder.feed(struct.pack(">ii", 8, 80877104)) == [pgwire.GSSENCRequest()]
    assert decoder.feed(struct.pack(">ii", 8, 80877103)) == [pgwire.SSLRequest()]
    assert decoder.phase is pgwire.DecoderPhase.STARTUP
    assert decoder.feed(startup_packet({"user": "u"})) == [pgwire.StartupMessage(196608, {"user": "u"})]


def test_cancel_request():
    decoder = pgwire.FrontendDecoder()
    assert decoder.feed(struct.pack(">iiII", 16, 80877102, 42, 0xDEADBEEF)) == [pgwire.CancelRequest(42, 0xDEADBEEF)]


@pytest.mark.parametrize("packet", [
    struct.pack(">ii", 8, 2 << 16),  # protocol 2.0
    struct.pack(">ii", 4, 0),  # shorter than any packet
    struct.pack(">ii", 100_000, 196608),  # longer than a startup packet may be
    struct.pack(">i", 12) + struct.pack(">i", 196608) + b"user",  # unterminated
    struct.pack(">ii", 12, 80877103) + b"xxxx",  # SSLRequest with a tail
])
def test_malformed_startup_packets_are_protocol_errors(packet):
    with pytest.raises(pgwire.ProtocolError):
        pgwire.FrontendDecoder().feed(packet)


# Typed messages.


def test_every_typed_message_decodes():
    stream = b"".join([
        frontend_message(b"Q", cstring("select 1")),
        frontend_message(b"P", cstring("s1") + cstring("select $1, $2") + struct.pack(">hiI", 2, 21, 0)),
        frontend_message(b"B", cstring("p1") + cstring("s1") + struct.pack(">hhh", 2, 1, 0) + struct.pack(">h", 2)
                         + struct.pack(">i", 2) + b"\x00\x01" + struct.pack(">i", -1) + struct.pack(">hh", 1, 1)),
        frontend_message(b"D", b"S" + cstring("s1")),
        frontend_message(b"D", b"P" + cstring("p1")),
        frontend_message(b"E", cstring("p1") + struct.pack(">i", 10)),
        frontend_message(b"C", b"P" + cstring("p1")),
        frontend_message(b"C", b"S" + cstring("s1")),
        frontend_message(b"H"),
        frontend_message(b"S"),
        frontend_message(b"d", b"1\tx\n"),
        frontend_message(b"c"),
        frontend_message(b"f", cstring("stop")),
        frontend_message(b"X"),
    ])
    assert started_decoder().feed(stream) == [
        pgwire.Query("select 1"),
        pgwire.Parse("s1", "select $1, $2", [21, 0]),
        pgwire.Bind("p1", "s1", [1, 0], [b"\x00\x01", None], [1]),
        pgwire.Describe("S", "s1"),
        pgwire.Describe("P", "p1"),
        pgwire.Execute("p1", 10),
        pgwire.Close("P", "p1"),
        pgwire.Close("S", "s1"),
        pgwire.Flush(),
        pgwire.Sync(),
        pgwire.CopyData(b"1\tx\n"),
        pgwire.CopyDone(),
        pgwire.CopyFail("stop"),
        pgwire.Terminate(),
    ]


def test_a_stream_fed_byte_by_byte_decodes_the_same():
    stream = (startup_packet({"user": "postgres"}) + frontend_message(b"Q", cstring("select 'é'"))
              + frontend_message(b"E", cstring("") + struct.pack(">i", 0)) + frontend_message(b"S"))
    decoder = pgwire.FrontendDecoder()
    messages = []
    for index in range(len(stream)):
        messages += decoder.feed(stream[index : index + 1])
    assert messages == [pgwire.StartupMessage(196608, {"user": "postgres"}), pgwire.Query("select 'é'"),
                        pgwire.Execute("", 0), pgwire.Sync()]


def test_an_oversize_length_is_refused_before_the_body_arrives():
    decoder = pgwire.FrontendDecoder(message_bytes_max=1024)
    decoder.feed(startup_packet({"user": "u"}))
    with pytest.raises(pgwire.ProtocolError, match="exceeds the limit"):
        decoder.feed(b"Q" + struct.pack(">i", 1025))


def test_the_default_limit_is_the_named_constant():
    decoder = started_decoder()
    with pytest.raises(pgwire.ProtocolError):
        decoder.feed(b"Q" + struct.pack(">i", pgwire.PGWIRE_MESSAGE_BYTES_MAX + 1))


def test_an_unknown_type_byte_fails_at_once():
    with pytest.raises(pgwire.ProtocolError, match="invalid frontend message type"):
        started_decoder().feed(b"\xff")


@pytest.mark.parametrize("message", [
    frontend_message(b"Q", b"no terminator"),
    frontend_message(b"S", b"extra"),
    frontend_message(b"D", b"X" + cstring("name")),
    frontend_message(b"E", cstring("p")),  # missing maxrows
    frontend_message(b"B", cstring("") + cstring("") + struct.pack(">hh", 1, 7) + struct.pack(">hh", 0, 0)),
    frontend_message(b"B", cstring("") + cstring("") + struct.pack(">hh", 0, -1)),  # a negative count
    frontend_message(b"B", cstring("") + cstring("") + struct.pack(">hhih", 0, 1, -2, 0)),  # a negative length
    frontend_message(b"B", cstring("") + cstring("") + struct.pack(">hhi", 0, 1, 50) + b"short"),
    frontend_message(b"B", cstring("") + cstring("s1") + struct.pack(">hhh", 0, 0, 0) + b"x"),  # left over
    frontend_message(b"B", b"\xff\x00" + cstring("s1") + struct.pack(">hhh", 0, 0, 0)),  # not UTF-8
    frontend_message(b"B", cstring("p1") + b"s1"),  # an unterminated string
    frontend_message(b"E", cstring("p") + struct.pack(">ih", 0, 0)),  # left over
    frontend_message(b"Q", b"\xff\xfe\x00"),  # not UTF-8
    b"Q" + struct.pack(">i", 3),  # a length shorter than itself
    frontend_message(b"f", b"no terminator"),  # CopyFail's message is a C string
    frontend_message(b"c", b"extra"),  # CopyDone has no body
])
def test_malformed_messages_are_protocol_errors(message):
    with pytest.raises(pgwire.ProtocolError):
        started_decoder().feed(message)


def test_a_failed_decoder_stays_failed():
    decoder = started_decoder()
    with pytest.raises(pgwire.ProtocolError):
        decoder.feed(b"\xff")
    with pytest.raises(pgwire.ProtocolError):
        decoder.feed(frontend_message(b"S"))


def test_receive_then_next_message_yields_messages_before_the_bad_bytes():
    decoder = started_decoder()
    decoder.receive(frontend_message(b"S") + b"\xff")
    assert decoder.next_message() == pgwire.Sync()
    with pytest.raises(pgwire.ProtocolError):
        decoder.next_message()


# Backend messages.


def test_backend_messages_frame_their_bodies():
    assert pgwire.encode_authentication_ok() == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert pgwire.encode_ready_for_query("T") == b"Z\x00\x00\x00\x05T"
    assert pgwire.encode_parameter_status("TimeZone", "UTC") == b"S\x00\x00\x00\x11TimeZone\x00UTC\x00"
    assert pgwire.encode_backend_key_data(7, 0xFFFFFFFF) == b"K\x00\x00\x00\x0c\x00\x00\x00\x07\xff\xff\xff\xff"
    assert pgwire.encode_command_complete("SELECT 1") == b"C\x00\x00\x00\x0dSELECT 1\x00"
    for encode, type_byte in [(pgwire.encode_parse_complete, b"1"), (pgwire.encode_bind_complete, b"2"),
                              (pgwire.encode_close_complete, b"3"), (pgwire.encode_no_data, b"n"),
                              (pgwire.encode_portal_suspended, b"s"), (pgwire.encode_empty_query_response, b"I")]:
        assert encode() == type_byte + b"\x00\x00\x00\x04"
    assert pgwire.encode_parameter_description([23, 25]) == b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19"


def test_row_description_matches_postgres_field_layout():
    columns = [Column("a", INT4_OID, table_oid=17096, column_number=1), Column("b", TEXT_OID)]
    [(type_byte, body)] = parse_backend(pgwire.encode_row_description(columns, [0, 1]))
    assert type_byte == b"T"
    assert body == (b"\x00\x02" + b"a\x00" + struct.pack(">IhIhih", 17096, 1, 23, 4, -1, 0)
                    + b"b\x00" + struct.pack(">IhIhih", 0, 0, 25, -1, -1, 1))


def test_data_row_encodes_null_as_minus_one():
    [(type_byte, body)] = parse_backend(pgwire.encode_data_row([b"42", None, b""]))
    assert type_byte == b"D"
    assert body == b"\x00\x03" + b"\x00\x00\x00\x0242" + b"\xff\xff\xff\xff" + b"\x00\x00\x00\x00"


def test_error_response_carries_severity_code_message_detail_and_hint():
    error = errors.UniqueViolation("duplicate key", detail="Key (a)=(1) already exists.", hint="try another")
    [(type_byte, body)] = parse_backend(pgwire.encode_database_error(error))
    assert type_byte == b"E"
    assert body == (b"SERROR\x00VERROR\x00C23505\x00Mduplicate key\x00"
                    b"DKey (a)=(1) already exists.\x00Htry another\x00\x00")
    [(_, fatal)] = parse_backend(pgwire.encode_database_error(errors.ProtocolViolation("bad"), severity="FATAL"))
    assert fatal == b"SFATAL\x00VFATAL\x00C08P01\x00Mbad\x00\x00"


def test_notice_response():
    [(type_byte, body)] = parse_backend(pgwire.encode_notice_response("WARNING", "01000", "careful"))
    assert type_byte == b"N"
    assert body == b"SWARNING\x00VWARNING\x00C01000\x00Mcareful\x00\x00"


# Text output.


@pytest.mark.parametrize("value, text", [
    (1.0, "1"), (0.1, "0.1"), (1e20, "1e+20"), (-2.5, "-2.5"), (1e15, "1e+15"), (1e14, "100000000000000"),
    (123456789012345678.0, "1.2345678901234568e+17"), (1e-5, "1e-05"), (0.0001, "0.0001"),
    (0.1 + 0.2, "0.30000000000000004"), (1.5e-7, "1.5e-07"), (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"), (0.0, "0"), (-0.0, "-0"),
    (math.inf, "Infinity"), (-math.inf, "-Infinity"), (math.nan, "NaN"),
    (4.993478408848618e16, "4.9934784088486176e+16"),  # PostgreSQL's Ryu accepts no bound: one digit more than repr
])
def test_float8_text_matches_postgres(value, text):
    assert pgwire.format_float8(value) == text


@pytest.mark.parametrize("value, text", [
    (0.1, "0.1"), (1.0, "1"), (100000.0, "100000"), (1e6, "1e+06"), (3.4028234663852886e38, "3.4028235e+38"),
    (39059073.25473186, "3.9059072e+07"), (1e-5, "1e-05"), (math.inf, "Infinity"),
])
def test_float4_text_matches_postgres(value, text):
    assert pgwire.format_float4(value) == text


@pytest.mark.parametrize("value, type_oid, text", [
    (42, INT4_OID, b"42"), (True, BOOL_OID, b"t"), (False, BOOL_OID, b"f"), (1.5, FLOAT8_OID, b"1.5"),
    (0.1, FLOAT4_OID, b"0.1"), (decimal.Decimal("1.250"), NUMERIC_OID, b"1.250"),
    (decimal.Decimal("1E+2"), NUMERIC_OID, b"100"), (datetime.date(2024, 1, 2), 1082, b"2024-01-02"),
    (datetime.datetime(2024, 1, 2, 3, 4, 5), 1114, b"2024-01-02 03:04:05"),
    (datetime.datetime(2024, 1, 2, 3, 4, 5, 600, tzinfo=datetime.timezone(datetime.timedelta(hours=2))), 1184,
     b"2024-01-02 01:04:05.0006+00"),  # PostgreSQL drops the trailing zeros of the fraction
    (b"by", BYTEA_OID, b"\\x6279"), ("h\u00e9", TEXT_OID, "h\u00e9".encode()),
])
def test_text_output(value, type_oid, text):
    assert pgwire.encode_text_value(value, type_oid) == text


@pytest.mark.parametrize("value, type_oid, raw", [
    (1, INT2_OID, b"\x00\x01"), (70000, INT4_OID, b"\x00\x01\x11\x70"), (2**40, INT8_OID, struct.pack(">q", 2**40)),
    (1.5, FLOAT8_OID, b"?\xf8\x00\x00\x00\x00\x00\x00"), (1.5, FLOAT4_OID, b"?\xc0\x00\x00"),
    (True, BOOL_OID, b"\x01"), ("ax", TEXT_OID, b"ax"), ("ax", VARCHAR_OID, b"ax"),
    (decimal.Decimal("1.25"), NUMERIC_OID, struct.pack(">hhHHHH", 2, 0, 0, 2, 1, 2500)),  # numeric_send
    (decimal.Decimal("-0.0001"), NUMERIC_OID, struct.pack(">hhHHH", 1, -1, 0x4000, 4, 1)),
    (datetime.date(2024, 1, 2), pgwire.DATE_OID, struct.pack(">i", 8767)),
    (datetime.datetime(2000, 1, 1, 0, 0, 1), pgwire.TIMESTAMP_OID, struct.pack(">q", 1_000_000)),
    ("x", pgwire.UUID_OID, b"x"),  # no binary encoder: text bytes
])
def test_binary_output(value, type_oid, raw):
    assert pgwire.encode_binary_value(value, type_oid) == raw


def test_result_formats_follow_binds_rule_and_fall_back_to_text():
    columns = [Column("a", INT4_OID), Column("b", pgwire.UUID_OID), Column("c", TEXT_OID)]
    assert pgwire.result_formats(columns, []) == [0, 0, 0]
    assert pgwire.result_formats(columns, [1]) == [1, 0, 1]
    assert pgwire.result_formats(columns, [0, 1, 1]) == [0, 0, 1]
    assert pgwire.result_formats(None, [1]) == []
    with pytest.raises(errors.ProtocolViolation):
        pgwire.result_formats(columns, [0, 1])


def test_row_encoder_mixes_formats_and_nulls():
    encoder = pgwire.RowEncoder([Column("a", INT4_OID), Column("b", TEXT_OID)], [1, 0])
    [(_, body)] = parse_backend(encoder.encode((7, None)))
    assert body == b"\x00\x02\x00\x00\x00\x04\x00\x00\x00\x07\xff\xff\xff\xff"


# Parameter input.


@pytest.mark.parametrize("raw, type_oid, value", [
    (b"42", INT4_OID, 42), (b" -7 ", INT2_OID, -7), (b"+9223372036854775807", INT8_OID, 2**63 - 1),
    (b"1.5", FLOAT8_OID, 1.5), (b"-Infinity", FLOAT8_OID, -math.inf), (b"1e5", FLOAT4_OID, 100000.0),
    (b"t", BOOL_OID, True), (b"TRUE", BOOL_OID, True), (b"yes", BOOL_OID, True), (b"on", BOOL_OID, True),
    (b"1", BOOL_OID, True), (b"f", BOOL_OID, False), (b"no", BOOL_OID, False), (b"off", BOOL_OID, False),
    (b"txt", TEXT_OID, "txt"), (b"txt", UNKNOWN_OID, "txt"), (b"1.25", NUMERIC_OID, "1.25"),
    ("\u20ac".encode(), VARCHAR_OID, "\u20ac"),
])
def test_text_parameters(raw, type_oid, value):
    assert pgwire.decode_parameter(raw, pgwire.TEXT_FORMAT, type_oid, 1) == value


def test_float4_text_parameter_is_rounded_to_float4():
    assert pgwire.decode_parameter(b"0.1", pgwire.TEXT_FORMAT, FLOAT4_OID, 1) == struct.unpack(">f", struct.pack(">f", 0.1))[0]


@pytest.mark.parametrize("raw, type_oid, value", [
    (b"\x00\x01", INT2_OID, 1), (b"\x00\x01\x11p", INT4_OID, 70000), (b"\x00\x00\x01\x00\x00\x00\x00\x00", INT8_OID, 2**40),
    (b"?\xf8\x00\x00\x00\x00\x00\x00", FLOAT8_OID, 1.5), (b"?\xc0\x00\x00", FLOAT4_OID, 1.5),
    (b"\x01", BOOL_OID, True), (b"\x00", BOOL_OID, False), (b"a", TEXT_OID, "a"), (b"a", UNKNOWN_OID, "a"),
    # What psycopg 3 sends in binary for these types, as captured from a real exchange: the value's text form.
    (b"\x00\x06\x00\x05\x00\x00\x00\x00\x00\x0b\x1f{\x06T\x1c\x06\x04j\r`", NUMERIC_OID, "1180591620717411303424"),
    (b"\x00\x02\x00\x00\x40\x00\x00\x02\x00\x01\x09\xc4", NUMERIC_OID, "-1.25"),
    (b"by", BYTEA_OID, "\\x6279"), (b'\x00\x00"?', 1082, "2024-01-02"),
    (b"\x00\x02\xb0\xec\x85\x15\xf3@", 1114, "2024-01-02 03:04:05"),
    (b"\x00" * 15 + b"\x01", 2950, "00000000-0000-0000-0000-000000000001"),
])
def test_binary_parameters(raw, type_oid, value):
    assert pgwire.decode_parameter(raw, pgwire.BINARY_FORMAT, type_oid, 1) == value


def test_null_is_none_in_either_format():
    assert pgwire.decode_parameter(None, pgwire.TEXT_FORMAT, INT4_OID, 1) is None
    assert pgwire.decode_parameter(None, pgwire.BINARY_FORMAT, INT4_OID, 1) is None


@pytest.mark.parametrize("raw, format_code, type_oid", [
    (b"abc", 0, INT4_OID), (b"1_000", 0, INT4_OID), (b"1.5", 0, INT8_OID), (b"", 0, INT2_OID),
    (b"one", 0, FLOAT8_OID), (b"maybe", 0, BOOL_OID), (b"o", 0, BOOL_OID), (b"\xff", 0, TEXT_OID),
    (b"\x00\x01\x02", 1, INT4_OID), (b"\x02", 1, BOOL_OID), (b"\xff", 1, TEXT_OID), (b"\x00", 1, FLOAT8_OID),
])
def test_bad_parameter_values_are_22p02(raw, format_code, type_oid):
    with pytest.raises(errors.InvalidTextRepresentation):
        pgwire.decode_parameter(raw, format_code, type_oid, 1)


@pytest.mark.parametrize("raw, type_oid", [(b"32768", INT2_OID), (b"2147483648", INT4_OID), (b"1e400", FLOAT8_OID),
                                           (b"1e39", FLOAT4_OID), (b"1e-400", FLOAT8_OID)])
def test_out_of_range_parameters_are_22003(raw, type_oid):
    with pytest.raises(errors.NumericValueOutOfRange):
        pgwire.decode_parameter(raw, pgwire.TEXT_FORMAT, type_oid, 1)


def test_decode_parameters_applies_binds_format_rule():
    oids = [INT2_OID, TEXT_OID, FLOAT8_OID]
    values = [b"\x00\x05", b"y", b"?\xf8\x00\x00\x00\x00\x00\x00"]
    assert pgwire.decode_parameters(values, [1, 0, 1], oids) == [5, "y", 1.5]
    assert pgwire.decode_parameters([b"5", b"y", b"1.5"], [], oids) == [5, "y", 1.5]
    assert pgwire.decode_parameters([b"5", b"6"], [0], [INT4_OID, INT4_OID]) == [5, 6]


def test_decode_parameters_rejects_a_count_mismatch():
    with pytest.raises(errors.ProtocolViolation, match='requires 2'):
        pgwire.decode_parameters([b"1"], [], [INT4_OID, INT4_OID], statement_name="s")
    with pytest.raises(errors.ProtocolViolation):
        pgwire.decode_parameters([b"1", b"2", b"3"], [0, 1], [INT4_OID] * 3)


def test_binary_parameter_of_an_unsupported_type_is_0a000():
    with pytest.raises(errors.FeatureNotSupported):
        pgwire.decode_parameter(b"{}", pgwire.BINARY_FORMAT, 3802, 1)  # jsonb
