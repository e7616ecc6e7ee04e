import os

import pytest
from hypothesis import HealthCheck, settings

from lowbit.formats import backends

#: the CUDA extension built for CPU data (registered by lowbit.cuda), so that
#: every formats test checks it without a GPU: its math in host loops
#: ("cuda_host"), and its .cu kernels run thread after thread ("cuda_emulated")
CPU_BUILDS_OF_CUDA = ("cuda_host", "cuda_emulated")

# the backend fixture is function-scoped but fixed for a whole test, so
# hypothesis may share it across examples
_shared = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=200, derandomize=True, **_shared)
settings.register_profile("dev", max_examples=100, **_shared)
settings.register_profile("thorough", max_examples=2000, **_shared)
settings.load_profile(os.environ.get("LOWBIT_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(params=["cpu", "reference", *CPU_BUILDS_OF_CUDA])
def each_backend(request, monkeypatch):
    """Run a test with backend=None meaning the given backend for CPU data
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("each_backend")``).
    The CPU builds of the CUDA extension need a C++ compiler and ninja
    (tests/test_cuda_build.py checks that they build where those exist)."""
    if request.param in CPU_BUILDS_OF_CUDA:
        try:
            backends.get("cuda_host")
        except backends.BackendUnavailable as why:
            pytest.skip(str(why))
    monkeypatch.setitem(backends.defaults, "cpu", request.param)
    return request.param


@pytest.fixture(scope="session", autouse=True)
def lowbit_cache(tmp_path_factory):
    """The tiny LM's weights go to a cache of the test session's own, not
    the user's: trained once per session (seconds for the "tiny" size)."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("lowbit-cache")
        patch.setenv("LOWBIT_CACHE_DIR", str(path))
        yield path
