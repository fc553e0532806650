"""Chat templates (data/chat.py): token ids equal transformers' apply_chat_template for the same
template and tokenizer; assistant masks token by token."""

import pytest
import tokenizers
import transformers

from rlhf_jax import models
from rlhf_jax.data import chat, tokenizer as tokenizer_lib

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
TEXTS = ["the cat sat on the mat", "what is 12 plus 30? it is 42.", "héllo wörld, again"] * 20
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "what is 12 plus 30?"},
    {"role": "assistant", "content": "42."},
    {"role": "user", "content": "and the cat?"},
    {"role": "assistant", "content": "it sat on the mat"},
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=320, special_tokens=SPECIALS,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(TEXTS, trainer)
  path = tmp_path_factory.mktemp("hf_tok")
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                              bos_token="<|begin_of_text|>")
  fast.save_pretrained(str(path))
  return str(path), fast


@pytest.mark.parametrize("source", [CHATML, LLAMA3], ids=["chatml", "llama3"])
@pytest.mark.parametrize("gen", [False, True])
def test_ids_equal_transformers_apply_chat_template(hf_dir, source, gen):
  path, fast = hf_dir
  tok = models.load_hf_tokenizer(path)
  template = chat.ChatTemplate(source, chat.special_tokens(tok))
  messages = CONVERSATION[:4] if gen else CONVERSATION
  ids, _ = chat.encode_chat(tok, template, messages, add_generation_prompt=gen)
  want = fast.apply_chat_template(messages, chat_template=source, tokenize=True,
                                  add_generation_prompt=gen, return_dict=False)
  assert ids == list(want)
  assert template.render(messages, add_generation_prompt=gen) == fast.apply_chat_template(
      messages, chat_template=source, tokenize=False, add_generation_prompt=gen)


def test_chatml_assistant_mask_token_by_token(hf_dir):
  path, _ = hf_dir
  tok = models.load_hf_tokenizer(path)
  template = chat.ChatTemplate(CHATML, chat.special_tokens(tok))
  ids, mask = chat.encode_chat(tok, template, CONVERSATION)
  # Masked tokens decode to exactly each reply and the rest of its turn (the end-of-turn marker
  # and the template's separator after it), in order.
  runs, current = [], []
  for i, m in zip(ids + [None], mask + [0]):
    if m:
      current.append(i)
    elif current:
      runs.append(current)
      current = []
  assert len(runs) == 2
  pieces = [tok._tok.decode(r, skip_special_tokens=False) for r in runs]  # pylint: disable=protected-access
  assert pieces == ["42.<|im_end|>\n", "it sat on the mat<|im_end|>\n"]
  # Everything else (system, user turns, the assistant headers) is unmasked.
  unmasked = tok._tok.decode([i for i, m in zip(ids, mask) if not m], skip_special_tokens=False)  # pylint: disable=protected-access
  assert "what is 12 plus 30?" in unmasked and "<|im_start|>assistant\n" in unmasked
  assert "42." not in unmasked


def test_default_template_with_sentencepiece_three_turns():
  tok = tokenizer_lib.train_sentencepiece(TEXTS, vocab_size=300, symbols=chat.DEFAULT_MARKERS)
  template = chat.ChatTemplate(chat.DEFAULT_TEMPLATE, chat.special_tokens(tok))
  messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the cat"},
              {"role": "user", "content": "and?"}, {"role": "assistant", "content": "sat"}]
  ids, mask = chat.encode_chat(tok, template, messages)
  text = "<s><|user|>\nhi\n<|assistant|>\nthe cat</s><|user|>\nand?\n<|assistant|>\nsat</s>"
  assert template.render(messages) == text
  assert ids[0] == tok.bos_id and ids.count(tok.eos_id) == 2
  user, asst = tok.encode("<|user|>"), tok.encode("<|assistant|>")
  assert len(user) == 1 and len(asst) == 1  # the markers are single pieces
  want = ([0] + [0] * len(user + tok.encode("\nhi\n") + asst + tok.encode("\n"))
          + [1] * len(tok.encode("the cat") + [tok.eos_id])
          + [0] * len(user + tok.encode("\nand?\n") + asst + tok.encode("\n"))
          + [1] * len(tok.encode("sat") + [tok.eos_id]))
  assert mask == want
  assert len(ids) == len(mask)


def test_errors_name_the_problem():
  with pytest.raises(chat.ChatTemplateError, match="syntax error at line 1"):
    chat.ChatTemplate("{% for m in messages %}")
  rewriting = ("{% for m in messages %}{% if loop.last %}{{ m['content'] }}{% else %}x{% endif %}"
               "{% endfor %}")
  with pytest.raises(chat.ChatTemplateError, match="not prefix-consistent at message 1"):
    chat.ChatTemplate(rewriting).assistant_spans(CONVERSATION[1:3] + CONVERSATION[3:4])
  with pytest.raises(ValueError, match="f.jsonl:3: message 1 has role 'bot'"):
    chat.check_messages([{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}],
                        "f.jsonl:3")
  with pytest.raises(FileNotFoundError, match="data.chat_template='nope.jinja'"):
    chat.resolve_source("nope.jinja")


def test_checkpoint_template_is_found(hf_dir, tmp_path):
  path, fast = hf_dir
  assert chat.resolve_source("auto", path) == chat.DEFAULT_TEMPLATE  # none saved with it
  fast.chat_template = CHATML
  fast.save_pretrained(str(tmp_path))
  assert chat.resolve_source("auto", str(tmp_path)) == CHATML
  assert chat.resolve_source("none", str(tmp_path)) is None
