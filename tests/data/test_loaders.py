"""Loader tests: formats, suffix, malformed input, subsampling, held-out check, batching."""
import collections
import json
import os

import numpy as np
import pytest

from mappa_jax.data import batching, loaders, synthetic

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def test_prompt_suffix_text():
  assert loaders.PROMPT_SUFFIX == (
      "\n\nPlease reason step by step, and put your final answer within \\boxed{}.")


def test_load_json_array():
  tasks = loaders.load_tasks(os.path.join(FIXTURES, "math_pool.json"), task_type="aime")
  assert [t.task_id for t in tasks] == ["2001-1", "2001-2", "2002-I-1", "2002-I-2", "2002-II-1"]
  t = tasks[1]
  assert t.answer == "032" and t.task_type == "aime"
  assert t.prompt == "What is $2^5$?" + loaders.PROMPT_SUFFIX
  assert t.raw_prompt == "What is $2^5$?"
  assert t.metadata["year"] == 2001 and t.metadata["line"] == 3


def test_amc_float_labels_become_strings_like_reference():
  tasks = loaders.load_tasks(os.path.join(FIXTURES, "amc_like.json"))
  assert [t.answer for t in tasks] == ["18.0", "9.0"]
  assert tasks[0].task_type == "amc"  # from the 'source' field
  assert tasks[0].task_id == "0"


def test_load_dsbench_jsonl_despite_json_name():
  tasks = loaders.load_tasks(os.path.join(FIXTURES, "dsbench_like.json"), allow_null_answer=True)
  assert [t.task_id for t in tasks] == ["toy-cls", "toy-reg"]
  assert [t.task_type for t in tasks] == ["classification", "regression"]
  assert tasks[0].answer is None
  assert tasks[0].metadata["answer_dir"] == "./answers/toy-cls"
  assert tasks[1].metadata["line"] == 2
  with pytest.raises(loaders.DataFormatError, match=r"dsbench_like.json:1: field 'answer' is null"):
    loaders.load_tasks(os.path.join(FIXTURES, "dsbench_like.json"))


def test_hf_style_keys(tmp_path):
  p = tmp_path / "hf.jsonl"
  p.write_text("\n".join(json.dumps({"problem": f"q{i}", "solution": i}) for i in range(3)))
  tasks = loaders.load_tasks(p, input_key="problem", label_key="solution", add_prompt_suffix=False)
  assert [(t.task_id, t.prompt, t.answer) for t in tasks] == [
      ("hf-0", "q0", "0"), ("hf-1", "q1", "1"), ("hf-2", "q2", "2")]
  recs = loaders.from_records([{"question": "a?", "answer": 3}], input_key="question")
  assert recs[0].prompt.startswith("a?\n\n") and recs[0].answer == "3"


MALFORMED_JSONL = "\n".join([
    json.dumps({"prompt": "ok 1", "answer": "1"}),
    "{not json",
    json.dumps(["a", "list"]),
    json.dumps({"prompt": "", "answer": "2"}),
    json.dumps({"question": "wrong key", "answer": "3"}),
    json.dumps({"prompt": "no answer"}),
    "",
    json.dumps({"prompt": "ok 2", "answer": 2, "id": "x"}),
    json.dumps({"prompt": "dup", "answer": 2, "id": "x"}),
])


def test_malformed_jsonl_raises_with_file_and_line(tmp_path):
  p = tmp_path / "bad.jsonl"
  p.write_text(MALFORMED_JSONL)
  with pytest.raises(loaders.DataFormatError, match=r"bad.jsonl:2: invalid JSON"):
    loaders.load_tasks(p)


def test_malformed_jsonl_skipped_and_counted(tmp_path):
  p = tmp_path / "bad.jsonl"
  p.write_text(MALFORMED_JSONL)
  tasks, report = loaders.load_tasks_with_report(p, on_error="skip")
  assert [t.raw_prompt for t in tasks] == ["ok 1", "ok 2"]
  assert report.n_records == 8 and report.n_kept == 2 and report.n_skipped == 6
  lines = [s.split(":")[1] for s in (x.replace(str(p), "F") for x in report.skipped)]
  assert lines == ["2", "3", "4", "5", "6", "9"]
  assert "field 'prompt' missing or empty" in report.skipped[3]
  assert "duplicate task id 'x'" in report.skipped[5]


