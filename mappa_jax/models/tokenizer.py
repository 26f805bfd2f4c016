"""Tokenizer: HF `tokenizer.json` + `tokenizer_config.json` through the `tokenizers` library.

No transformers at runtime. Chat templates render with `chat_template.ChatTemplate` (same Jinja
environment as transformers), and the rendered text is encoded without adding special tokens,
exactly as `AutoTokenizer.apply_chat_template(..., tokenize=True)` does.

Multi-turn RL never re-encodes sampled text: a prompt for turn k+1 is
`prompt_ids_k + sampled_ids_k + chat_suffix_ids(history, new_messages)`.

The shipped tiny tokenizer (`tiny_tokenizer_dir()`) is a byte-level BPE of 500 tokens trained
offline by `build_tiny_tokenizer` on a built-in corpus, plus ChatML specials at fixed ids:
500 <|endoftext|>, 501 <|im_start|>, 502 <|im_end|>, 503 <think>, 504 </think>, 505 <tool_call>,
506 </tool_call>, 507 <tool_response>, 508 </tool_response> (509 tokens, fits a 512 vocab).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from mappa_jax.models import chat_template as chat_template_lib

_ASSETS = pathlib.Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"

# The pre-tokenization regex of GPT-4/Qwen2-style byte-level BPEs (digits split one by one;
# `{digits}` is widened to up to 3 digits per token by split_pattern(3), as in cl100k).
_SPLIT_TEMPLATE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{{L}}\p{{N}}]?\p{{L}}+|{digits}|"
                   r" ?[^\s\p{{L}}\p{{N}}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def split_pattern(max_digits: int = 1) -> str:
  """The pre-tokenizer regex with numbers cut into groups of at most `max_digits` digits."""
  return _SPLIT_TEMPLATE.format(digits=r"\p{N}" if max_digits == 1 else
                                rf"\p{{N}}{{1,{int(max_digits)}}}")


_SPLIT_PATTERN = split_pattern(1)
TINY_BPE_SIZE = 500
# (content, special): special tokens are control tokens skipped by skip_special_tokens; the
# think/tool tags are ordinary added tokens, as in Qwen's tokenizers.
TINY_ADDED_TOKENS = (("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
                     ("<think>", False), ("</think>", False), ("<tool_call>", False),
                     ("</tool_call>", False), ("<tool_response>", False),
                     ("</tool_response>", False))


def tiny_tokenizer_dir() -> pathlib.Path:
  """The shipped tiny tokenizer (tokenizer.json, tokenizer_config.json)."""
  return _ASSETS


class Tokenizer:
  """A HF fast tokenizer and its chat template.

  Attributes:
    eos_token_ids: ids that end an assistant turn (tokenizer_config `eos_token`, plus
      generation_config.json `eos_token_id` when the directory has one).
    pad_token_id: `pad_token` id, else the first EOS id.
    vocab_size: number of ids the tokenizer can produce (base vocab + added tokens).
  """

  def __init__(self, backend: tokenizers.Tokenizer, config: dict[str, Any], *,
               chat_template: str | None = None, extra_eos_ids: Sequence[int] = (),
               source: str = "<memory>"):
    self._tok = backend
    self._config = config
    self._source = source
    special = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                "mask_token"):
      value = config.get(key)
      if isinstance(value, dict):  # legacy AddedToken serialisation
        value = value.get("content")
      if value is not None:
        special[key] = value
    self.special_tokens = special
    self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
    eos = []
    if "eos_token" in special:
      eos.append(self._token_id(special["eos_token"], "eos_token"))
    eos.extend(int(i) for i in extra_eos_ids if int(i) not in eos)
    if not eos:
      raise ValueError(f"{source}: tokenizer_config.json has no eos_token and there is no "
                       "generation_config.json eos_token_id; set one of them.")
    self.eos_token_ids = tuple(eos)
    self.pad_token_id = (self._token_id(special["pad_token"], "pad_token")
                         if "pad_token" in special else self.eos_token_ids[0])
    self._special_strings = sorted(
        (t.content for t in backend.get_added_tokens_decoder().values() if t.special),
        key=len, reverse=True)
    self._template = (chat_template_lib.ChatTemplate(chat_template, special_tokens=special)
                      if chat_template else None)

  def _token_id(self, token: str, field: str) -> int:
    token_id = self._tok.token_to_id(token)
    if token_id is None:
      raise ValueError(f"{self._source}: tokenizer_config.json {field}={token!r} is not in the "
                       "tokenizer's vocabulary (tokenizer.json)")
    return token_id

  @classmethod
  def from_dir(cls, model_dir: str | pathlib.Path) -> "Tokenizer":
    """Loads tokenizer.json + tokenizer_config.json (+ chat_template.jinja, generation_config.json
    when present)."""
    model_dir = pathlib.Path(model_dir)
    tok_path, cfg_path = model_dir / "tokenizer.json", model_dir / "tokenizer_config.json"
    for path in (tok_path, cfg_path):
      if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a model directory needs tokenizer.json and tokenizer_config.json "
            "(save them with tokenizer.save_pretrained(dir) or copy them from the HF checkpoint)")
    try:
      backend = tokenizers.Tokenizer.from_file(str(tok_path))
    except Exception as e:  # the Rust error names no file
      raise ValueError(f"{tok_path}: not a valid tokenizers JSON file ({e})") from e
    try:
      config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"{cfg_path}: invalid JSON ({e})") from e
    # transformers 5 writes the template to chat_template.jinja, which wins over the config.
    jinja_path = model_dir / "chat_template.jinja"
    template = jinja_path.read_text() if jinja_path.is_file() else config.get("chat_template")
    if isinstance(template, list):  # named templates: [{'name': ..., 'template': ...}]
      named = {t.get("name"): t.get("template") for t in template}
      if "default" not in named:
        raise ValueError(f"{cfg_path}: chat_template is a list without a 'default' entry "
                         f"(names: {sorted(named)})")
      template = named["default"]
    extra_eos: list[int] = []
    gen_path = model_dir / "generation_config.json"
    if gen_path.is_file():
      gen_eos = json.loads(gen_path.read_text()).get("eos_token_id")
      if gen_eos is not None:
        extra_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos)
    return cls(backend, config, chat_template=template, extra_eos_ids=extra_eos,
               source=str(model_dir))

  # -- text <-> ids -----------------------------------------------------------------------------

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; special-token strings in it become their ids; never adds BOS/EOS."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def strip_special_text(self, text: str) -> str:
    """Drops special-token strings (e.g. '<|im_end|>'); <think>/tool tags are not special."""
    for s in self._special_strings:
      text = text.replace(s, "")
    return text

  def check_vocab(self, model_vocab_size: int) -> None:
    """Raises if the tokenizer can emit ids the model has no embedding rows for."""
    if self.vocab_size > model_vocab_size:
      raise ValueError(
          f"{self._source}: tokenizer has {self.vocab_size} tokens (tokenizer.json incl. added "
          f"tokens) but the model's vocab_size (config.json) is {model_vocab_size}; use the "
          "tokenizer that belongs to this checkpoint")

  # -- chat -------------------------------------------------------------------------------------

  @property
  def chat_template(self) -> str | None:
    return self._template.source if self._template else None

  def render_chat(self, messages: list[dict], *, add_generation_prompt: bool = True,
                  enable_thinking: bool | None = None, tools: list[dict] | None = None) -> str:
    """The chat template's text for `messages`."""
    if self._template is None:
      raise ValueError(f"{self._source}: no chat template (tokenizer_config.json 'chat_template' "
                       "or chat_template.jinja); add one to use chat messages")
    return self._template.render(messages, add_generation_prompt=add_generation_prompt,
                                 tools=tools, enable_thinking=enable_thinking)

  def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True,
                          enable_thinking: bool | None = None,
                          tools: list[dict] | None = None) -> list[int]:
    """Token ids of the rendered chat (== transformers' apply_chat_template(tokenize=True))."""
    return self.encode(self.render_chat(messages, add_generation_prompt=add_generation_prompt,
                                        enable_thinking=enable_thinking, tools=tools))

  def chat_suffix_ids(self, history: list[dict], new_messages: list[dict], *,
                      add_generation_prompt: bool = True, enable_thinking: bool | None = None,
                      tools: list[dict] | None = None) -> list[int]:
    """Ids the template appends after `history`'s final assistant turn for `new_messages`.

    The suffix starts right after the final end-of-turn token of `history` (the EOS the policy
    sampled), e.g. '\\n<|im_start|>user\\n<tool_response>...<|im_end|>\\n<|im_start|>assistant\\n
    <think>\\n' for a tool turn. Raises if the template re-renders history when new messages are
    appended (then the conversation is not append-only and ids cannot be reused).
    """
    if not history or history[-1].get("role") != "assistant":
      raise ValueError("chat_suffix_ids: history must end with an assistant message")
    before = self.render_chat(history, add_generation_prompt=False,
                              enable_thinking=enable_thinking, tools=tools)
    after = self.render_chat(list(history) + list(new_messages),
                             add_generation_prompt=add_generation_prompt,
                             enable_thinking=enable_thinking, tools=tools)
    if not after.startswith(before):
      raise ValueError(
          "chat_suffix_ids: the chat template renders the history differently once "
          f"{[m.get('role') for m in new_messages]} are appended (e.g. it drops earlier "
          "reasoning after a new user query), so the prompt is not append-only")
    eos_strings = [self.decode([i]) for i in self.eos_token_ids]
    end = max(before.rfind(s) + len(s) if before.rfind(s) >= 0 else -1 for s in eos_strings)
    if end < 0:
      raise ValueError("chat_suffix_ids: the rendered history has no end-of-turn token "
                       f"({eos_strings}); the template does not close assistant turns with EOS")
    return self.encode(after[end:])


