import os

import pytest
from hypothesis import HealthCheck, settings

from lowbit.formats import base

# the backend fixture is function-scoped but fixed for a whole test, so
# hypothesis may share it across examples
_shared = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=200, derandomize=True, **_shared)
settings.register_profile("dev", max_examples=100, **_shared)
settings.register_profile("thorough", max_examples=2000, **_shared)
settings.load_profile(os.environ.get("LOWBIT_HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(params=["cpu", "reference"])
def each_backend(request, monkeypatch):
    """Run a test with backend=None meaning the given backend for CPU data
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("each_backend")``)."""
    monkeypatch.setattr(base, "CPU_DEFAULT", request.param)
    return request.param
