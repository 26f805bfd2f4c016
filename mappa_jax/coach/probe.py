"""Check a coach setup: send one sample action, print the prompt, the raw reply and the verdict.

  python -m mappa_jax.coach.probe --base_url=http://127.0.0.1:30000/v1 --model=my-judge \
      [--api_key_env=OPENAI_API_KEY] [--workflow=mathchat|dsbench]

Exit status: 0 scored, 1 invalid verdict, 2 the endpoint could not be used.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from mappa_jax.coach.config import CoachConfig
from mappa_jax.coach.openai_coach import CoachConfigError, CoachUnavailableError, OpenAICoach
from mappa_jax.coach.types import CoachRequest

_SAMPLES = {
    "mathchat": CoachRequest(
        workflow="mathchat", role="Verifier",
        role_description="Final agent: weighs the Code Executor's work and states the answer.",
        task="What is 17 * 23 - 100? Put your final answer in \\boxed{}.",
        agent_input=("## Problem\nWhat is 17 * 23 - 100?\n\n## Input from Code Executor\n"
                     "```python\nprint(17 * 23 - 100)\n```\n<tool_response>\n291\n"
                     "</tool_response>"),
        agent_output=("The executor computed 17 * 23 = 391 and subtracted 100, printing 291. "
                      "Checking by hand: 17 * 23 = 340 + 51 = 391; 391 - 100 = 291.\n"
                      "**\\boxed{291}**"),
        ground_truth="291", task_type="probe"),
    "dsbench": CoachRequest(
        workflow="dsbench", role="analyst",
        role_description="Loads model.pkl and X_test.pkl, predicts, writes submission.csv.",
        task="Predict whether a passenger survived (binary). Metric: accuracy.",
        agent_input="Files: train.csv, test.csv, X_test.pkl, model.pkl",
        agent_output=("```python\nimport pickle, pandas as pd\nm = pickle.load(open('model.pkl',"
                      "'rb'))\nX = pd.read_pickle('X_test.pkl')\nids = pd.read_csv('test.csv')"
                      "['PassengerId']\npd.DataFrame({'PassengerId': ids, 'Survived': "
                      "m.predict(X)}).to_csv('submission.csv', index=False)\nprint('ok')\n```"),
        tool_observation="ok",
        workspace_files=("train.csv", "test.csv", "X_train.pkl", "y_train.pkl", "X_test.pkl",
                         "model.pkl"),
        upstream_files=(("Data Engineer", ("X_train.pkl", "y_train.pkl", "X_test.pkl")),
                        ("Modeler", ("model.pkl",))),
        ground_truth="type: classification; accuracy: 0.81; predictions: 418",
        task_type="classification",
        signals={"code_blocks": 1, "tool_errors": 0, "submission_valid": True,
                 "metric_name": "accuracy", "metric_value": 0.81}),
}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mappa_jax.coach.probe",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--base_url", required=True)
  parser.add_argument("--model", required=True)
  parser.add_argument("--api_key_env", default="OPENAI_API_KEY",
                      help="environment variable with the key ('' for a keyless server)")
  parser.add_argument("--workflow", default="mathchat", choices=sorted(_SAMPLES))
  parser.add_argument("--timeout_s", type=float, default=120.0)
  parser.add_argument("--max_retries", type=int, default=2)
  parser.add_argument("--temperature", type=float, default=0.0)
  parser.add_argument("--max_tokens", type=int, default=None)
  args = parser.parse_args(argv)

  coach = OpenAICoach(CoachConfig(
      kind="openai", base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
      timeout_s=args.timeout_s, max_retries=args.max_retries, backoff_base_s=0.5,
      temperature=args.temperature, max_output_tokens=args.max_tokens,
      circuit_breaker_failures=args.max_retries + 2, circuit_breaker_min_s=0.0))
  request = _SAMPLES[args.workflow]
  print("=== RENDERED PROMPT ===")
  print(coach.render(request).text)

  async def run():
    try:
      return await coach.score(request)
    finally:
      await coach.aclose()

  try:
    result = asyncio.run(run())
  except (CoachConfigError, CoachUnavailableError) as e:
    print(f"=== ERROR ===\n{e}")
    return 2
  print("=== RAW RESPONSE ===")
  print(result.raw_response or "(none)")
  print("=== PARSED RESULT ===")
  for field in ("status", "score", "answer_correct", "reason", "reasked", "attempts",
                "template_hash", "coach_name", "latency_s", "tokens_in", "tokens_out"):
    print(f"{field}: {getattr(result, field)}")
  return 0 if result.is_scored else 1


if __name__ == "__main__":
  sys.exit(main())