# -- the shipped tiny tokenizer -------------------------------------------------------------------

_CORPUS_ENGLISH = """\
The quick brown fox jumps over the lazy dog. A team of agents solves the problem step by step.
Each agent reads the question, thinks about it, and writes an answer. The coach scores every
action from 0 to 10. Let me think about this problem carefully before I answer.
First, we need to find the value of x. Then we check the result with the verifier.
The answer is correct. The answer is wrong, so we try again. What is the final answer?
Please reason step by step, and put your final answer within \\boxed{}.
You are a helpful assistant. You are a problem solver. You are a code executor.
The data engineer cleans the data, the modeler trains a model, and the analyst reports results.
This is a test of the tokenizer. Hello world! How are you today? I am fine, thank you.
"""
_CORPUS_MATH = """\
1 + 1 = 2. 2 + 3 = 5. 12 * 7 = 84. 100 / 4 = 25. 3^2 + 4^2 = 5^2. x = 42.
If 3x + 5 = 20, then 3x = 15 and x = 5. The sum of 17 and 25 is 42.
Compute 2024 - 1999 = 25. The area of a circle is pi * r^2. sqrt(16) = 4.
Let a = 6 and b = 8; then a * b = 48 and a + b = 14. So the answer is \\boxed{14}.
"""
_CORPUS_CODE = """\
```python
def add(a, b):
    return a + b

import numpy as np
import pandas as pd

x = np.array([1, 2, 3])
print(x.sum())
for i in range(10):
    if i % 2 == 0:
        print(i)
df = pd.read_csv("data.csv")
result = df.groupby("name").mean()
print(result)
```
"""
_CORPUS_CHAT = """\
<tool_call>
{"name": "code_interpreter", "arguments": {"code": "print(1 + 1)"}}
</tool_call>
<tool_response>
2
</tool_response>
<think>
The user wants the sum. I will compute it.
</think>

The sum is 2.
"""


