"""Fixtures of the sampler/pool tests (the model builder lives in latent_fixtures.py)."""

import pytest

from tests.rollouts.latent_fixtures import QUESTIONS, make_latent_model


@pytest.fixture
def latent_model():
    return make_latent_model


@pytest.fixture
def questions():
    return list(QUESTIONS)