def test_malformed_json_array(tmp_path):
  p = tmp_path / "arr.json"
  p.write_text('[\n {"prompt": "a", "answer": "1"},\n {"prompt": "b", "answer": "2"},\n 7\n]')
  with pytest.raises(loaders.DataFormatError, match=r"arr.json:4: record is a int"):
    loaders.load_tasks(p)
  tasks, report = loaders.load_tasks_with_report(p, on_error="skip")
  assert len(tasks) == 2 and report.n_skipped == 1
  p.write_text('[\n {"prompt": "a", "answer": "1"},\n {"prompt": "b" "answer": "2"}\n]')
  with pytest.raises(loaders.DataFormatError, match=r"arr.json:3: invalid JSON array element"):
    loaders.load_tasks(p, on_error="skip")  # a broken array cannot be resynchronised
  p.write_text('{\n "a": {"prompt": "x"}\n}')
  with pytest.raises(loaders.DataFormatError, match="single JSON object"):
    loaders.load_tasks(p)
  with pytest.raises(loaders.DataFormatError, match="file not found"):
    loaders.load_tasks(tmp_path / "missing.json")


def test_subsample_matches_reference_algorithm():
  # The reference: np.random.seed(42); idx = np.random.choice(N, K, replace=False); sorted.
  state = np.random.get_state()
  try:
    np.random.seed(42)
    expected = np.sort(np.random.choice(933, 512, replace=False))
  finally:
    np.random.set_state(state)
  got = loaders.subsample_indices(933, 512, seed=42)
  np.testing.assert_array_equal(got, expected)
  assert len(set(got.tolist())) == 512
  before = np.random.get_state()[1].copy()
  loaders.subsample_indices(10, 3)
  np.testing.assert_array_equal(np.random.get_state()[1], before)  # global state untouched
  tasks = loaders.load_tasks(os.path.join(FIXTURES, "math_pool.json"))
  picked = loaders.subsample(tasks, 3, seed=42)
  assert [t.task_id for t in picked] == [tasks[i].task_id for i in
                                         loaders.subsample_indices(5, 3, 42)]
  assert loaders.subsample(tasks, None) == tasks


def test_reference_default_eval_split():
  tasks = loaders.load_tasks(os.path.join(FIXTURES, "math_pool.json"))
  assert len(loaders.reference_default_eval_split(tasks)) == 1
  big = loaders.from_records([{"prompt": str(i), "answer": "0"} for i in range(933)])
  assert len(loaders.reference_default_eval_split(big)) == 27


def test_heldout_check_refuses_overlap_unless_allowed(tmp_path):
  train = loaders.load_tasks(os.path.join(FIXTURES, "math_pool.json"))
  # Same problem with different whitespace/dollars and a different id scheme -> overlap.
  p = tmp_path / "eval.json"
  p.write_text(json.dumps([
      {"prompt": "What is  2^5?", "answer": "32", "id": "e1"},
      {"prompt": "A brand new problem.", "answer": "1", "id": "e2"}]))
  eval_tasks = loaders.load_tasks(p)
  with pytest.raises(loaders.HeldOutOverlapError, match=r"1/2 tasks also in the train set \(e1\)"):
    loaders.check_heldout(train, eval_tasks)
  report = loaders.check_heldout(train, eval_tasks, allow_overlap=True)
  assert report.overlapping_ids == ("e1",)
  clean = loaders.check_heldout(train, eval_tasks[1:])
  assert clean.n_overlap == 0
  by_id = loaders.find_overlap(train, [train[0]], by=("id",))
  assert by_id.overlapping_ids == ("2001-1",)
  with pytest.raises(ValueError, match="unknown key"):
    loaders.find_overlap(train, eval_tasks, by=("text",))


