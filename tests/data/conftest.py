import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from data import load_tokenizer

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_bytelevel_tokenizer(path, chat_template=CHATML):
    """A small byte-level BPE (GPT-2 style) whose merges include '><', so tokens straddle tags."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["<Thinking>step one: 12 + 30 = 42</Thinking><Answer>42</Answer>",
              "The answer is 42. Problem: Solution:", "user assistant system"] * 30
    tok.train_from_iterator(corpus, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    if chat_template:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture(scope="session")
def bl_dir(tmp_path_factory):
    return write_bytelevel_tokenizer(tmp_path_factory.mktemp("bytelevel"))


@pytest.fixture(scope="session")
def bl_tok(bl_dir):
    return load_tokenizer(bl_dir)
