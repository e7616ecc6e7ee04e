"""The model section of the report: the sweep of specs x methods and
layers on the tiny LM, its table, plot and CSV, resuming after an
interruption (Ctrl-C, or a killed run), and the command line."""

import copy
import csv
import re
import shutil

import pytest
import torch

from lowbit.analysis import model_sweep
from lowbit.analysis.model_report import plan_model
from lowbit.analysis.model_sweep import COLUMNS, parse_method, parse_spec, read_rows
from lowbit.analysis.model_tasks import ModelTask, model_task
from lowbit.analysis.report import ReportInterrupted, write_report
from lowbit.analysis.tiny_gpt import TINY_LM_SIZES, TinyGPT
from lowbit.cli import main
from lowbit.emulate import QuantSpec, quantize_model

from helpers import assert_readable_png

TOY = dict(formats=["mxfp4"], data=["normal"], size=256)


def toy_task(seed: int = 0) -> ModelTask:
    """A random-init TinyGPT of the tiny shape on random tokens: a model
    task that needs no training (seconds)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyGPT(TINY_LM_SIZES["tiny"]).eval()
        tokens = torch.randint(0, 256, (600,))
    return ModelTask("toy", model, "perplexity", tokens, [tokens[:256].view(4, 64)], window=64, description="a toy")


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_report_on_the_tiny_lm(tmp_path):
    """Perplexity rises as bits fall, GPTQ is at or below round to nearest
    at 4 bits, and every file of the section is written."""
    text = write_report(tmp_path, **TOY, model="tiny-lm:tiny", model_specs=["mxfp8_e4m3", "mxfp4", "mx4"],
                        methods=["rtn", "gptq"], model_tokens=4096).read_text()
    rows = {(r["spec"], r["method"]): float(r["perplexity"]) for r in csv_rows(tmp_path / "model_results.csv")
            if r["kind"] in ("full", "grid")}
    full = rows[("full precision", "none")]
    assert rows[("mxfp8_e4m3", "rtn")] == pytest.approx(full, rel=1e-3)  # 8 bits may land a hair either side
    assert rows[("mxfp8_e4m3", "rtn")] < rows[("mxfp4", "rtn")] < rows[("mx4", "rtn")]
    assert rows[("mxfp4", "gptq")] <= rows[("mxfp4", "rtn")] and rows[("mx4", "gptq")] <= rows[("mx4", "rtn")]
    layers = [r for r in csv_rows(tmp_path / "model_results.csv") if r["kind"] == "layer"]
    assert [r["layer"] for r in layers] == [n for n, m in TinyGPT(TINY_LM_SIZES["tiny"]).named_modules()
                                          if isinstance(m, torch.nn.Linear)]
    assert {r["spec"] for r in layers} == {"mx4"}  # the spec with the fewest bits
    assert "## The model: quality under each format and method" in text
    assert "### Layer sensitivity: each layer alone in mx4" in text
    assert "--model tiny-lm:tiny --model-specs mxfp8_e4m3 mxfp4 mx4 --model-tokens 4096" in text
    assert "partial" not in text.lower()
    for name in ("model_quality_vs_bits.png", "model_layer_sensitivity.png", "layer_sensitivity_weights.png",
                 "layer_sensitivity_activations.png"):
        assert_readable_png(tmp_path / name)


def test_bits_per_weight_and_per_parameter():
    task = toy_task()
    row = model_sweep.measure_cell(task, model_sweep.Cell("grid", "mxfp4", "rtn"))
    linear = [m.weight.numel() for m in task.model.modules() if isinstance(m, torch.nn.Linear)]
    total = sum(p.numel() for p in task.model.parameters())
    assert row["weight_bits"] == 4.25
    assert row["bits_per_parameter"] == pytest.approx((4.25 * sum(linear) + 32 * (total - sum(linear))) / total)


def test_an_interrupted_sweep_leaves_a_partial_report_and_resumes(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    write_report(whole, **TOY, model=toy_task(), model_specs=["mxfp4", "nvfp4"], sensitivity=None)
    out = tmp_path / "out"
    measure, calls, interrupts = model_sweep.measure_cell, [], [3]

    def interrupted_at_the_third(task, cell):
        calls.append(cell)
        if len(calls) in interrupts:
            interrupts.clear()  # once: Ctrl-C
            raise KeyboardInterrupt
        return measure(task, cell)

    monkeypatch.setattr(model_sweep, "measure_cell", interrupted_at_the_third)
    with pytest.raises(ReportInterrupted, match="partial report .* \\(2 of 5 model cells\\)"):
        write_report(out, **TOY, model=toy_task(), model_specs=["mxfp4", "nvfp4"], sensitivity=None)
    text = (out / "report.md").read_text()
    assert "**This report is partial:** interrupted after 2 of 5 model cells" in text
    assert f"--out {out}` to finish it" in text
    assert len(read_rows(out / "model_results.csv")) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder is left

    calls.clear()
    write_report(out, **TOY, model=toy_task(), model_specs=["mxfp4", "nvfp4"], sensitivity=None)
    assert [c.label for c in calls] == ["mxfp4 gptq", "nvfp4 rtn", "nvfp4 gptq"]  # only the cells left
    assert csv_rows(out / "model_results.csv") == csv_rows(whole / "model_results.csv")
    assert "partial" not in (out / "report.md").read_text().lower()


def test_a_killed_run_leaves_rows_the_next_run_takes(tmp_path, monkeypatch):
    """A run killed outright (no Ctrl-C handling) leaves its partial folder
    with the rows it finished; the next run takes them and removes it."""
    out = tmp_path / "out"
    write_report(out, **TOY, model=toy_task(), model_specs=["mxfp4"], methods=["rtn"], sensitivity=None)
    killed = tmp_path / ".out.partial-0badf00d"
    killed.mkdir()
    shutil.copy(out / "model_results.csv", killed / "model_results.csv")
    (out / "model_results.csv").unlink()
    with open(killed / "model_results.csv", "a") as f:
        f.write("torn,line")  # the row being written when the run was killed
    monkeypatch.setattr(model_sweep, "measure_cell", lambda task, cell: pytest.fail(f"measured {cell.label}"))
    write_report(out, **TOY, model=toy_task(), model_specs=["mxfp4"], methods=["rtn"], sensitivity=None)
    assert len(read_rows(out / "model_results.csv")) == 2
    assert not killed.exists()


def test_rows_of_another_run_are_measured_again(tmp_path, monkeypatch):
    write_report(tmp_path, **TOY, model=toy_task(seed=0), model_specs=["mxfp4"], methods=["rtn"], sensitivity=None)
    first = read_rows(tmp_path / "model_results.csv")
    write_report(tmp_path, **TOY, model=toy_task(seed=1), model_specs=["mxfp4"], methods=["rtn"], sensitivity=None)
    second = read_rows(tmp_path / "model_results.csv")
    assert first[0]["run"] != second[0]["run"] and first[0]["perplexity"] != second[0]["perplexity"]


def test_a_fidelity_task_and_its_warnings(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    batches = [torch.randn(4, 16) for _ in range(3)]
    task = ModelTask("mlp", net, "fidelity", batches, batches, description="an MLP")
    text = write_report(tmp_path, **TOY, model=task, model_specs=["mxfp4/mxfp8_e4m3"], methods=["rtn", "gptq"],
                        sensitivity="mxfp4").read_text()
    rows = read_rows(tmp_path / "model_results.csv")
    assert [r["spec"] for r in rows] == ["full precision", "mxfp4/mxfp8_e4m3", "mxfp4/mxfp8_e4m3", "mxfp4", "mxfp4"]
    assert rows[0]["cosine_similarity"] == 1.0 and rows[0]["kl_divergence"] == 0.0
    assert all(0.9 < r["cosine_similarity"] < 1 for r in rows[1:])
    assert "### Cosine similarity by spec and method" in text
    assert "### What the settings warned" in text and "fewer calibration rows" in text  # GPTQ's warning
    again = write_report(tmp_path, **TOY, model=task, model_specs=["mxfp4/mxfp8_e4m3"], methods=["rtn", "gptq"],
                         sensitivity="mxfp4").read_text()
    assert again == text  # every cell kept from the first run, and what they warned with them


def test_a_cnn_and_a_transformer_count_every_weight_they_round(tmp_path):
    """Convolutions and attention are rounded by quantize_model: their
    weights count in the bits and each is a layer of the sensitivity."""
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 10))
    images = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    task = ModelTask("cnn", cnn, "fidelity", images, images)
    assert model_sweep.weighted_layers(task, parse_spec("mxfp4")) == ["0", "2", "4"]
    row = model_sweep.measure_cell(task, model_sweep.Cell("grid", "mxfp4", "rtn"))
    weights = sum(m.weight.numel() for m in cnn if hasattr(m, "weight"))
    total = sum(p.numel() for p in cnn.parameters())
    assert row["weight_bits"] == 4.25 and row["bits_per_parameter"] == pytest.approx(
        (4.25 * weights + 32 * (total - weights)) / total)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    task = ModelTask("encoder", layer, "fidelity", [torch.randn(2, 5, 32)], [torch.randn(2, 5, 32)])
    assert model_sweep.weighted_layers(task, parse_spec("mxfp4")) == ["self_attn", "linear1", "linear2"]
    with pytest.warns(UserWarning):  # quantize_model's note on out_proj, which the attention module rounds itself
        bits, per_parameter = model_sweep.storage_bits(quantize_model(copy.deepcopy(layer), parse_spec("mxfp4")))
    matrices = sum(p.numel() for p in layer.parameters() if p.dim() >= 2)  # in_proj, out_proj, linear1, linear2
    total = sum(p.numel() for p in layer.parameters())
    assert bits == 4.25 and per_parameter == pytest.approx((4.25 * matrices + 32 * (total - matrices)) / total)


def test_a_transformers_folder_without_a_tokenizer_is_measured_by_fidelity(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=300, n_positions=64)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    task = model_task(tmp_path / "gpt2", tokens=256)
    assert task.metric == "fidelity" and task.quality == "kl_divergence" and "no tokenizer" in task.description
    assert all(b.max() < 300 for b in task.evaluation)
    text = write_report(tmp_path / "out", **TOY, model=tmp_path / "gpt2", model_specs=["mxfp4"], methods=["rtn"],
                        sensitivity=None).read_text()
    assert "### KL divergence by spec and method" in text


def test_a_transformers_folder_with_its_tokenizer_is_measured_by_perplexity(tmp_path):
    """A byte-level BPE tokenizer trained here on the documentation text
    (the tokenizers library, offline) beside a random-init GPT-2."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from lowbit.analysis.tiny_gpt import python_docs_split

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=320, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([python_docs_split("train")[:50000]], trainer)
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe).save_pretrained(tmp_path / "gpt2")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=bpe.get_vocab_size(), n_positions=64,
                                     bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    task = model_task(tmp_path / "gpt2", tokens=512)
    assert task.metric == "perplexity" and task.window == 64 and len(task.evaluation) == 512
    expected = bpe.encode(python_docs_split("held_out")).ids[:512]
    assert task.evaluation.tolist() == expected
    text = write_report(tmp_path / "out", **TOY, model=tmp_path / "gpt2", model_specs=["mxfp4"], methods=["rtn"],
                        sensitivity=None).read_text()
    assert "### Perplexity by spec and method" in text


