import subprocess
import sys

import pytest

import lowbit
from lowbit import cli
from lowbit.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_mxfp4(capsys):
    code, out, _ = run(capsys, "info", "mxfp4")
    assert code == 0
    assert "bits per element  4.25" in out
    assert "32 elements" in out
    assert "E2M1, max 6" in out
    assert "(E8M0)" in out


def test_info_catalogue_lists_every_format(capsys):
    import lowbit
    code, out, _ = run(capsys, "info")
    assert code == 0 and all(f"`{name}`" in out for name in lowbit.list_formats())


def test_values_lists_every_code(capsys):
    code, out, _ = run(capsys, "values", "fp4_e2m1")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 17
    assert lines[-1].split() == ["0xf", "1|11|1", "-6"]


def test_encode_element_and_block(capsys):
    code, out, _ = run(capsys, "encode", "fp8_e4m3", "465", "-0.3")
    assert code == 0
    assert "0x7e  0|1111|110" in out and "0xaa  1|0101|010" in out and "-0.3125" in out
    code, out, _ = run(capsys, "encode", "mxfp4", "1", "2", "3", "-7")
    assert code == 0 and "scale codes: 0x7f" in out and "0x0f" in out


def test_errors_are_one_line(capsys):
    code, _, err = run(capsys, "info", "fp9")
    assert code == 2 and err.startswith("lowbit: error: argument FORMAT: unknown format 'fp9'")
    code, _, err = run(capsys, "encode", "int4", "nan")
    assert code == 2 and "has no NaN" in err


