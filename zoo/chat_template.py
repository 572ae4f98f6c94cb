"""Chat templates: render a conversation to a prompt string with a Hub Jinja template.

Pure functions, no tokenizer state: the tokenizer passes in its template(s) and
special tokens and tokenizes the result itself. Semantics follow Transformers v5
(``apply_chat_template`` / ``render_jinja_template``) so the same template and the
same messages give byte-identical prompts; the code is our own.

Templates come from the Hub and are untrusted code. They run in Jinja's
``ImmutableSandboxedEnvironment``, and on top of that:

* every value a template sees is rebuilt from plain JSON types, so no caller object
  with dangerous methods (files, arrays, tensors) reaches the template;
* touching an unsafe attribute (``__class__``, ``__globals__``, ``_private``...) raises
  a ``jinja2.exceptions.SecurityError`` at once, instead of Jinja's default of
  quietly rendering an empty string (which hides the attempt);
* ``{% include %}``, ``{% import %}``, ``{% from %}`` and ``{% extends %}`` are
  rejected when the template is compiled: a chat template has no business loading
  other files.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping, Sequence

import jinja2
import numpy as np
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "TemplateError",
    "SecurityError",
    "compile_chat_template",
    "render_chat_template",
    "select_chat_template",
    "validate_conversation",
    "is_batched_conversation",
]

# Fields a message's reasoning may be passed under; the first is the one templates read.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# Appended to the final message so the end of the message can be found after rendering.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_FORBIDDEN_NODES = (jinja2.nodes.Include, jinja2.nodes.Import, jinja2.nodes.FromImport, jinja2.nodes.Extends)


# ----------------------------------------------------------------------------- environment


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """Immutable sandbox that fails loudly on unsafe attribute access.

    Jinja's sandbox returns an Undefined for ``''.__class__`` that renders as an empty
    string; a probe then goes unnoticed. Raising makes escape attempts visible.
    """

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        why = ("templates may not touch private or internal attributes" if attribute.startswith("_")
               else "templates are read-only and may not call methods that modify values")
        raise SecurityError(
            f"chat template tried to access attribute {attribute!r} of a {type(obj).__name__!r} object; {why}"
        )


class _GenerationTag(jinja2.ext.Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` (used by some templates to mark
    assistant text for training masks) and render its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _TemplateDict:
    """``dict(...)`` for templates without exposing the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's ``namespace`` that refuses underscore-prefixed names (no dunder smuggling)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - same trick as Jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot store underscore-prefixed attribute {name!r} on a namespace")


def _raise_exception(message: str) -> None:
    """Templates call this to reject inputs (e.g. roles that do not alternate)."""
    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Sequence[str] | None = None, sort_keys: bool = False) -> str:
    """Plain ``json.dumps``: Jinja's own filter HTML-escapes, which would change prompts."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent,
                      separators=tuple(separators) if separators is not None else None, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:  # noqa: A002 - name used by templates
    """Today's date in the template's format (Llama 3 puts it in the system prompt)."""
    return datetime.now().strftime(format)


def _make_environment() -> _ChatSandbox:
    env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True,
                       extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


_ENV = _make_environment()


@lru_cache(maxsize=64)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile a template once (cached by its text) after rejecting file-loading tags.

    Raises ``TemplateSyntaxError`` for bad syntax and ``SecurityError`` for
    include/import/extends, both subclasses of ``jinja2.TemplateError``.
    """
    if not isinstance(template, str):
        raise TypeError(f"a chat template must be a string, got {type(template).__name__}")
    ast = _ENV.parse(template)
    for node in ast.find_all(_FORBIDDEN_NODES):
        tag = type(node).__name__.lower().replace("fromimport", "from ... import")
        raise SecurityError(
            f"chat template uses {{% {tag} %}} (line {node.lineno}); templates may not load other "
            "templates or files"
        )
    return _ENV.from_string(ast)


# ----------------------------------------------------------------------------- inputs


