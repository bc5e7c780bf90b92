"""The decoded shapes every wire format meets in: request tensors and inference results.

Codecs turn bytes into these and back (``deployments/codecs/``); the data plane
(``deployments/dataplane.py``) and the batcher only ever see these and numpy arrays, so a new
transport never touches the model path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from modelpool.deployments.datatypes import V2_DATATYPES


@dataclass(frozen=True)
class Tensor:
    """One decoded request input: ``data`` is already typed and shaped, ready for a model.

    BYTES elements are ``str`` when they are UTF-8 text (JSON always sends text), else ``bytes``,
    so a model sees the same values whichever wire format the client chose.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` is its own binary-data wish (None: the request's default)."""

    name: str
    binary: Optional[bool] = None


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded V2 request; ``outputs`` is None when the client wants every output.

    ``binary_output`` is the request-wide wish for binary output data (the REST binary extension's
    ``binary_data_output``); gRPC and JSON-only clients leave it False.
    """

    id: Optional[str]
    inputs: tuple[Tensor, ...]
    parameters: dict
    outputs: Optional[tuple[RequestedOutput, ...]] = None
    binary_output: bool = False

    @property
    def requested_outputs(self) -> Optional[tuple[str, ...]]:
        """The names asked for, in the client's order; None for all."""
        return None if self.outputs is None else tuple(output.name for output in self.outputs)

    def wants_binary(self, name: str) -> bool:
        """Whether output ``name`` goes back as binary data (its own wish first, then the request's)."""
        for output in self.outputs or ():
            if output.name == name and output.binary is not None:
                return output.binary
        return self.binary_output


@dataclass(frozen=True)
class InferenceResult:
    """A model's answer to one request: the outputs to send, in the order to send them."""

    model_name: str
    model_version: Optional[str]
    request: InferenceRequest
    outputs: dict[str, np.ndarray]
    batch_size: int = 1
    #: V2 response parameters (an inference graph says which path the request took)
    parameters: dict = field(default_factory=dict)


def model_metadata(name: str, versions: list[str], platform: str, inputs: list[dict], outputs: list[dict]) -> dict:
    """The V2 model metadata body; tensors are trimmed to name/datatype/shape as the spec defines them."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [_metadata_tensor(t) for t in inputs],
        "outputs": [_metadata_tensor(t) for t in outputs],
    }


def _metadata_tensor(tensor: dict) -> dict:
    """A wrong datatype here is a model-config bug, so it fails loudly rather than reaching clients."""
    if tensor["datatype"] not in V2_DATATYPES:
        raise ValueError(f"tensor {tensor['name']!r} has datatype {tensor['datatype']!r}; "
                         f"use one of {', '.join(V2_DATATYPES)}")
    return {"name": tensor["name"], "datatype": tensor["datatype"], "shape": list(tensor["shape"])}
