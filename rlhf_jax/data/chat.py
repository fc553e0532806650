"""Chat templates: conversations ({role, content} message lists) rendered to text with Jinja, and
tokenised with a per-token mask of the assistant's turns.

Templates come from (config `data.chat_template`):
  auto      the checkpoint's own (`chat_template` in tokenizer_config.json, or chat_template.jinja
            beside it, as transformers writes them) when the tokenizer comes from model.hf_path;
            otherwise the built-in DEFAULT_TEMPLATE
  default   DEFAULT_TEMPLATE (from-scratch models)
  none      plain text only: message-list records are an error
  <path>    a .jinja file
The template in use is recorded in the run's tokenizer spec (key "chat_template"), so later stages
that start from the run's export render conversations the same way.

Rendering follows transformers' `apply_chat_template` (a sandboxed Jinja environment with
trim_blocks, lstrip_blocks, loop controls, `raise_exception`, `strftime_now`, a non-escaping
`tojson`; the tokenizer's special tokens `bos_token`, `eos_token`, `pad_token`, `unk_token` as
variables), and the text is tokenised as transformers does (no special tokens added: the
template writes BOS itself if the model wants one), so the ids equal `apply_chat_template`'s.

Assistant mask. For each assistant message i of a conversation m, with R(m, g) the rendering
(g = add_generation_prompt):
  start_i = len(R(m[:i], g=True)),   end_i = len(R(m[:i+1], g=False))
is its span in R(m): the reply and the rest of its turn as the template writes it, i.e. the
end-of-turn marker (e.g. `<|im_end|>`, `<|eot_id|>`, or EOS in the built-in template), which is
what the model must learn to emit to stop, and any separator the template puts after it (ChatML's
newline); the header that announces the turn belongs to the prompt. A template must render each
prefix of a conversation as a prefix of the whole (true of ChatML, Llama 3, Gemma, Mistral); one
that does not (e.g. dropping earlier reasoning) is reported as an error. A token is an assistant
token when its character span overlaps an assistant span.

EOS: with a template, the template's end-of-turn marker ends an assistant turn and nothing is
appended; generation stops at the tokenizer's EOS id (for chat checkpoints the end-of-turn token
is usually the configured EOS; the built-in template ends turns with EOS).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

import jinja2
from jinja2 import ext as jinja_ext
from jinja2 import sandbox

CHOICES = ("auto", "default", "none")
ROLES = ("system", "user", "assistant", "tool")

# Built-in template for models trained from scratch: a role marker line per message; the
# assistant's turn ends with EOS (so generation stops there), the others with a newline.
DEFAULT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
# Markers of DEFAULT_TEMPLATE: one piece each in a sentencepiece model trained for it.
DEFAULT_MARKERS = tuple(f"<|{role}|>" for role in ROLES)


class ChatTemplateError(ValueError):
  """A conversation the template cannot render, or a template that is not prefix-consistent."""


class _GenerationTag(jinja_ext.Extension):
  """Accepts transformers' `{% generation %}...{% endgeneration %}` blocks (renders the body;
  the assistant mask here comes from prefix renderings, which need no markup)."""
  tags = {"generation"}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

  def _body(self, caller):
    return caller()


def _raise(message):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _environment() -> jinja2.Environment:
  env = sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja_ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env


def special_tokens(tok) -> dict[str, str]:
  """The variables transformers passes to a template: the special tokens' strings."""
  out = {}
  for name in ("bos", "eos", "pad", "unk"):
    i = getattr(tok, f"{name}_id", None)
    if i is not None and hasattr(tok, "id_to_token"):
      out[f"{name}_token"] = tok.id_to_token(int(i)) or ""
  return out


class ChatTemplate:
  """A compiled Jinja chat template bound to a tokenizer's special tokens."""

  def __init__(self, source: str, tokens: dict[str, str] | None = None):
    self.source = source
    try:
      self._template = _environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
      raise ChatTemplateError(f"chat template: Jinja syntax error at line {e.lineno}: "
                              f"{e.message}") from None
    self.tokens = dict(tokens or {})

  def render(self, messages: Sequence[dict], *, add_generation_prompt: bool = False) -> str:
    try:
      return self._template.render(messages=list(messages),
                                   add_generation_prompt=add_generation_prompt, **self.tokens)
    except jinja2.exceptions.TemplateError as e:
      raise ChatTemplateError(f"chat template failed on {len(messages)} messages: {e}") from None

  def assistant_spans(self, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """(R(messages), [(start_i, end_i) for each assistant message]); see the module docstring."""
    text = self.render(messages)
    spans = []
    for i, message in enumerate(messages):
      if message["role"] != "assistant":
        continue
      before = self.render(messages[:i], add_generation_prompt=True)
      upto = self.render(messages[:i + 1])
      if not (upto.startswith(before) and text.startswith(upto)):
        raise ChatTemplateError(
            f"chat template is not prefix-consistent at message {i} (assistant): rendering the "
            "conversation up to it is not a prefix of the whole, so its tokens cannot be "
            "located; use data.chat_template='default' or a template without such rewriting")
      spans.append((len(before), len(upto)))
    return text, spans


def check_messages(messages: Any, where: str) -> list[dict]:
  """A message list as the templates expect it: [{role, content: str}, ...]; error naming
  `where` and the message otherwise."""
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ValueError(f"{where}: messages must be a non-empty list of {{role, content}} objects, "
                     f"got {messages!r:.120}")
  out = []
  for j, m in enumerate(messages):
    if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
        m.get("content"), str):
      raise ValueError(f"{where}: message {j} is not a {{role: str, content: str}} object: "
                       f"{m!r:.120}")
    if m["role"] not in ROLES:
      raise ValueError(f"{where}: message {j} has role {m['role']!r}; valid roles: {list(ROLES)}")
    out.append({k: v for k, v in m.items() if v is not None})
  return out