def _plain(value: Any) -> Any:
    """Rebuild ``value`` from plain JSON types; anything else becomes a ``<TypeName>`` string.

    Rich objects (arrays, images, enum members...) carry methods the sandbox does not
    know are dangerous, so the template never sees them.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):  # np.bool_(False) must not become a truthy placeholder
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):  # pydantic models (e.g. OpenAI SDK messages)
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def is_batched_conversation(conversation: Any) -> bool:
    """A batch is a list of conversations, each a list of messages."""
    return (isinstance(conversation, (list, tuple)) and len(conversation) > 0
            and isinstance(conversation[0], (list, tuple)))


def validate_conversation(conversation: Any, index: int | None = None) -> list[dict]:
    """Check one conversation and return it as a list of plain dicts, ``None`` values dropped.

    Raises ValueError/TypeError naming the offending message, so a malformed chat fails
    here rather than deep inside a template with an obscure Jinja error.
    """
    where = "" if index is None else f" (conversation {index} of the batch)"
    conversation = getattr(conversation, "messages", conversation)
    if not isinstance(conversation, (list, tuple)):
        raise TypeError(f"a conversation must be a list of message dicts{where}, got {type(conversation).__name__}")
    if len(conversation) == 0:
        raise ValueError(f"cannot apply a chat template to an empty conversation{where}; provide at least one message")
    messages = []
    for i, message in enumerate(conversation):
        if dataclasses.is_dataclass(message) and not isinstance(message, type):
            message = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
        elif callable(getattr(message, "model_dump", None)):
            message = message.model_dump()
        if not isinstance(message, Mapping):
            raise TypeError(f"message {i}{where} must be a dict with 'role' and 'content', got {message!r}")
        message = {k: v for k, v in message.items() if v is not None}
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"message {i}{where} has no 'role' string: {message!r}")
        content = message.get("content")
        if content is None and not any(k in message for k in ("tool_calls", *_REASONING_FIELDS)):
            raise ValueError(f"message {i}{where} (role {role!r}) has no 'content' (nor 'tool_calls')")
        if content is not None and not isinstance(content, (str, list, tuple)):
            raise TypeError(
                f"message {i}{where}: 'content' must be a string or a list of content blocks, "
                f"got {type(content).__name__}"
            )
        if isinstance(content, (list, tuple)):
            for j, block in enumerate(content):
                if not isinstance(block, Mapping):
                    raise TypeError(f"message {i}{where}: content block {j} must be a dict, got {block!r}")
        messages.append(message)
    return messages


def _alias_reasoning_fields(chat: list[dict]) -> list[dict]:
    """Fill ``reasoning_content`` (and ``thinking``, read by gpt-oss) from whichever name was used."""
    out = []
    for message in chat:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _tool_schemas(tools: Sequence[Any] | None) -> list[dict] | None:
    """Tools are JSON schemas; plain Python functions are converted if Transformers is there."""
    if tools is None:
        return None
    if not isinstance(tools, (list, tuple)):
        raise TypeError(f"tools must be a list of JSON schemas (dicts), got {type(tools).__name__}")
    schemas = []
    for tool in tools:
        if isinstance(tool, Mapping):
            schemas.append(tool)
        elif callable(tool):
            try:
                from transformers.utils import get_json_schema
            except ImportError as err:
                raise ValueError(
                    f"tool {tool!r} is a function; pass its JSON schema as a dict instead "
                    "(converting functions needs the optional 'transformers' package)"
                ) from err
            schemas.append(get_json_schema(tool))
        else:
            raise ValueError(f"tools should be JSON schemas (dicts) or functions, got {tool!r}")
    return schemas


def select_chat_template(templates: str | Mapping[str, str] | None, chat_template: str | None = None,
                         tools: Any = None) -> str:
    """Pick the template text: an explicit template or template name wins, then the
    model's ``tool_use`` template when tools are given, then ``default``."""
    if isinstance(templates, Mapping):
        if chat_template is not None and chat_template in templates:
            return templates[chat_template]
        if chat_template is None:
            if tools is not None and "tool_use" in templates:
                return templates["tool_use"]
            if "default" in templates:
                return templates["default"]
            raise ValueError(
                "this tokenizer has several chat templates and none is called 'default'; pass the name of one "
                f"as chat_template=... (available: {sorted(templates)})"
            )
        return chat_template
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ValueError(
            "no chat template: the tokenizer has none (tokenizer_config.json 'chat_template' or "
            "chat_template.jinja) and none was passed as chat_template=..."
        )
    return templates


def render_chat_template(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    template: str,
    *,
    tools: Sequence[Any] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    continue_final_message: bool | str = False,
    **template_kwargs: Any,
) -> list[str]:
    """Render each conversation with ``template``; returns one prompt string per conversation.

    ``continue_final_message`` (True, or the field name to continue, e.g.
    ``"reasoning_content"``) leaves the final message open, cutting whatever the
    template writes after it (end-of-turn tokens), so the model continues it.
    """
    if continue_final_message and add_generation_prompt:
        raise ValueError(
            "continue_final_message and add_generation_prompt cannot both be set: one continues the last "
            "message, the other starts a new assistant message"
        )
    compiled = compile_chat_template(template)
    tool_schemas = _plain(_tool_schemas(tools))
    if documents is not None:
        if not isinstance(documents, (list, tuple)) or not all(isinstance(d, Mapping) for d in documents):
            raise TypeError("documents should be a list of dicts with 'title' and 'text' keys")
    documents = _plain(documents)
    template_kwargs = _plain(template_kwargs)

    rendered_all = []
    for index, conversation in enumerate(conversations):
        chat = _alias_reasoning_fields(_plain(validate_conversation(conversation, index)))
        final_text = None
        if continue_final_message:
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            final = chat[-1].get(field)
            if final is None:
                raise ValueError(f"continue_final_message is set but the final message has no {field!r} to continue")
            fields = [field]
            if field in _REASONING_FIELDS:
                fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final]
            if not any(f in template for f in fields):
                raise ValueError(f"continue_final_message is set to {field!r} but the chat template never reads it")
            if isinstance(final, (list, tuple)):
                for block in reversed(final):
                    if "text" in block:
                        final_text = block["text"]
                        block["text"] = block["text"] + _CONTINUE_TAG
                        break
                else:
                    raise ValueError("continue_final_message is set but the final message has no text block")
            else:
                final_text = final
                for f in fields:
                    chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
        rendered = compiled.render(messages=chat, tools=tool_schemas, documents=documents,
                                   add_generation_prompt=add_generation_prompt, **template_kwargs)
        if continue_final_message:
            tag = _CONTINUE_TAG.strip()
            if final_text.strip() not in rendered or tag not in rendered:
                raise ValueError(
                    "continue_final_message is set but the final message does not appear in the rendered chat; "
                    "the template changes or drops it. Final message: " + final_text.strip()
                )
            cut = rendered.rindex(tag)
            if rendered[cut:cut + len(_CONTINUE_TAG)] == _CONTINUE_TAG:
                rendered = rendered[:cut]
            else:  # the template trimmed the message's trailing whitespace
                rendered = rendered[:cut].rstrip()
        rendered_all.append(rendered)
    return rendered_all

