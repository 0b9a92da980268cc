"""Built-in transformers, installed as ``datapipelines.transformers``.

``RawTransformer`` turns a RawResponse into bytes, str or ``JSON``;
``DataclassTransformer(*types)`` turns JSON objects into dataclasses and back.

The 1.x names of this module, ``DataTransformer`` and ``CompositeDataTransformer``,
are importable from here too.
"""

from ..data_transformer import CompositeDataTransformer, DataTransformer
from .dataclass import DataclassConversionError, DataclassTransformer, from_json, to_json
from .raw import JSON, DecodeError, RawTransformer, charset_of

__all__ = [
    "JSON",
    "CompositeDataTransformer",
    "DataclassConversionError",
    "DataTransformer",
    "DataclassTransformer",
    "DecodeError",
    "RawTransformer",
    "charset_of",
    "from_json",
    "to_json",
]