def encode_with_offsets(tok, text: str) -> tuple[list[int], list[tuple[int, int]]]:
  """Token ids of `text` (no special tokens added) and each token's character span."""
  if hasattr(tok, "encode_with_offsets"):
    return tok.encode_with_offsets(text)
  ids = tok.encode(text)  # one id per character (the char tokenizer)
  if len(ids) != len(text):
    raise TypeError(f"{type(tok).__name__} cannot map tokens to characters (no "
                    "encode_with_offsets), so it cannot mask assistant turns")
  return ids, [(i, i + 1) for i in range(len(text))]


def encode_chat(tok, template: ChatTemplate, messages: Sequence[dict], *,
                add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
  """(ids, assistant_mask) of a conversation: ids as `apply_chat_template(tokenize=True)`
  gives them, mask 1 on the tokens of assistant turns (module docstring)."""
  if add_generation_prompt:
    text, spans = template.render(messages, add_generation_prompt=True), []
  else:
    text, spans = template.assistant_spans(messages)
  ids, offsets = encode_with_offsets(tok, text)
  return ids, _span_mask(offsets, spans)


def _span_mask(offsets, spans) -> list[int]:
  """1 for each token whose characters start in, or overlap, one of the spans."""
  return [int(any(s <= s_t < e or (s < e_t and s_t < e) for s, e in spans))
          for s_t, e_t in offsets]


def encode_split(tok, template: ChatTemplate, prompt: Sequence[dict], completion: Sequence[dict]
                 ) -> tuple[list[int], list[int], list[int]]:
  """(prompt_ids, completion_ids, completion_assistant_mask) of the conversation prompt +
  completion, tokenised whole (so the ids are apply_chat_template's) and cut at the first token
  at or after the end of R(prompt, add_generation_prompt) (the completion's turn header, when
  the completion starts with an assistant turn, stays with the prompt)."""
  messages = list(prompt) + list(completion)
  head = template.render(prompt, add_generation_prompt=completion[0]["role"] == "assistant")
  text, spans = template.assistant_spans(messages)
  if not text.startswith(head):
    raise ChatTemplateError("chat template is not prefix-consistent: the prompt's rendering is "
                            "not a prefix of the whole conversation's")
  ids, offsets = encode_with_offsets(tok, text)
  mask = _span_mask(offsets, spans)
  k = next((i for i, (s_t, _) in enumerate(offsets) if s_t >= len(head)), len(ids))
  return ids[:k], ids[k:], mask[k:]


def checkpoint_template(path: str) -> str | None:
  """The chat template stored with a Hugging Face checkpoint directory, if any."""
  jinja_file = os.path.join(path, "chat_template.jinja")
  if os.path.exists(jinja_file):
    with open(jinja_file) as f:
      return f.read()
  config_file = os.path.join(path, "tokenizer_config.json")
  if not os.path.exists(config_file):
    return None
  with open(config_file) as f:
    template = json.load(f).get("chat_template")
  if isinstance(template, list):  # named templates: the "default" one
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    template = named.get("default")
  return template if isinstance(template, str) else None


def resolve_source(choice: str, hf_dir: str = "") -> str | None:
  """The template text `data.chat_template` selects (None for 'none'); see the module docstring."""
  if choice == "none":
    return None
  if choice == "default":
    return DEFAULT_TEMPLATE
  if choice == "auto":
    return (checkpoint_template(hf_dir) if hf_dir else None) or DEFAULT_TEMPLATE
  if not os.path.exists(choice):
    raise FileNotFoundError(f"data.chat_template={choice!r}: neither one of {list(CHOICES)} nor "
                            "an existing .jinja file")
  with open(choice) as f:
    return f.read()
