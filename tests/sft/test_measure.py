"""dsbench_file_rates: the hand-off rates read back from a run's eval trajectory files, written
with the real record writer, separating a forgotten X_test.pkl from a Data Engineer that crashed."""
import os

from mappa_jax.sft import measure
from mappa_jax.workflows import records

ALL_FILES = ("X_train.pkl", "y_train.pkl", "X_test.pkl", "model.pkl", "submission.csv")


def _trajectory(index: int, de_calls: list[records.ToolCall], files: tuple[str, ...],
                valid: bool, error: str = "") -> records.Trajectory:
  actions = [records.Action("data_engineer", 0, [1], [2], [-0.1], "stop", tool_calls=de_calls),
             records.Action("data_engineer", 1, [1], [2], [-0.1], "stop"),
             # A later agent's successful code must not count as the Data Engineer's.
             records.Action("analyst", 0, [1], [2], [-0.1], "stop",
                            tool_calls=[records.ToolCall("print(1)", exit_code=0)])]
  return records.Trajectory(
      "task", index, "classification", actions, outcome={"valid": valid}, error=error,
      metadata={"files": [[name, 10] for name in files]})


def test_file_rates_split_forgotten_from_crashed(tmp_path):
  ran = records.ToolCall("save()", exit_code=0)
  no_x_test = tuple(f for f in ALL_FILES if f not in ("X_test.pkl", "submission.csv"))
  base = [
      _trajectory(0, [ran], ALL_FILES, valid=True),
      _trajectory(1, [ran], no_x_test, valid=False),  # ran, forgot X_test.pkl
      # Crashed, then a second block ran (and still did not save it): forgotten.
      _trajectory(2, [records.ToolCall("x", exit_code=1), ran], no_x_test, valid=False),
      _trajectory(3, [records.ToolCall("x", exit_code=1)], ("train.csv",), valid=False),
      _trajectory(4, [records.ToolCall("x", exit_code=-9, timed_out=True)], (), valid=False),
      _trajectory(5, [], (), valid=False),  # wrote no code at all
      # A valid outcome of a trajectory the workflow itself failed on is not a valid submission.
      _trajectory(6, [ran], ALL_FILES, valid=True, error="workflow failed"),
      _trajectory(7, [ran], ALL_FILES, valid=True),
  ]
  results = tmp_path / "eval_results"
  records.write_trajectories(base, results / "step000000_suite.trajectories.jsonl")
  records.write_trajectories(base[:1], results / "step000008_suite.trajectories.jsonl")
  records.write_trajectories([], results / "step000008_other.trajectories.jsonl")
  (results / "step000000_suite.json").write_text("{}")  # the summary file is not read
  rates = measure.dsbench_file_rates(os.fspath(tmp_path))
  assert set(rates) == {(0, "suite"), (8, "suite")}  # an empty file yields no entry
  assert rates[(0, "suite")] == {"x_test_omission_rate": 5 / 8, "x_test_forgotten_rate": 2 / 8,
                                 "submission_validity": 2 / 8, "n": 8}
  assert rates[(8, "suite")] == {"x_test_omission_rate": 0.0, "x_test_forgotten_rate": 0.0,
                                 "submission_validity": 1.0, "n": 1}
