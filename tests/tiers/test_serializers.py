"""Serializers and the envelope: round trips, and bytes that must never be trusted."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import pickle
import uuid
from typing import Any, Optional

import pytest

from datapipelines import MISSING, ConfigurationError, key_for, set_schema_version
from datapipelines.sinks.serializers import (
    SECRET_ENV,
    Codec,
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    SerializationError,
    SignedPickleSerializer,
    SignedSerializer,
    make_serializer,
)


@dataclasses.dataclass
class Part:
    name: str
    at: datetime.datetime


@dataclasses.dataclass
class Order:
    id: int
    parts: list[Part]
    backup: Optional[Part] = None  # noqa: UP045 - the Optional spelling must resolve too
    total: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        self.total = len(self.parts)


@dataclasses.dataclass
class Stranger:
    id: int


class Exploit:
    """Unpickling it would run a command; nothing may ever unpickle it."""

    ran = False

    def __reduce__(self) -> Any:
        return (Exploit.trigger, ())

    @staticmethod
    def trigger() -> None:
        Exploit.ran = True


PLAIN = {
    "str": "héllo",
    "numbers": [1, -2, 3.5, 1e300],
    "flags": [True, False, None],
    "nested": {"a": {"b": [1, {"c": "d"}]}},
    "tuple": (1, ("two", 3.0)),
    "sets": [{1, 2}, frozenset({"x"})],
    "int keys": {1: "one", (2, 3): "pair"},
    "bytes": b"\x00\xffraw",
    "when": [datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc), datetime.date(2024, 5, 1)],
    "exact": [decimal.Decimal("1.10"), uuid.UUID(int=7), datetime.timedelta(seconds=90)],
    "__dp__": "a user key that looks like a tag",
}


def test_json_round_trips_plain_data_with_its_types() -> None:
    json = JsonSerializer()
    assert json.loads(json.dumps(PLAIN, dict), dict) == PLAIN
    assert json.loads(json.dumps(PLAIN["tuple"], tuple), tuple).__class__ is tuple


def test_json_rebuilds_the_requested_dataclass_and_the_dataclasses_it_names() -> None:
    json = JsonSerializer()
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    order = Order(1, [Part("a", when), Part("b", when)], backup=Part("c", when))
    back = json.loads(json.dumps(order, Order), Order)
    assert back == order and back.total == 2 and isinstance(back.parts[0], Part)


def test_json_never_builds_a_dataclass_that_was_not_requested() -> None:
    json = JsonSerializer()
    with pytest.raises(SerializationError, match="Stranger"):
        json.loads(json.dumps(Stranger(1), Stranger), Order)
    with pytest.raises(SerializationError, match="Stranger"):
        json.loads(json.dumps({"inner": Stranger(1)}, dict), dict)


def test_json_refuses_what_it_cannot_represent_naming_the_type() -> None:
    with pytest.raises(SerializationError, match="Order.*signed-pickle"):
        JsonSerializer().dumps(Order(1, [Part("wheel", object())]), Order)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, {"id": 1, "parts": []}, Stranger(1)])
def test_json_never_writes_what_it_would_reject_on_reading(value: Any) -> None:
    # A dataclass type reads back as exactly that class; anything else is refused on the way in.
    with pytest.raises(SerializationError, match="not a Order"):
        JsonSerializer().dumps(value, Order)


@pytest.mark.parametrize("payload", [b"{not json", b'{"__dp__": "nope", "v": 1}', b"\xff\xfe", b""])
def test_json_garbage_is_a_serialization_error(payload: bytes) -> None:
    with pytest.raises(SerializationError):
        JsonSerializer().loads(payload, dict)


def test_signed_pickle_round_trips_and_rejects_tampering_and_other_secrets() -> None:
    signed = SignedPickleSerializer("s3cret")
    data = signed.dumps({"a": [1, 2]}, dict)
    assert signed.loads(data, dict) == {"a": [1, 2]}
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    for bad, serializer in ((tampered, signed), (data, SignedPickleSerializer("other"))):
        with pytest.raises(SerializationError, match="bad signature"):
            serializer.loads(bad, dict)


def test_signed_pickle_never_unpickles_unsigned_bytes() -> None:
    forged = b"\0" * 32 + pickle.dumps(Exploit())
    with pytest.raises(SerializationError):
        SignedPickleSerializer("s3cret").loads(forged, dict)
    assert Exploit.ran is False


def test_a_signature_binds_the_type_and_schema_version() -> None:
    @dataclasses.dataclass
    class Versioned:
        x: int

    signed = SignedPickleSerializer("s3cret")
    data = signed.dumps({"x": 1}, Versioned)  # a local class cannot be pickled; the tag is what counts
    assert signed.loads(data, Versioned) == {"x": 1}
    with pytest.raises(SerializationError):
        signed.loads(data, Order)
    set_schema_version(Versioned, 5)
    with pytest.raises(SerializationError):
        signed.loads(data, Versioned)


def test_unsigned_pickle_only_by_name() -> None:
    serializer = make_serializer("pickle")
    assert isinstance(serializer, PickleSerializer)
    assert serializer.loads(serializer.dumps(Stranger(3), Stranger), Stranger) == Stranger(3)


def test_the_default_is_msgpack_without_a_secret_and_signed_pickle_with_one(monkeypatch: Any) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert isinstance(make_serializer(), MsgpackSerializer)
    signed = make_serializer("msgpack", secret="k")
    assert isinstance(signed, SignedSerializer) and signed.name == "msgpack+hmac-sha256"
    assert isinstance(make_serializer(secret="k"), SignedPickleSerializer)
    monkeypatch.setenv(SECRET_ENV, "from-env")
    from_env = make_serializer()
    assert isinstance(from_env, SignedPickleSerializer)
    assert SignedPickleSerializer("from-env").loads(from_env.dumps(1, int), int) == 1


def test_bad_serializer_settings_name_the_problem(monkeypatch: Any) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(ConfigurationError, match="yaml"):
        make_serializer("yaml")
    with pytest.raises(ConfigurationError, match=SECRET_ENV):
        make_serializer("signed-pickle")
    with pytest.raises(ConfigurationError, match="not both"):
        make_serializer(JsonSerializer(), secret="k")


# -- MessagePack ------------------------------------------------------------------------------------

JSON_FORM = b"\xc1"  # never starts a MessagePack value


@dataclasses.dataclass(frozen=True)
class Loose:
    names: list[str]


def test_msgpack_decodes_straight_into_the_requested_dataclass() -> None:
    msgpack = MsgpackSerializer()
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    order = Order(1, [Part("a", when), Part("b", when)], backup=Part("c", when))
    data = msgpack.dumps(order, Order)
    assert not data.startswith(JSON_FORM)
    back = msgpack.loads(data, Order)
    assert back == order and back.total == 2 and isinstance(back.parts[0], Part)
    assert back.parts[0].at == when and back.parts[0].at.tzinfo is not None


def test_msgpack_keeps_what_annotations_do_not_say_in_the_json_form() -> None:
    msgpack = MsgpackSerializer()
    data = msgpack.dumps(PLAIN, dict)  # tuples, sets, non-string keys: MessagePack alone would lose them
    assert data.startswith(JSON_FORM)
    back = msgpack.loads(data, dict)
    assert back == PLAIN and back["tuple"].__class__ is tuple and back["sets"][1].__class__ is frozenset
    lying = Loose(("a", "b"))  # type: ignore[arg-type]
    assert msgpack.dumps(lying, Loose).startswith(JSON_FORM)
    assert msgpack.loads(msgpack.dumps(lying, Loose), Loose).names.__class__ is tuple
    assert not msgpack.dumps({"plain": [1, 2.5, None, "x"]}, dict).startswith(JSON_FORM)


def test_msgpack_never_builds_a_dataclass_that_was_not_requested() -> None:
    msgpack = MsgpackSerializer()
    with pytest.raises(SerializationError, match="Order"):
        msgpack.loads(msgpack.dumps(Stranger(1), Stranger), Order)
    with pytest.raises(SerializationError, match="Stranger"):
        msgpack.loads(msgpack.dumps({"inner": Stranger(1)}, dict), dict)
    assert msgpack.loads(msgpack.dumps({"id": 1}, dict), Stranger) == Stranger(1)  # the requested type


@pytest.mark.parametrize("payload", [b"\xc1{not json", b"\x93\x01", b"\xff", b"", b"\x81\xa2id\xa1x"])
def test_msgpack_garbage_is_a_serialization_error(payload: bytes) -> None:
    with pytest.raises(SerializationError):
        MsgpackSerializer().loads(payload, Stranger)


def test_msgpack_refuses_what_it_cannot_represent_naming_the_type() -> None:
    with pytest.raises(SerializationError, match="MessagePack .*cannot store .*Order.*signed-pickle"):
        MsgpackSerializer().dumps(Order(1, [Part("wheel", object())]), Order)  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="not a Order"):
        MsgpackSerializer().dumps(Stranger(1), Order)


def test_msgpack_reads_the_entries_json_wrote_and_nothing_else_it_did_not_write() -> None:
    key = key_for(Stranger, {"id": 1})
    old = Codec(JsonSerializer()).encode(Stranger(1), Stranger, key, 10.0, None)
    assert Codec(MsgpackSerializer()).decode(old, Stranger, key, 20.0) == (Stranger(1), 10.0)
    with pytest.raises(SerializationError, match="written as 'json"):
        Codec(MsgpackSerializer()).decode(old, Stranger, key_for(Stranger, {"id": 2}), 20.0)
    with pytest.raises(SerializationError, match="written as 'json"):
        Codec(make_serializer("msgpack", secret="k")).decode(old, Stranger, key, 20.0)
    pickled = Codec(PickleSerializer()).encode(Stranger(1), Stranger, key, 10.0, None)
    with pytest.raises(SerializationError, match="written as 'pickle"):
        Codec(MsgpackSerializer()).decode(pickled, Stranger, key, 20.0)


def test_the_envelope_carries_the_deadline() -> None:
    codec, key = Codec(JsonSerializer()), key_for(dict, {"id": 1})
    blob = codec.encode({"a": 1}, dict, key, written_at=40.0, seconds=60.0)
    assert codec.decode(blob, dict, key, now=99.9) == ({"a": 1}, 40.0)
    assert codec.decode(blob, dict, key, now=100.0) is MISSING
    forever = codec.encode({"a": 1}, dict, key, 40.0, None)
    assert codec.decode(forever, dict, key, now=1e18) == ({"a": 1}, 40.0)


def test_the_envelope_rejects_other_serializers_types_versions_and_garbage() -> None:
    @dataclasses.dataclass
    class Versioned:
        x: int

    json, signed = Codec(JsonSerializer()), Codec(SignedPickleSerializer("k"))
    key = key_for(Versioned, {"id": 1})
    blob = json.encode(Versioned(1), Versioned, key, 0.0, None)
    assert json.decode(blob, Versioned, key, 0) == (Versioned(1), 0.0)
    with pytest.raises(SerializationError, match="written as 'json"):
        signed.decode(blob, Versioned, key, 0)
    with pytest.raises(SerializationError, match="Versioned:v1"):
        json.decode(blob, Order, key_for(Order, {"id": 1}), 0)
    set_schema_version(Versioned, 2)
    with pytest.raises(SerializationError, match="expected .*Versioned:v2"):
        json.decode(blob, Versioned, key_for(Versioned, {"id": 1}), 0)
    for garbage in (b"", b"DPE1", b"hello world", pickle.dumps(Exploit()), "text"):
        with pytest.raises(SerializationError, match="not a datapipelines entry"):
            json.decode(garbage, Versioned, key, 0)
    assert Exploit.ran is False
