import pytest


@pytest.fixture(scope="session")
def embedded_lm():
    """The embedded SmolLM2-135M-Instruct, loaded once per test session (some 20-30 s)."""
    import ppl.models

    return ppl.models.load()
