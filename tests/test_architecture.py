"""The layout and the contracts of docs/architecture.md: the repository
root imports cleanly, the layers point one way with no import circles, every
backend keeps one contract, and formats compare by value."""

import ast
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

import lowbit
from lowbit.formats import FloatFormat, Policy, abi, backends

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: import name of each Python component folder
PACKAGES = {"lowbit": ROOT / "lowbit", "lowbit.formats": ROOT / "formats", "lowbit.emulate": ROOT / "emulate",
            "lowbit.analysis": ROOT / "analysis"}


def test_torch_and_lowbit_import_from_the_repository_root():
    """The root cuda/ is no Python package: it cannot shadow NVIDIA's
    cuda-python (``cuda.bindings``), which torch imports at load."""
    result = subprocess.run([sys.executable, "-c", "import torch, numpy, lowbit; print(lowbit.backends())"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not (ROOT / "cuda" / "__init__.py").exists()
    assert not list((ROOT / "cuda").glob("*.py")), "cuda/ holds the extension's sources only"


def test_every_python_package_folder_ships_in_the_wheel():
    """setuptools' explicit ``packages`` list must name every folder with an
    ``__init__.py``: one left out works in an editable install and is missing
    from a built wheel (as ``lowbit.emulate.methods`` once was)."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {ROOT / folder: name for name, folder in config["package-dir"].items()}
    expected = set()
    for folder, name in folders.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            expected.add(".".join((name, *relative)))
    missing = expected - set(config["packages"])
    assert not missing, f"pyproject.toml's [tool.setuptools] packages lacks {sorted(missing)}"


def test_lowbit_lists_its_backends():
    assert set(lowbit.backends()) >= {"reference", "cpu", "cuda", "cuda_host", "cuda_emulated"}
    assert lowbit.backends()[0] == "reference"


def module_name(path: pathlib.Path) -> str:
    for package, folder in PACKAGES.items():
        if folder in path.parents:
            parts = path.relative_to(folder).with_suffix("").parts
            return ".".join((package, *parts)).removesuffix(".__init__")
    raise AssertionError(path)


def imports_of(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The project modules a file imports anywhere (functions included),
    except under ``if TYPE_CHECKING:``; ``from package import module``
    imports the module (the package is its parent, loaded first anyway)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    skipped = {id(node) for top in ast.walk(tree) if isinstance(top, ast.If)
               and getattr(top.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(top)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found |= submodules if len(submodules) == len(node.names) else {base} | submodules
    return found


def project_graph() -> dict[str, set[str]]:
    files = [p for folder in PACKAGES.values() for p in folder.rglob("*.py")]
    names = {module_name(p) for p in files}
    return {module_name(p): {m for m in imports_of(p, names) if m in names and m != module_name(p)} for p in files}


def test_no_import_circles():
    graph = project_graph()
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("layer,forbidden", [
    ("lowbit.formats", ("lowbit.emulate", "lowbit.analysis", "lowbit.cuda", "lowbit.cli", "lowbit.bench")),
    ("lowbit.cuda", ("lowbit.emulate", "lowbit.analysis")),
    ("lowbit.emulate", ("lowbit.analysis", "lowbit.cuda")),
])
def test_arrows_point_down(layer, forbidden):
    for module, targets in project_graph().items():
        if module == layer or module.startswith(layer + "."):
            up = sorted(t for t in targets if t.startswith(forbidden))
            assert not up, f"{module} imports {up}"


def test_the_formats_core_names_its_kernel_backends_only_lazily():
    core = [m for m in project_graph() if m.startswith("lowbit.formats.") and not m.startswith("lowbit.formats.cpu")]
    for module in core:
        assert not any(t.startswith("lowbit.formats.cpu") for t in project_graph()[module]), module


def test_importing_lowbit_imports_neither_emulate_nor_a_kernel_module():
    code = ("import sys, lowbit; print(sorted(m for m in sys.modules if m.startswith(('lowbit.emulate', "
            "'lowbit.formats.cpu', 'lowbit.analysis'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_shipped_code_does_not_patch_itself():
    for folder in PACKAGES.values():
        for path in folder.rglob("*.py"):
            assert "unittest" not in path.read_text(), f"{path} uses unittest (mock) in shipped code"


# -- the backend contract ---------------------------------------------------------------------------
def test_every_backend_keeps_the_contract():
    for name in lowbit.backends():
        try:
            backend = backends.get(name)
        except backends.BackendUnavailable:
            continue
        assert backend.name == name and isinstance(backend.device_type, str)
        for op in ("quantize", "encode", "decode"):
            assert callable(getattr(backend.elements, op)) and callable(getattr(backend.scaled, op))
        assert callable(backend.scaled.tensor_scale) and callable(backend.matmul)
        assert backend.supports(lowbit.get_format("mxfp4"), "quantize", Policy())


class HalfwayUpFormat(FloatFormat):
    """A family the kernels do not know (a subclass may change the math):
    rounds ties away from zero whatever the mode asks."""

    def encode_exact(self, x64, rounder, overflow):
        from lowbit.formats.rounding import Rounder

        return super().encode_exact(x64, Rounder("nearest_away", rounder.negative), overflow)


def test_a_new_family_lands_on_the_reference_and_the_default_path_keeps_working():
    fmt = HalfwayUpFormat(4, 3, specials="fn", name="halfway_up_e4m3")
    x = np.float32([0.5 + 2 ** -5, 1.0, -3.125])  # the first and the last are ties
    assert backends.resolve(None, "cpu", fmt, "quantize", Policy()).name == "reference"
    assert list(fmt.quantize(x)) == [0.5625, 1.0, -3.25]
    assert list(lowbit.get_format("fp8_e4m3").quantize(x)) == [0.5, 1.0, -3.0]
    with pytest.raises(ValueError, match="backend='cpu' does not quantize halfway_up_e4m3: the kernels implement the "
                                         "families FloatFormat, .*, not HalfwayUpFormat"):
        fmt.quantize(x, backend="cpu")
    with pytest.raises(ValueError, match="BlockFormats with FloatFormat or IntFormat elements, not HalfwayUpFormat"):
        lowbit.BlockFormat(fmt, 32).quantize(x, backend="cpu")


def test_rounding_policies_are_checked_against_what_the_kernels_take():
    fmt = lowbit.get_format("mxfp4")
    limited = Policy(rounding="stochastic", key=1, sr_bits=8)
    assert backends.resolve(None, "cpu", fmt, "quantize", limited).name == "cpu"  # the kernels take sr_bits
    assert abi.undescribable(fmt, limited) is None
    assert backends.resolve(None, "cpu", fmt, "quantize", Policy(rounding="odd")).name == "cpu"
    with pytest.raises(ValueError, match="the kernels implement rounding nearest_even, .*, not 'half_down'"):
        backends.resolve("cpu", "cpu", fmt, "quantize", Policy(rounding="half_down"))


# -- values compare by value ------------------------------------------------------------------------
def test_formats_with_the_same_parameters_are_equal_whatever_their_name():
    catalogued = lowbit.get_format("fp8_e4m3")
    built = FloatFormat(4, 3, specials="fn")
    assert built == catalogued and hash(built) == hash(catalogued) and built.name != catalogued.name
    assert backends.resolve(None, "cpu", built, "quantize", Policy()).name == "cpu"
    x = torch.randn(4096, generator=torch.Generator().manual_seed(1)) * 100
    assert torch.equal(built.quantize(x), catalogued.quantize(x))
    codes = catalogued.encode(x)
    assert torch.equal(built.decode(codes), catalogued.decode(codes))
    mxfp4 = lowbit.get_format("mxfp4")
    mine = lowbit.BlockFormat(FloatFormat(2, 1, specials="none"), 32)
    assert mine == mxfp4
    encoded = mxfp4.encode(x)
    assert torch.equal(mine.decode(encoded), mxfp4.decode(encoded)) and mine.encode(x) == encoded