def test_epoch_batches_deterministic_and_drop_last():
  a = batching.epoch_batches(10, 3, epoch=0)
  assert a == batching.epoch_batches(10, 3, epoch=0)
  assert a != batching.epoch_batches(10, 3, epoch=1)
  assert [len(b) for b in a] == [3, 3, 3]
  assert len(set(sum(a, []))) == 9
  assert [len(b) for b in batching.epoch_batches(10, 3, 0, drop_last=False)] == [3, 3, 3, 1]


def test_stratum_quotas_reference_example():
  assert batching.stratum_quotas({"classification": 30, "regression": 34}, 16) == {
      "classification": 8, "regression": 8}
  q = batching.stratum_quotas({"a": 1, "b": 1, "c": 98}, 4)
  assert q == {"a": 1, "b": 1, "c": 2}
  assert sum(batching.stratum_quotas({"a": 5, "b": 5, "c": 5}, 4).values()) == 4


def test_stratified_batches():
  strata = ["classification"] * 30 + ["regression"] * 34
  sampler = batching.StratifiedBatchSampler(strata, 16, seed=42)
  e0 = sampler.batches(0)
  assert e0 == sampler.batches(0) and e0 != sampler.batches(1)
  assert len(e0) == 4
  for b in e0:
    assert len(b) == 16 and len(set(b)) == 16
    counts = collections.Counter(strata[i] for i in b)
    assert counts == {"classification": 8, "regression": 8}
  # A small stratum is reshuffled and reused, never duplicated inside one batch.
  small = batching.StratifiedBatchSampler(["a"] * 3 + ["b"] * 9, 4, seed=0)
  for b in small.batches(0):
    assert len(set(b)) == 4 and sum(small.strata[i] == "a" for i in b) == 1


def test_stratified_batches_over_synthetic_types():
  tasks = synthetic.generate(60, seed=1)
  sampler = batching.StratifiedBatchSampler([t.task_type for t in tasks], 6, seed=0)
  assert set(sampler.quotas) == set(synthetic.TASK_TYPES)
  assert all(len(b) == 6 for b in sampler.batches(3))


def test_overlap_by_competition_id_catches_reworded_problems(tmp_path):
  """The same AIME problem worded differently is matched through its url / fields."""
  pool = loaders.load_tasks(os.path.join(FIXTURES, "math_pool.json"))
  p = tmp_path / "eval32.json"
  p.write_text(json.dumps([
      {"prompt": "Reworded: what is 7 x 8?", "answer": "56", "id": 5,
       "url": "https://example.org/wiki/2002_AIME_I_Problems/Problem_1"},
      {"prompt": "Unrelated", "answer": "1", "id": 6,
       "url": "https://example.org/wiki/2002_AIME_II_Problems/Problem_7"}]))
  eval_tasks = loaders.load_tasks(p)
  assert loaders.competition_id(eval_tasks[0]) == "aime:2002-I-1"
  assert loaders.competition_id(pool[0]) == "aime:2001-1"
  assert loaders.find_overlap(pool, eval_tasks, by=("prompt",)).n_overlap == 0
  with pytest.raises(loaders.HeldOutOverlapError, match=r"1/2 tasks"):
    loaders.check_heldout(pool, eval_tasks)
  # Year/part/problem_number fields work too; plain numeric ids are not competition ids.
  t = loaders.Task("x", "q", "1", "aime", {"year": 2002, "part": "II", "problem_number": 1})
  assert loaders.competition_id(t) == "aime:2002-II-1"
  assert loaders.competition_id(loaders.Task("17", "q", "1", "amc")) is None


def test_dataset_config_entry_point():
  import ml_collections
  section = ml_collections.ConfigDict({"path": os.path.join(FIXTURES, "math_pool.json"),
                                       "task_type": "aime", "max_samples": 3, "seed": 42})
  cfg = loaders.DatasetConfig.from_config(section)
  tasks, report = loaders.load_dataset(cfg)
  assert len(tasks) == 3 and report.n_kept == 5 and tasks[0].task_type == "aime"
  with pytest.raises(ValueError, match="'path' is required"):
    loaders.DatasetConfig.from_config({"task_type": "x"})
