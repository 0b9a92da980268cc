"""RawResponse -> bytes/str/JSON and JSON <-> dataclass conversions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from datapipelines import CompositeDataTransformer, NotFoundError
from datapipelines.errors import ConfigurationError, UnsupportedError
from datapipelines.remote import RawResponse, RemoteError
from datapipelines.transformers import (
    JSON,
    DataclassConversionError,
    DataclassTransformer,
    DecodeError,
    RawTransformer,
    charset_of,
    from_json,
    to_json,
)


@dataclass
class Day:
    date: str
    high: float
    low: Optional[float] = None


@dataclass
class Forecast:
    city: str
    days: list[Day]
    tags: tuple[str, ...] = ()
    by_name: dict[str, Day] = field(default_factory=dict)


def raw(payload: bytes, content_type: str | None = "application/json", status: int = 200) -> RawResponse:
    return RawResponse(payload=payload, status_code=status, content_type=content_type, url="http://h/x")


def test_bytes_text_and_json():
    transformer = RawTransformer()
    response = raw('{"name": "Zoë"}'.encode())
    assert transformer.transform(bytes, response) == '{"name": "Zoë"}'.encode()
    assert transformer.transform(str, response) == '{"name": "Zoë"}'
    assert transformer.transform(JSON, response) == {"name": "Zoë"}
    assert transformer.transform(JSON, raw(b"[1, 2]")) == [1, 2]
    assert isinstance({}, JSON) and isinstance([], JSON) and not isinstance("x", JSON)


def test_charset_comes_from_the_content_type():
    latin = raw("café".encode("latin-1"), "text/plain; charset=ISO-8859-1")
    assert RawTransformer().transform(str, latin) == "café"
    assert (
        RawTransformer().transform(JSON, raw('"é"'.encode("utf-16"), 'application/json; charset="utf-16"'))
        == "é"
    )
    assert charset_of('text/html; Charset="UTF-8"') == "utf-8"
    assert charset_of("text/html") == "utf-8" and charset_of(None, default="") == ""


def test_undecodable_payloads_raise_decode_error_naming_the_url():
    with pytest.raises(DecodeError, match=r"http://h/x.*not JSON"):
        RawTransformer().transform(JSON, raw(b"<html>oops</html>", "text/html"))
    with pytest.raises(DecodeError, match="klingon"):
        RawTransformer().transform(str, raw(b"x", "text/plain; charset=klingon"))
    with pytest.raises(DecodeError, match="utf-8"):
        RawTransformer().transform(str, raw(b"\xff\xfe\xfa", "text/plain"))


@pytest.mark.parametrize("target", [bytes, str, JSON])
def test_error_statuses_are_never_converted(target):
    with pytest.raises(NotFoundError, match="404"):
        RawTransformer().transform(target, raw(b"{}", status=404))
    with pytest.raises(RemoteError) as raised:
        RawTransformer().transform(target, raw(b'{"error": 1}', status=502))
    assert raised.value.status == 502 and raised.value.url == "http://h/x"


def test_json_to_nested_dataclasses_and_back():
    document = {
        "city": "Oslo",
        "extra": "ignored",
        "tags": ["cold", "dark"],
        "days": [{"date": "mon", "high": 3, "low": -2.5}, {"date": "tue", "high": 4.5, "low": None}],
        "by_name": {"best": {"date": "tue", "high": 4.5}},
    }
    forecast = DataclassTransformer(Forecast, Day).transform(Forecast, document)
    assert forecast == Forecast(
        "Oslo", [Day("mon", 3.0, -2.5), Day("tue", 4.5, None)], ("cold", "dark"), {"best": Day("tue", 4.5)}
    )
    assert isinstance(forecast.days[0].high, float)
    back = DataclassTransformer(Forecast).transform(JSON, forecast)
    assert back["days"][0] == {"date": "mon", "high": 3.0, "low": -2.5} and "extra" not in back
    assert from_json(Forecast, to_json(forecast)) == forecast


@pytest.mark.parametrize(
    "document, message",
    [
        ({"days": []}, r"Forecast has no 'city'"),
        ({"city": 7, "days": []}, r"Forecast.city must be str, got int"),
        ({"city": "x", "days": [{"date": "d", "high": "hot"}]}, r"Forecast.days\[0\].high must be float"),
        ({"city": "x", "days": {"date": "d"}}, r"Forecast.days must be a JSON array"),
        ({"city": "x", "days": [{"date": "d", "high": True}]}, r"high must be float, got bool"),
        (["not", "an", "object"], r"must be a JSON object"),
    ],
)
def test_documents_that_do_not_fit_name_the_path(document, message):
    with pytest.raises(DataclassConversionError, match=message):
        DataclassTransformer(Forecast).transform(Forecast, document)


def test_transformer_declares_its_types_and_rejects_others():
    transformer = DataclassTransformer(Day, Forecast)
    assert transformer.transforms[JSON] == {Day, Forecast} and transformer.transforms[Day] == {JSON}
    with pytest.raises(UnsupportedError, match="DataclassTransformer"):
        transformer.transform(JSON, object())
    with pytest.raises(ConfigurationError, match="dataclass types"):
        DataclassTransformer(dict)
    with pytest.raises(ConfigurationError):
        DataclassTransformer()


def test_a_composite_finds_the_conversion_for_a_plain_dict():
    composite = CompositeDataTransformer([RawTransformer(), DataclassTransformer(Day)])
    assert composite.transform(Day, {"date": "d", "high": 1}) == Day("d", 1.0)
    assert composite.transform(JSON, raw(b'{"a": 1}')) == {"a": 1}
