"""Chat templates: rendering HF-style Jinja chat templates without transformers.

The Jinja environment reproduces what `transformers` gives a template (sandboxed, trim_blocks,
lstrip_blocks, loop controls, the `tojson` filter without HTML escaping, `raise_exception`,
`strftime_now`), so a template renders to the same text here as in
`AutoTokenizer.apply_chat_template` and therefore to the same token ids.

Two templates written for this project, in the spirit of Qwen's:
  * `QWEN3_THINKING_TEMPLATE`: ChatML, tools, tool turns grouped into one user turn wrapped in
    <tool_response>, assistant reasoning rendered as <think>...</think> for turns after the last
    real user query, and a generation prompt that pre-fills `<think>\\n` (Qwen3-Thinking-2507
    style) or an empty think block when `enable_thinking=False`.
  * `QWEN25_TEMPLATE`: the same without thinking, with a default system prompt.
"""
from __future__ import annotations

import datetime
import json
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import sandbox

# Names under which callers pass an assistant turn's reasoning; templates read the first one.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

_TOOLS_PREAMBLE = (
    "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>")
_TOOLS_POSTAMBLE = (
    "\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    "{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call>")

# Pieces shared by both templates. Tool messages that follow each other share one user turn.
_SYSTEM_AND_TOOLS = """
{%- if tools %}
  {{- '<|im_start|>system\\n' }}
  {%- if messages and messages[0].role == 'system' %}
    {{- messages[0].content + '\\n\\n' }}
  {%- elif DEFAULT_SYSTEM %}
    {{- DEFAULT_SYSTEM + '\\n\\n' }}
  {%- endif %}
  {{- "TOOLS_PREAMBLE" }}
  {%- for tool in tools %}
    {{- '\\n' }}{{- tool | tojson }}
  {%- endfor %}
  {{- "TOOLS_POSTAMBLE" }}{{- '<|im_end|>\\n' }}
{%- elif messages and messages[0].role == 'system' %}
  {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- elif DEFAULT_SYSTEM %}
  {{- '<|im_start|>system\\n' + DEFAULT_SYSTEM + '<|im_end|>\\n' }}
{%- endif %}
""".replace("TOOLS_PREAMBLE", _TOOLS_PREAMBLE).replace("TOOLS_POSTAMBLE", _TOOLS_POSTAMBLE)

_TOOL_CALLS = """
    {%- if message.tool_calls %}
      {%- for call in message.tool_calls %}
        {%- if call.function is defined %}{%- set call = call.function %}{%- endif %}
        {%- if (loop.first and content) or not loop.first %}{{- '\\n' }}{%- endif %}
        {{- '<tool_call>\\n{"name": "' + call.name + '", "arguments": ' }}
        {%- if call.arguments is string %}
          {{- call.arguments }}
        {%- else %}
          {{- call.arguments | tojson }}
        {%- endif %}
        {{- '}\\n</tool_call>' }}
      {%- endfor %}
    {%- endif %}
"""

_TOOL_TURN = """
  {%- elif message.role == 'tool' %}
    {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
      {{- '<|im_start|>user' }}
    {%- endif %}
    {{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}
    {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
      {{- '<|im_end|>\\n' }}
    {%- endif %}
  {%- else %}
    {{- raise_exception('Unknown message role: ' + message.role) }}
  {%- endif %}
"""

QWEN3_THINKING_TEMPLATE = ("{%- set DEFAULT_SYSTEM = '' %}" + _SYSTEM_AND_TOOLS + """
{#- The last real user query: reasoning of assistant turns before it is dropped (as Qwen3 does);
    turns after it (the agent's own tool loop) keep their reasoning, so that loop renders
    append-only. A user message that only wraps a tool response does not count as a query. #}
{%- set ns = namespace(last_query=-1) %}
{%- for message in messages %}
  {%- if message.role == 'user' and message.content is string
        and not (message.content.startswith('<tool_response>')
                 and message.content.endswith('</tool_response>')) %}
    {%- set ns.last_query = loop.index0 %}
  {%- endif %}
{%- endfor %}
{%- for message in messages %}
  {%- set content = message.content if message.content is string else '' %}
  {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
    {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
  {%- elif message.role == 'system' %}
  {%- elif message.role == 'assistant' %}
    {%- set reasoning = '' %}
    {%- if message.reasoning_content is string %}
      {%- set reasoning = message.reasoning_content %}
    {%- elif '</think>' in content %}
      {%- set reasoning = content.split('</think>')[0].split('<think>')[-1] %}
      {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
    {%- endif %}
    {%- if loop.index0 > ns.last_query %}
      {{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' }}
      {{- content.lstrip('\\n') }}
    {%- else %}
      {{- '<|im_start|>assistant\\n' + content }}
    {%- endif %}
""" + _TOOL_CALLS + """
    {{- '<|im_end|>\\n' }}
""" + _TOOL_TURN + """
{%- endfor %}
{%- if add_generation_prompt %}
  {{- '<|im_start|>assistant\\n' }}
  {%- if enable_thinking is defined and enable_thinking is false %}
    {{- '<think>\\n\\n</think>\\n\\n' }}
  {%- else %}
    {{- '<think>\\n' }}
  {%- endif %}
{%- endif %}
""")

QWEN25_TEMPLATE = (
    "{%- set DEFAULT_SYSTEM = 'You are a helpful assistant.' %}" + _SYSTEM_AND_TOOLS + """
{%- for message in messages %}
  {%- set content = message.content if message.content is string else '' %}
  {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
    {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
  {%- elif message.role == 'system' %}
  {%- elif message.role == 'assistant' %}
    {{- '<|im_start|>assistant\\n' + content }}
""" + _TOOL_CALLS + """
    {{- '<|im_end|>\\n' }}
""" + _TOOL_TURN + """
{%- endfor %}
{%- if add_generation_prompt %}
  {{- '<|im_start|>assistant\\n' }}
{%- endif %}
""")


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
  # Jinja's own tojson escapes HTML characters; chat templates expect plain json.dumps.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


def _environment() -> sandbox.ImmutableSandboxedEnvironment:
  env = sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = _strftime_now
  return env


_ENV = _environment()


class ChatTemplate:
  """A compiled chat template plus the variables every render gets (special-token strings)."""

  def __init__(self, source: str, *, special_tokens: dict[str, str] | None = None):
    try:
      self._template = _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
      raise ValueError(f"chat_template does not compile: {e} (line {e.lineno})") from e
    self.source = source
    self._special_tokens = dict(special_tokens or {})

  def render(self, messages: list[dict], *, add_generation_prompt: bool = True,
             tools: list[dict] | None = None, **kwargs: Any) -> str:
    """Renders `messages` ([{'role', 'content', ...}]) to text; kwargs reach the template."""
    if not isinstance(messages, (list, tuple)):
      raise TypeError(f"messages must be a list of dicts, got {type(messages).__name__}")
    chat = []
    for i, message in enumerate(messages):
      if not isinstance(message, dict) or "role" not in message:
        raise ValueError(f"messages[{i}] must be a dict with a 'role' key, got {message!r}")
      message = dict(message)
      # Same aliasing as transformers: reasoning under any known name reaches every name.
      reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
      if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
      chat.append(message)
    variables = {**self._special_tokens, **{k: v for k, v in kwargs.items() if v is not None}}
    return self._template.render(messages=chat, tools=tools, documents=None,
                                 add_generation_prompt=add_generation_prompt, **variables)
