"""One codec per wire format; each turns bytes into decoded requests (``deployments.tensors``) and back.

| module | wire format |
| --- | --- |
| ``v2_json`` | Open Inference Protocol V2, REST with a JSON body |
| ``v2_binary`` | V2 REST binary tensor extension (JSON header + raw tensor bytes); plain V2 JSON without it |
| ``plain_json`` | ``{"instances": rows}`` -> ``{"predictions": [...]}`` |
| ``raw_tensors`` | the raw tensor byte layout the binary extension and gRPC share |

The REST entry point looks its codec up by route action in :data:`REST_CODECS`; every codec there
has ``decode(body, headers) -> InferenceRequest`` and ``encode(InferenceResult) -> Encoded``.
Adding a wire format means adding a module here and an entry point that calls it.
"""
from __future__ import annotations

from types import ModuleType

from deployments.codecs import plain_json, v2_binary

REST_CODECS: dict[str, ModuleType] = {"infer": v2_binary, "predict": plain_json}
