"""Load a Hugging Face tokenizer directory (tokenizer.json + config files) without transformers."""
import hashlib
import json
import os

from tokenizers import AddedToken, Tokenizer

from .records import DataError

CONFIG_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "chat_template.jinja", "chat_template.json")


def _token_text(value):
    # HF configs store special tokens either as plain strings or as AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path):
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"cannot parse tokenizer config: {e}", path=path) from e


def _chat_template(path, config):
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.exists(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if template is None:
        template = _read_json(os.path.join(path, "chat_template.json")).get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    return template


class Tok:
    """A tokenizers.Tokenizer plus the special tokens and chat template HF keeps beside it."""

    def __init__(self, tokenizer, path, eos_token, bos_token=None, pad_token=None,
                 chat_template=None, add_bos_token=False):
        self.tokenizer, self.path, self.chat_template = tokenizer, path, chat_template
        self.file_vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)  # as read from path
        self.eos_token, self.bos_token = eos_token, bos_token
        self.eos_id = self._id(eos_token, "eos_token")
        self.bos_id = self._id(bos_token, "bos_token") if bos_token else None
        self.pad_token = pad_token or eos_token  # no pad token: pad with EOS (labels mask it anyway)
        self.pad_id = self._id(self.pad_token, "pad_token")
        self.add_bos_token = bool(add_bos_token and self.bos_id is not None)

    def _id(self, token, name):
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise DataError(f"{name} {token!r} is not in the vocabulary", path=self.path, field=name)
        return token_id

    @property
    def vocab_size(self):
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text):
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids, skip_special_tokens=False):
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token):
        return self.tokenizer.token_to_id(token)

    def add_special_tokens(self, tokens):
        """Register strings as special added tokens (e.g. the tags); returns how many are new."""
        new = [t for t in tokens if self.tokenizer.token_to_id(t) is None]
        self.tokenizer.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in tokens])
        return len(new)

    def fingerprint(self):
        """Hash of the tokenizer's full state (files and added tokens), for dataset caches."""
        h = hashlib.sha256(self.tokenizer.to_str().encode("utf-8"))
        for part in (self.eos_token, self.bos_token, self.pad_token, self.chat_template,
                     str(self.add_bos_token)):
            h.update(b"\0" + str(part).encode("utf-8"))
        return h.hexdigest()[:16]

    def __repr__(self):
        return (f"Tok({self.path!r}, vocab={self.vocab_size}, eos={self.eos_token!r}/{self.eos_id}, "
                f"pad={self.pad_id}, bos={self.bos_id})")


def load_tokenizer(path):
    """Read tokenizer.json and the special tokens / chat template from a HF tokenizer folder."""
    file = os.path.join(path, "tokenizer.json")
    if not os.path.exists(file):
        raise DataError("no tokenizer.json here (pass a Hugging Face model or tokenizer folder)",
                        path=path)
    try:
        tokenizer = Tokenizer.from_file(file)
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise DataError(f"cannot load tokenizer: {e}", path=file) from e
    config = _read_json(os.path.join(path, "tokenizer_config.json"))
    special = _read_json(os.path.join(path, "special_tokens_map.json"))

    def pick(name):
        return _token_text(config.get(name)) or _token_text(special.get(name))

    eos = pick("eos_token")
    if not eos:
        raise DataError("no eos_token in tokenizer_config.json or special_tokens_map.json",
                        path=path, field="eos_token")
    return Tok(tokenizer, path, eos, bos_token=pick("bos_token"), pad_token=pick("pad_token"),
               chat_template=_chat_template(path, config),
               add_bos_token=config.get("add_bos_token", False))
