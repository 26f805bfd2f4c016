"""Fixtures for coach tests: a live scripted OpenAI-compatible server and sample requests."""
import pytest

from mappa_jax.coach.types import CoachRequest
from tests.coach.openai_test_server import OpenAITestServer


@pytest.fixture
def server():
  with OpenAITestServer() as s:
    yield s


def make_request(workflow="mathchat", role="Verifier", output="So the answer is \\boxed{42}.",
                 ground_truth="42", **kw) -> CoachRequest:
  defaults = dict(role_description="checks and states the final answer",
                  task="What is 6 * 7?", agent_input="<|im_start|>user\nWhat is 6 * 7?",
                  agent_output=output, ground_truth=ground_truth, task_type="mul_div")
  defaults.update(kw)
  return CoachRequest(workflow=workflow, role=role, **defaults)
