"""One codec per wire format; each turns bytes into decoded requests (``modelpool.deployments.tensors``) and back.

| module | wire format |
| --- | --- |
| ``v2_json`` | Open Inference Protocol V2, REST with a JSON body |
| ``v2_binary`` | V2 REST binary tensor extension (JSON header + raw tensor bytes); plain V2 JSON without it |
| ``plain_json`` | ``{"instances": rows}`` -> ``{"predictions": [...]}`` |
| ``raw_tensors`` | the raw tensor byte layout the binary extension and gRPC share |
| ``torchserve`` | TorchServe's inference API: ``/predictions/{model}[/{version}]``, JSON, text, binary or form bodies |
| ``kserve_v1`` | KServe V1 (TF Serving's REST form): ``/v1/models/{model}[:predict|:explain]`` |
| ``form_data`` | form bodies (multipart and url-encoded) split into fields, for ``torchserve`` |

The REST entry point looks its codec up by route action in :data:`REST_CODECS`; every codec there
has ``decode(body, headers) -> InferenceRequest`` and ``encode(InferenceResult) -> Encoded``.
Adding a wire format means adding a module here and an entry point that calls it.

:data:`PROTOCOLS` are the codecs that also own a URL scheme of their own (another server's API): each has
``ROUTE_PREFIX``, ``parse_call(path, method) -> ProtocolCall`` and ``error_body(status, error)`` besides, and
is in :data:`REST_CODECS` under its ``NAME``. ``modelpool.deployments.protocol_front`` serves their routes.
"""
from __future__ import annotations

from types import ModuleType

from modelpool.deployments.codecs import kserve_v1, plain_json, torchserve, v2_binary

PROTOCOLS: dict[str, ModuleType] = {torchserve.NAME: torchserve, kserve_v1.NAME: kserve_v1}
REST_CODECS: dict[str, ModuleType] = {"infer": v2_binary, "predict": plain_json, **PROTOCOLS}
