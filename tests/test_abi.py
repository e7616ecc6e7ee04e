"""One kernel ABI: the numbers the numba kernels and the CUDA headers read
come from lowbit.formats.abi, and cuda/abi.h is what it generates."""

import pathlib
import re

import numpy as np
import pytest

import lowbit
from lowbit.formats import OVERFLOW_POLICIES, ROUNDING_MODES, abi
from lowbit.formats.block_format import POWER_OF_TWO_RULES

ROOT = pathlib.Path(__file__).resolve().parents[1]
CUDA = ROOT / "cuda"


def test_cuda_abi_header_is_generated_from_the_enums():
    assert (CUDA / "abi.h").read_text() == abi.header(), (
        "cuda/abi.h is stale: regenerate it with lowbit.formats.abi.header() (see the file's first lines)")


def test_the_header_has_every_member_with_its_number():
    text = (CUDA / "abi.h").read_text()
    for enum_type in abi.ENUMS:
        body = re.search(rf"enum {enum_type.__name__} {{(.*?)}};", text, flags=re.S).group(1)
        pairs = dict(re.findall(r"(\w+) = (-?\d+)", body))
        assert {name: int(value) for name, value in pairs.items()} == {
            name: int(member) for name, member in enum_type.__members__.items()}


def test_no_other_source_numbers_the_abi():
    """The kernels' sources define no enum of their own that the ABI owns,
    nor an enumerator with an ABI member's name."""
    owned = {name for enum_type in abi.ENUMS for name in enum_type.__members__}
    for path in sorted(CUDA.iterdir()):
        if path.name == "abi.h":
            continue
        for name, body in re.findall(r"enum\s+(?:class\s+)?(\w+)\s*(?::\s*\w+\s*)?{(.*?)}", path.read_text(), re.S):
            assert name not in {e.__name__ for e in abi.ENUMS}, f"{path.name} defines enum {name}"
            assert not owned & set(re.findall(r"(\w+)\s*=", body)), f"{path.name}'s enum {name} renumbers the ABI"


def test_the_enums_name_the_public_policies_in_order():
    assert set(abi.ROUNDINGS) <= set(ROUNDING_MODES)  # the reference runs the others
    assert abi.OVERFLOWS == OVERFLOW_POLICIES
    assert abi.SCALE_RULES == (*POWER_OF_TWO_RULES, "amax", "mse", "4over6", "minmax")
    with pytest.raises(ValueError, match="the kernels implement rounding"):
        abi.rounding_code("half_down")


def test_plain_int_constants_mirror_the_enums():
    """The numba kernels index with literal ints: the module's constants are the enum members' numbers."""
    for enum_type in abi.ENUMS:
        for name, member in enum_type.__members__.items():
            assert type(getattr(abi, name)) is int and getattr(abi, name) == int(member)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "bf16", "e8m0", "fp8_e4m3fnuz", "p3109_8p3", "int8",
                                  "uint4"])
def test_element_descriptors_read_public_properties(name):
    fmt = lowbit.get_format(name)
    d = abi.element_descriptor(fmt)
    assert len(d) == abi.ElementField.ELEMENT_FIELDS
    if d[abi.ElementField.IS_INT]:
        assert (d[abi.ElementField.INT_BITS], d[abi.ElementField.QMIN], d[abi.ElementField.QMAX]) == (
            fmt.bits, fmt.qmin, fmt.qmax)
        return
    assert d[abi.ElementField.SIGN_CODE] == fmt.sign_code and d[abi.ElementField.MAG_BITS] == fmt.magnitude_bits
    assert d[abi.ElementField.BIAS] == fmt.bias and d[abi.ElementField.MAX_CODE] == fmt.max_code
    nan = (d[abi.ElementField.NAN_POSITIVE], d[abi.ElementField.NAN_NEGATIVE])
    assert nan == (fmt.nan_codes or (-1, -1))
    if fmt.nan_codes:  # the codes NaN encodes to decode to NaN
        assert np.isnan(fmt.decode(np.array(fmt.nan_codes))).all()


def test_block_and_microexponent_parameters_have_their_fields():
    assert len(abi.block_params(lowbit.get_format("nvfp4"), "amax", 0.5)) == abi.BlockField.BLOCK_FIELDS
    assert len(abi.microexponent_params(lowbit.get_format("mx6"))) == abi.MicroField.MICRO_FIELDS
