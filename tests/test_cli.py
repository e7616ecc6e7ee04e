import subprocess
import sys


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
    assert code == 2 and err.startswith("lowbit: error: unknown format 'fp9'")
    code, _, err = run(capsys, "encode", "int4", "nan")
    assert code == 2 and "has no NaN" in err


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "lowbit.cli", "info", "nvfp4"], capture_output=True, text=True, check=True)
    assert "E4M3" in out.stdout