NESTED = "mx(" * 2000 + "e2m1" + ",32)" * 2000


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: command"),
    (["nope"], "argument command: invalid choice: 'nope'"),
    (["info", "fp9"], "argument FORMAT: unknown format 'fp9' (did you mean"),
    (["info", NESTED], "argument FORMAT: format 'mx(mx(mx("),
    (["info", "mx(e2m1,32"], "argument FORMAT: format 'mx(e2m1,32': unbalanced parentheses"),
    (["info", "mx(e2m1,x)"], "argument FORMAT: format 'mx(e2m1,x)': the block size must be a positive integer"),
    (["info", "mx(e2m1,100000000000)"], "argument FORMAT: format 'mx(e2m1,100000000000)': block_size must be"),
    (["values", "mxfp4"], "mxfp4 is a scaled format"),
    (["values", "fp32"], "at most 16 bits; fp32 has 32"),
    (["encode", "fp8_e4m3", "abc"], "argument VALUE: invalid float value: 'abc'"),
    (["encode", "fp8_e4m3", "1", "--rounding", "nearest"], "argument --rounding: invalid choice: 'nearest'"),
    (["encode", "fp8_e4m3", "1", "--overflow", "wrap"], "argument --overflow: invalid choice: 'wrap'"),
    (["encode", "mxfp4", "1", "--overflow", "inf"], "--overflow does not apply to scaled formats"),
    (["encode", "int4", "nan"], "nan cannot be encoded in int4"),
    (["bench", "--repeat", "0"], "argument --repeat: must be an int of at least 1, got '0'"),
    (["bench", "--sizes", "-1"], "argument --sizes: must be an int from 0 to 28, got '-1'"),
    (["bench", "--sizes", "40"], "argument --sizes: must be an int from 0 to 28, got '40'"),
    (["bench", "--sizes", "x"], "argument --sizes: must be an int from 0 to 28, got 'x'"),
    (["bench", "--formats", "int9999"], "argument --formats: format 'int9999': an IntFormat has 2..32 bits"),
    (["bench", "--reference-max", "1.5"], "argument --reference-max: must be an int from 0 to 28, got '1.5'"),
    (["bench", "--reference-max", "-3"], "argument --reference-max: must be an int from 0 to 28, got '-3'"),
    (["report", "--formats", "fp8_e4m3", "e4m3"], "formats lists fp8_e4m3 more than once"),
    (["report", "--rounding", "up", "up"], "roundings lists up more than once"),
    (["report", "--formats", "mx(e2m1,131072)"], "the report's error curves (one row per point) hold blocks of at most"),
    (["report", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_usage_errors_are_one_line_naming_the_argument(capsys, argv, message):
    """Exit status 2 and one line on stderr, no traceback; nothing is run."""
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("lowbit: error: ") and err.count("\n") == 1, err
    assert message in err


def test_format_names_nest_at_most_max_nesting_deep():
    from lowbit.formats.catalogue import MAX_NESTING

    ok = "mx(e2m1,32)"
    assert lowbit.get_format(ok).block_size == 32
    too_deep = "(" * MAX_NESTING + ok + ")" * MAX_NESTING
    with pytest.raises(ValueError, match=f"nests parentheses {MAX_NESTING + 1} deep; at most {MAX_NESTING}"):
        lowbit.get_format(too_deep)
    with pytest.raises(ValueError, match=r"format 'mx\(mx\(mx.*\(14004 characters\) nests parentheses 2000 deep"):
        lowbit.get_format(NESTED)


@pytest.mark.parametrize("name, error, message", [
    ("mx(e2m1,32", ValueError, "unbalanced parentheses"),
    ("mx(e2m1,32))", ValueError, "unbalanced parentheses"),
    ("mx()", ValueError, "mx takes an element format and a block size, as in mx\\(e2m1,32\\)"),
    ("mx(e2m1)", ValueError, "mx takes an element format and a block size"),
    ("mx(,32)", ValueError, "mx takes an element format and a block size"),
    ("mx(e2m1,32,4)", ValueError, "mx takes an element format and a block size"),
    ("mx(e2m1,3.5)", ValueError, "the block size must be a positive integer"),
    ("mx(e2m1,-4)", ValueError, "the block size must be a positive integer"),
    ("mx(e2m1,100000000000)", ValueError, "block_size must be a positive int of at most"),
    ("mx(e2m1," + "9" * 5000 + ")", ValueError, "a number of 5000 digits; numbers in a format name have at most 18"),
    ("int" + "9" * 5000, ValueError, "a number of 5000 digits"),
    ("mx(e2m1,32)x", ValueError, "unknown format .*a format is a name from lowbit.list_formats\\(\\) or one of eX"),
    ("foo(e2m1,32)", ValueError, "unknown format 'foo\\(e2m1,32\\)'"),
    ("", ValueError, "unknown format ''; a format is a name"),
    ("e0m3", ValueError, "format 'e0m3': exp_bits must be at least 1"),
    ("e40m3fnuz", ValueError, "format 'e40m3fnuz': a FloatFormat has 2..32 bits"),
    ("uint1", ValueError, "format 'uint1': an IntFormat has 2..32 bits"),
    ("mx(mxfp4,32)", TypeError, "format 'mx\\(mxfp4,32\\)': element must be an element format"),
])
def test_malformed_format_names(name, error, message):
    with pytest.raises(error, match=message):
        lowbit.get_format(name)


def test_spelled_out_names_still_parse():
    assert lowbit.get_format("MX( E2M1 , 16 )") == lowbit.get_format("mx(fp4_e2m1,16)")
    assert lowbit.get_format("mx(int8,32)").element == lowbit.get_format("int8")
    assert lowbit.get_format("e4m3fnuz").name == "fp8_e4m3fnuz" and lowbit.get_format("e3m4fnuz").bias == 4


def test_errors_of_the_work_itself_keep_their_traceback(capsys, monkeypatch):
    """Only the checks before the work are usage errors: a ValueError from
    the work is a bug and propagates."""
    def broken(*args):
        raise ValueError("a bug")

    monkeypatch.setattr(cli, "_print_values", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["values", "fp4_e2m1"])


def test_interrupt_exits_130_with_one_line(capsys, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_print_values", interrupted)
    code, _, err = run(capsys, "values", "fp4_e2m1")
    assert code == 130 and err == "lowbit: interrupted\n"


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "lowbit.cli", "info", "nvfp4"], capture_output=True, text=True, check=True)
    assert "E4M3" in out.stdout