@pytest.mark.parametrize("text, match", [
    ("mxfp4/", "write WEIGHT or WEIGHT/INPUT"), ("a/b/c", "write WEIGHT"), ("mxfp44", "mxfp44")])
def test_bad_specs(text, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(text)


def test_specs_and_methods_parse():
    assert parse_spec("mxfp4/mxfp8_e4m3") == QuantSpec(weight="mxfp4", input="mxfp8_e4m3")
    assert parse_method("rotate+gptq") == [model_sweep.METHODS["rotate"], model_sweep.METHODS["gptq"]]
    with pytest.raises(ValueError, match="unknown 'gpt'; choose from rtn, gptq"):
        parse_method("rotate+gpt")
    from lowbit.analysis.defaults import METHOD_NAMES

    assert tuple(model_sweep.METHODS) == METHOD_NAMES


def test_plan_checks_before_any_work():
    with pytest.raises(ValueError, match="model specs lists mxfp4 more than once"):
        plan_model(toy_task(), ["mxfp4", "mxfp4"], ["rtn"])
    with pytest.raises(ValueError, match="methods is empty"):
        plan_model(toy_task(), ["mxfp4"], [])
    with pytest.raises(ValueError, match="neither tiny-lm"):
        model_task("gpt-17")
    with pytest.raises(ValueError, match="the tiny LM comes in sizes small, tiny"):
        model_task("tiny-lm:huge")
    with pytest.raises(ValueError, match="sensitivity 'bogus' is not a spec .*'auto' or None"):
        plan_model(toy_task(), ["mxfp4"], ["rtn"], sensitivity="bogus")


def test_the_command_line(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path), "--quiet", "--formats", "mxfp4", "--data", "normal", "--size",
                 "256", "--model", "tiny-lm:tiny", "--model-specs", "mxfp4", "--methods", "rtn",
                 "--sensitivity", "none", "--model-tokens", "1024"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert re.search(r"\| mxfp4 \| rtn \| 4\.25 \|", text) and "Layer sensitivity" not in text
    assert "--model-specs mxfp4 --methods rtn --sensitivity none --model-tokens 1024" in text
    assert main(["report", "--out", str(tmp_path / "x"), "--model", "tiny-lm:tiny", "--model-specs", "mxfp4/"]) == 2
    assert "lowbit: error: model spec 'mxfp4/'" in capsys.readouterr().err


def test_the_csv_columns():
    assert COLUMNS[:5] == ("run", "kind", "spec", "method", "layer") and COLUMNS[-1] == "warnings"


def _journal_rows(out):
    partial = [p / "model_results.csv" for p in out.parent.glob(f".{out.name}.partial-*")]
    return max((len(read_rows(p)) for p in partial if p.exists()), default=0)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_a_real_interruption_of_the_command(tmp_path, signal_name):
    """``lowbit report`` stopped by Ctrl-C (SIGINT: exit 130, a partial
    report in place) or killed outright (SIGKILL: its journal left beside
    the folder), then run again: the second run finishes the sweep from
    the rows the first one finished."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    command = [sys.executable, "-m", "lowbit.cli", "report", "--out", str(out), "--formats", "mxfp4", "--data",
               "normal", "--size", "256", "--model", "tiny-lm:tiny", "--model-specs", "mxfp8_e4m3", "mxfp4",
               "--methods", "rtn", "--model-tokens", "2048"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while _journal_rows(out) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, f"the report ended before it could be interrupted: {first.communicate()}"
    os.kill(first.pid, getattr(signal, signal_name))
    _, err = first.communicate(timeout=120)
    if signal_name == "SIGINT":
        assert first.returncode == 130 and "wrote a partial report" in err
        assert "**This report is partial:**" in (out / "report.md").read_text()
        kept = len(read_rows(out / "model_results.csv"))
    else:
        assert first.returncode == -signal.SIGKILL and not out.exists()
        kept = _journal_rows(out)
    assert 3 <= kept < 17  # the full model, 2 settings, 13 layers: 16 cells
    second = subprocess.run(command + ["--quiet"], capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr
    rows = read_rows(out / "model_results.csv")
    assert len(rows) == 16 and "partial" not in (out / "report.md").read_text().lower()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_model_path_that_is_no_model_says_why(tmp_path, capsys):
    script = tmp_path / "script.py"
    script.write_text("print('hello')\n")
    for path, message in ((tmp_path, "is a folder without config.json"),
                          (script, "torch.load\\(weights_only=True\\) refused it")):
        assert main(["report", "--out", str(tmp_path / "out"), "--model", str(path)]) == 2
        assert re.search(message, capsys.readouterr().err)
