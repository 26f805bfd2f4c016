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
