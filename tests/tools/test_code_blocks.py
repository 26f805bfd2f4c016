from mappa_jax.tools import code_blocks as cb


def test_python_blocks_only():
  text = ("<think>try\n```python\nprint(1)\n```\n</think>answer\n```py\nx\n```\n"
          "```\nplain\n```\n```python\n\n```\n```python\nprint(2)\n```")
  assert cb.parse_action(text).codes == ("print(1)\n", "print(2)\n")
  assert cb.parse_action(text, include_thinking=False).codes == ("print(2)\n",)
  assert not cb.parse_action("no code here").wants_tools


def test_empty_action_and_tool_call_json():
  assert cb.parse_action("  ").errors
  ok = cb.parse_action('<tool_call>{"name": "code_interpreter", "arguments": {"code": "1"}}'
                       '</tool_call>')
  assert ok.codes == ("1",) and not ok.errors
  assert cb.parse_action("<tool_call>{}").errors


def test_format_run_reference_wording():
  assert cb.format_run(" 42\n", "") == "42"
  assert cb.format_run("1", "warn") == "1\n[stderr]: warn"
  t = cb.format_run("", "", timed_out=True, limit="timeout")
  assert t == "[Execution TimeLimitExceeded]\n[No error details available]"
  assert cb.join_outputs(["a", "b"]) == "a\n------\nb"


def test_visible_part_of_an_action_cut_off_inside_its_reasoning():
  assert cb.visible_part("r\n</think>\n\nans") == "\n\nans"
  assert cb.visible_part("no tags at all") == "no tags at all"
  assert cb.visible_part("still thinking", thinking_open=True) == ""  # <think> was pre-filled
  assert cb.visible_part("pre <think> still thinking") == "pre "  # opened by the model
  cut = "plan\n```python\nprint(1)\n```"  # code inside reasoning that never closed
  assert not cb.parse_action(cut, include_thinking=False, thinking_open=True).wants_tools
  assert cb.parse_action(cut, include_thinking=True, thinking_open=True).codes == ("print(1)\n",)


def test_a_silently_killed_program_is_reported_as_failed():
  # bwrap's shell reports SIGKILL (RLIMIT_CPU, OOM killer) as exit code 137 with no output.
  assert cb.format_run("", "", exit_code=137) == (
      "[Execution Failed]\n[No error details available] (exit code 137: killed by signal 9)")
  assert cb.format_run("", "", exit_code=-24).endswith("(exit code -24: killed by signal 24)")
  assert cb.format_run("", "", exit_code=3).endswith("(exit code 3)")
  assert cb.format_run("", "", exit_code=0) == ""  # ran fine, printed nothing (reference)
  assert cb.format_run("", "boom", exit_code=1) == "\n[stderr]: boom"  # reference 'Finished'
