"""The one V2 datatype table: every datatype maps to a numpy dtype and back, and sizes follow from it."""
from __future__ import annotations

import numpy as np
import pytest

from modelpool.deployments.datatypes import FIXED_SIZE_DATATYPES, V2_DATATYPES, byte_size, datatype_of, numpy_dtype


@pytest.mark.parametrize("datatype", list(V2_DATATYPES))
def test_every_datatype_round_trips_through_numpy(datatype):
    dtype = numpy_dtype(datatype)
    assert datatype_of(np.zeros(2, dtype=dtype).dtype, "out") == datatype


def test_byte_order_does_not_change_the_datatype_of_an_output():
    assert datatype_of(np.dtype(">f4"), "out") == "FP32" and datatype_of(np.dtype("<i8"), "out") == "INT64"


def test_text_outputs_are_bytes_and_unknown_names_have_no_dtype():
    assert datatype_of(np.array(["a", "bc"]).dtype, "out") == "BYTES"
    assert numpy_dtype("fp32") is None and numpy_dtype("FLOAT") is None
    assert "BYTES" not in FIXED_SIZE_DATATYPES and len(FIXED_SIZE_DATATYPES) == len(V2_DATATYPES) - 1


def test_an_output_v2_cannot_carry_names_the_datatypes_to_cast_to():
    with pytest.raises(TypeError, match="output 'z' has numpy dtype complex128.*BOOL, UINT8"):
        datatype_of(np.dtype(np.complex128), "z")


def test_sizes_follow_from_the_table():
    assert byte_size("FP16", (3, 2)) == 12 and byte_size("BOOL", (5,)) == 5 and byte_size("BYTES", (4,)) == -1