def _tiny_corpus() -> list[str]:
  # Repeated so that frequent pairs win merges by a clear margin.
  return [_CORPUS_ENGLISH, _CORPUS_MATH, _CORPUS_CODE, _CORPUS_CHAT] * 4


def build_tiny_tokenizer(out_dir: str | pathlib.Path,
                         chat_template: str | None = None, *,
                         corpus: Sequence[str] | None = None,
                         vocab_size: int | None = None, max_digits: int = 1) -> pathlib.Path:
  """Trains a small byte-level BPE offline and writes tokenizer.json + tokenizer_config.json.

  Args:
    out_dir: where the two files go.
    chat_template: Jinja chat template (default: the Qwen3 thinking template).
    corpus: texts to learn merges from. Default: the built-in corpus, trained to exactly
      TINY_BPE_SIZE tokens (the shipped mappa_jax/assets/tiny_tokenizer).
    vocab_size: most BPE tokens (before the added special tokens) when `corpus` is given;
      fewer when the corpus has no more pairs seen twice.
    max_digits: digits a number token may hold (1 = Qwen's digit-by-digit split). With 3,
      a number below 1000 that the corpus has seen twice becomes one token, so copying it
      is one lookup instead of a chain of digit lookups (what a tiny model learns first).
  Deterministic: the same corpus gives byte-identical files (a test checks the shipped ones).
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  tok = tokenizers.Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(split_pattern(max_digits)), behavior="isolated",
                           invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
  ])
  tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
  size = TINY_BPE_SIZE if corpus is None else int(vocab_size or TINY_BPE_SIZE)
  trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=2, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                special_tokens=[])
  tok.train_from_iterator(_tiny_corpus() if corpus is None else list(corpus), trainer=trainer)
  if corpus is None and tok.get_vocab_size() != TINY_BPE_SIZE:
    raise RuntimeError(f"tiny BPE has {tok.get_vocab_size()} tokens, expected {TINY_BPE_SIZE}; "
                       "grow the built-in corpus")
  tok.add_tokens([tokenizers.AddedToken(c, special=s, normalized=False)
                  for c, s in TINY_ADDED_TOKENS])
  tok.save(str(out_dir / "tokenizer.json"))
  added = {str(tok.token_to_id(c)): {"content": c, "lstrip": False, "normalized": False,
                                      "rstrip": False, "single_word": False, "special": s}
           for c, s in TINY_ADDED_TOKENS}
  config = {
      "tokenizer_class": "Qwen2Tokenizer",
      "add_bos_token": False,
      "add_prefix_space": False,
      "added_tokens_decoder": added,
      "bos_token": None,
      "eos_token": "<|im_end|>",
      "pad_token": "<|endoftext|>",
      "unk_token": None,
      "errors": "replace",
      "clean_up_tokenization_spaces": False,
      "model_max_length": 4096,
      "split_special_tokens": False,
      "chat_template": chat_template or chat_template_lib.QWEN3_THINKING_TEMPLATE,
  }
  (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False)
                                                 + "\n")
  return out_dir


if __name__ == "__main__":  # python -m mappa_jax.models.tokenizer: rebuild the shipped assets
  print(build_tiny_tokenizer(_ASSETS))
