"""A model's chat template, turned into the prompt wrapping a torch-free node can apply.

Instruction tuning with ``task.chat-template = "auto"`` trains on exactly what a chat model
reads at inference: ``tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
add_generation_prompt=True)``, then the response and the end-of-sequence token. Nodes hold only
``tokenizer.json`` (the ``tokenizers`` library, no Jinja, no transformers), so the server renders
the template once here and splits the result around the prompt into a ``prefix`` and a
``suffix``. These travel in the signed plan inside ``task.template`` (as literal text around the
prompt placeholder); a node only joins strings and tokenizes, and the JavaScript node could do the
same.

The split is exact only for templates that copy the message text unchanged (SmolLM2, ChatML,
Mistral, Gemma...). It is checked on probe prompts, rendered and tokenized both ways: a template
that edits the text (``| trim``) or a tokenizer whose special tokens do not line up is refused
with a clear error instead of training on a format inference will not reproduce.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola_fed.errors import ConfigError

KEY = "task.chat-template"
#: stands for the prompt while the template is rendered once
SENTINEL = "\u2063cola-fed-prompt\u2063"
#: prompts the split is checked on: words, lines, braces, non-ASCII, edge whitespace
PROBES = ("Hello", "Line one\nline {two}: ümlaut, 数字 & <b>tags</b>?", "  spaced out  ")


@dataclass(frozen=True)
class ChatWrapping:
    """The text a chat template puts around a user prompt (generation prompt included)."""

    prefix: str
    suffix: str

    def wrap(self, prompt: str) -> str:
        return f"{self.prefix}{prompt}{self.suffix}"

    def template(self, prompt_template: str) -> str:
        """``prompt_template`` (``str.format_map`` syntax) wrapped, the literal text escaped."""
        escape = lambda text: text.replace("{", "{{").replace("}", "}}")  # noqa: E731
        return f"{escape(self.prefix)}{prompt_template}{escape(self.suffix)}"


def has_chat_template(folder: Path) -> bool:
    """Whether the model folder's tokenizer carries a chat template (read as plain files:
    ``chat_template.jinja``, ``chat_template.json`` or ``tokenizer_config.json``)."""
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def chat_wrapping(folder: Path, tokenizer_json: Path) -> ChatWrapping | None:
    """The prompt wrapping of the model in ``folder``, or ``None`` when it has no template.

    Parameters
    ----------
    folder : pathlib.Path
        The model folder (its tokenizer files, read with transformers' ``AutoTokenizer``).
    tokenizer_json : pathlib.Path
        The ``tokenizer.json`` the nodes tokenize with; the wrapping must give, through it with
        its special tokens, the ids ``apply_chat_template`` gives.

    Raises
    ------
    ConfigError
        When the template cannot be rendered, edits the prompt text, or its ids cannot be
        reproduced from the wrapped text.
    """
    if not has_chat_template(folder):
        return None
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{KEY}: cannot load the tokenizer of {folder} to read its chat "
                          f"template ({err}); set {KEY} = \"none\"") from None
    if not getattr(tokenizer, "chat_template", None):
        return None
    fast = Tokenizer.from_file(str(tokenizer_json))
    fast.no_padding()
    fast.no_truncation()
    rendered = _render(tokenizer, SENTINEL)
    if rendered.count(SENTINEL) != 1:
        raise ConfigError(f"{KEY}: the chat template of {folder} does not copy the prompt "
                          f"into its output once; set {KEY} = \"none\" and write the format "
                          "in task.template")
    prefix, suffix = rendered.split(SENTINEL)
    whole = ChatWrapping(prefix, suffix)
    if any(_render(tokenizer, probe) != whole.wrap(probe) for probe in PROBES):
        raise ConfigError(f"{KEY}: the chat template of {folder} changes the prompt text (it "
                          "trims or edits it), so nodes cannot reproduce it by joining text; "
                          f"set {KEY} = \"none\" and write the format in task.template")
    expected = {probe: list(tokenizer(whole.wrap(probe), add_special_tokens=False)["input_ids"])
                for probe in PROBES}
    candidates = [whole]
    bos = getattr(tokenizer, "bos_token", None)
    if bos and prefix.startswith(bos):  # tokenizer.json's post-processor adds it itself
        candidates.append(ChatWrapping(prefix[len(bos):], suffix))
    for wrapping in candidates:
        if all(fast.encode(wrapping.wrap(probe), add_special_tokens=True).ids == ids
               for probe, ids in expected.items()):
            return wrapping
    raise ConfigError(f"{KEY}: the ids apply_chat_template gives for {folder} cannot be "
                      "reproduced from tokenizer.json with its special tokens (as nodes "
                      f"tokenize); set {KEY} = \"none\" and write the format in task.template")


def _render(tokenizer: Any, prompt: str) -> str:
    try:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)
    except Exception as err:  # jinja2 errors: a template that raises, needs other roles...
        raise ConfigError(f"{KEY}: the model's chat template fails on a user message "
                          f"({type(err).__name__}: {err}); set {KEY} = \"none\"") from None
