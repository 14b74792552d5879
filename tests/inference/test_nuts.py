"""The NUTS bridge: its Posterior, its traces, and clear errors for programs it cannot run."""

import math

import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl import factor, observe, program, sample
from ppl.distributions import Bernoulli


@program
def shifted(offset):
    x = sample("x", nd.Normal(0.0, 1.0))
    z = sample(nd.HalfNormal(1.0))  # an unnamed, constrained choice
    observe(nd.Normal(x + z, 1.0), offset)
    factor(-0.5 * x**2)
    return x + z


def test_posterior_fields_and_traces():
    post = ppl.nuts(shifted, 1.0, samples=200, warmup=100, seed=0)
    assert post.method == "nuts" and post.num_particles == 200
    assert post.log_evidence is None
    assert np.allclose(post.weights, 1 / 200)
    tr = post.traces[0]
    assert tr.addresses()[0] == "x" and tr.addresses()[1].startswith("shifted:")
    assert post.values[0] == pytest.approx(tr[0].value + tr[1].value, rel=1e-5)
    assert tr[1].value > 0  # the constrained choice stays in its support
    assert math.isfinite(tr.score)
    assert 0 < post.acceptance_rate <= 1
    assert "nuts" in post.summary()


def test_same_seed_same_draws():
    a = ppl.nuts(shifted, 1.0, samples=50, warmup=50, seed=3)
    b = ppl.nuts(shifted, 1.0, samples=50, warmup=50, seed=3)
    assert a.values == b.values


@program
def discrete():
    c = sample(Bernoulli(0.5))  # not continuous
    return c


def test_discrete_choice_is_a_clear_error():
    with pytest.raises(TypeError, match="continuous NumPyro") as info:
        ppl.nuts(discrete, samples=10, warmup=10, seed=0)
    assert "test_nuts.py" in str(info.value)


@program
def branches():
    x = sample("x", nd.Normal(0.0, 1.0))
    if x > 0:  # needs a concrete value
        return x
    return -x


def test_branching_on_a_choice_explains_why():
    with pytest.raises(TypeError) as info:
        ppl.nuts(branches, samples=10, warmup=10, seed=0)
    assert any("branching on a choice" in note for note in getattr(info.value, "__notes__", []))


def test_bad_arguments():
    with pytest.raises(ValueError, match="samples"):
        ppl.nuts(shifted, 1.0, samples=0)
    with pytest.raises(TypeError, match="@ppl.program"):
        ppl.nuts(lambda: 0)
