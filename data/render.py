"""Records -> text: the response for each arm and the prompt template a model sees."""
import json
from datetime import datetime

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<Thinking>", "</Thinking>", "<Answer>", "</Answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
ANSWER_PHRASE = "The answer is "
PLAIN_TEMPLATE = "Problem: {prompt}\nSolution:\n"
STYLES = ("tagged", "plain")
TEMPLATES = ("plain", "chat")


def render_response(record, style="tagged"):
    """(response text without EOS, index of the first Key character in it).

    tagged: "<Thinking>{thinking}</Thinking><Answer>{answer}</Answer>", Key from "<Answer>";
    plain: "{thinking}\\nThe answer is {answer}", Key from "The answer is".
    """
    if style == "tagged":
        cot = f"{THINK_OPEN}{record.thinking}{THINK_CLOSE}"
        return f"{cot}{ANSWER_OPEN}{record.answer}{ANSWER_CLOSE}", len(cot)
    if style == "plain":
        cot = f"{record.thinking}\n" if record.thinking else ""
        return f"{cot}{ANSWER_PHRASE}{record.answer}", len(cot)
    raise ValueError(f"unknown response style {style!r}; use one of {STYLES}")


def _compile(template):
    # Rendered like transformers' apply_chat_template: sandbox, trim/lstrip blocks, same globals.
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        # {% generation %} marks assistant text for HF's assistant masks; here it only renders.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


_compiled = {}


def render_chat(tok, messages, add_generation_prompt=True, **kwargs):
    """Render messages with the tokenizer's own chat template (jinja2)."""
    if not tok.chat_template:
        raise ValueError(f"{tok.path}: the tokenizer has no chat_template (tokenizer_config.json or "
                         "chat_template.jinja); use template='plain'")
    if tok.chat_template not in _compiled:
        _compiled[tok.chat_template] = _compile(tok.chat_template)
    special = {"bos_token": tok.bos_token or "", "eos_token": tok.eos_token,
               "pad_token": tok.pad_token}
    return _compiled[tok.chat_template].render(messages=messages, tools=None, documents=None,
                                               add_generation_prompt=add_generation_prompt,
                                               **special, **kwargs)


def render_prompt(record, tok, template="plain", system=None):
    """The text a model sees before its response (training prefix and generation prompt)."""
    if template == "plain":
        bos = tok.bos_token if tok.add_bos_token else ""
        return bos + PLAIN_TEMPLATE.format(prompt=record.prompt)
    if template == "chat":
        messages = ([{"role": "system", "content": system}] if system else [])
        return render_chat(tok, messages + [{"role": "user", "content": record.prompt}])
    raise ValueError(f"unknown prompt template {template!r}; use one of {TEMPLATES}")
