"""Chat templates: zoo's apply_chat_template against Transformers' on templates modelled
on real Llama 3.1, Qwen 2.5/3, Mistral and Gemma ones, plus sandbox escape attempts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformers  # the oracle (a test dependency in pyproject)
from jinja2.exceptions import SecurityError, TemplateError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from zoo import chat_template as ct
from zoo.tokenization import AutoTokenizer

# ----------------------------------------------------------------------------- templates

# Llama 3.1: bos, system prompt with a date from strftime_now, tools as JSON in the first user turn.
LLAMA3 = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Qwen 2.5 / 3: tools as tojson lines, namespace to find the last real user query,
# reasoning_content in <think> blocks, tool responses grouped in one user turn.
QWEN = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

# Mistral v0.3-style: raise_exception unless roles alternate after an optional system message.
MISTRAL = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

# Gemma 3: assistant -> "model", system folded into the first user turn, content blocks.
GEMMA = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# Exercises the remaining helpers: tojson options, documents, loop, dict(), loopcontrols.
KITCHEN_SINK = r"""{%- set opts = dict(a=1, b="é") -%}
{{ opts | tojson(sort_keys=True) }}|{{ {"z": [1, 2], "y": "ü"} | tojson(indent=2, separators=(",", ": ")) }}
{%- for doc in documents or [] %}
[doc {{ loop.index }}/{{ loop.length }}] {{ doc.title }}: {{ doc.text }}
{%- endfor %}
{%- for m in messages %}
{%- if m.role == "skip" %}{% continue %}{% endif %}
{%- if m.role == "stop" %}{% break %}{% endif %}
<{{ m.role }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %}>{{ m.content }}
{%- endfor %}
{%- if add_generation_prompt %}<assistant>{% endif %}"""

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the weather in a city — with ünïcode.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
]

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi there! Quelle heure est-il? 😀"},
    {"role": "assistant", "content": "Hello! I cannot tell the time."},
    {"role": "user", "content": "  What's the weather in Paris?  "},
]
TOOL_CHAT = [
    {"role": "system", "content": "Use tools when useful."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
    {"role": "tool", "content": "22 degrees and sunny"},
]
REASONING_CHAT = [
    {"role": "user", "content": "Add 2 and 2."},
    {"role": "assistant", "content": "4", "reasoning_content": "2 plus 2 is 4."},
]

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|im_start|>", "<|im_end|>",
            "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>",
            "<start_of_turn>", "<end_of_turn>", "<start_of_image>"]


def build_chat_tokenizer(folder: Path, **config) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    corpus = [m["content"] for m in CHAT + REASONING_CHAT if isinstance(m.get("content"), str)] * 3
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    base = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>", "padding_side": "left",
            "chat_template": [{"name": "default", "template": QWEN}, {"name": "tool_use", "template": QWEN},
                              {"name": "llama3", "template": LLAMA3}, {"name": "mistral", "template": MISTRAL},
                              {"name": "gemma", "template": GEMMA}, {"name": "sink", "template": KITCHEN_SINK}]}
    (folder / "tokenizer_config.json").write_text(json.dumps({**base, **config}))
    return folder


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    folder = build_chat_tokenizer(tmp_path_factory.mktemp("chat"))
    return AutoTokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))


def both(toks, conversation, **kwargs):
    """apply_chat_template on ours and on Transformers' with the same arguments."""
    ours, ref = toks
    return ours.apply_chat_template(conversation, **kwargs), ref.apply_chat_template(conversation, **kwargs)


def as_plain(value):
    if hasattr(value, "keys"):
        return {k: as_plain(v) for k, v in dict(value).items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


# ----------------------------------------------------------------------------- parity

CASES = [
    ("default", CHAT, {}),
    ("default", TOOL_CHAT, {"tools": TOOLS}),
    ("default", REASONING_CHAT, {}),
    ("default", CHAT[1:], {"enable_thinking": False}),
    ("llama3", CHAT, {"date_string": "26 Jul 2024"}),
    ("llama3", TOOL_CHAT[1:], {"tools": TOOLS, "date_string": "01 Jan 2025"}),
    ("llama3", TOOL_CHAT, {"tools": TOOLS, "tools_in_user_message": False, "date_string": "01 Jan 2025"}),
    ("mistral", CHAT, {}),
    ("gemma", CHAT, {}),
    ("gemma", [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Describe it. "}]}], {}),
    ("sink", [{"role": "user", "content": "a"}, {"role": "skip", "content": "b"},
              {"role": "assistant", "content": "c"}, {"role": "stop", "content": "d"}, {"role": "user", "content": "e"}],
     {"documents": [{"title": "T1", "text": "first"}, {"title": "T2", "text": "second"}]}),
]


@pytest.mark.parametrize("name, chat, extra", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_render_matches_transformers(toks, name, chat, extra, add_generation_prompt):
    kwargs = dict(chat_template=name, add_generation_prompt=add_generation_prompt, **extra)
    got, want = both(toks, chat, tokenize=False, **kwargs)
    assert isinstance(got, str) and got == want
    got_ids, want_ids = both(toks, chat, tokenize=True, return_dict=False, **kwargs)
    assert got_ids == want_ids
    got_d, want_d = both(toks, chat, tokenize=True, return_dict=True, **kwargs)
    assert as_plain(got_d) == as_plain(want_d)
    assert got_d["input_ids"] == got_ids


def test_template_features_are_really_used(toks):
    ours, _ = toks
    qwen = ours.apply_chat_template(TOOL_CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert json.dumps(TOOLS[0], ensure_ascii=False) in qwen  # tojson, no HTML escaping, no ascii escapes
    assert qwen.endswith("<|im_start|>assistant\n")
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}' in qwen
    think = ours.apply_chat_template(REASONING_CHAT, tokenize=False)
    assert "<think>\n2 plus 2 is 4.\n</think>" in think  # namespace found the last query
    gemma = ours.apply_chat_template(CHAT, chat_template="gemma", tokenize=False)
    assert "<start_of_turn>model\nHello!" in gemma and "<start_of_turn>assistant" not in gemma
    assert gemma.startswith("<|begin_of_text|><start_of_turn>user\nYou are a helpful assistant.\n\nHi there!")
    llama = ours.apply_chat_template(TOOL_CHAT, chat_template="llama3", tools=TOOLS, tools_in_user_message=False,
                                     tokenize=False)
    assert json.dumps(TOOLS[0], indent=4, ensure_ascii=False) in llama


def test_strftime_now_date(toks):
    from datetime import datetime

    before = datetime.now().strftime("%d %b %Y")
    got, want = both(toks, CHAT, chat_template="llama3", tokenize=False)
    after = datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {before}" in got or f"Today Date: {after}" in got
    if before == after:
        assert got == want


@pytest.mark.parametrize("name", ["default", "llama3", "mistral", "gemma"])
def test_continue_final_message(toks, name):
    chat = [*CHAT[:3], {"role": "user", "content": "Write a haiku."},
            {"role": "assistant", "content": "Autumn moonlight — "}]
    kwargs = {"continue_final_message": True, "chat_template": name}
    if name == "llama3":
        kwargs["date_string"] = "26 Jul 2024"
    got, want = both(toks, chat, tokenize=False, **kwargs)
    assert got == want
    assert got.rstrip().endswith("Autumn moonlight —")  # no end-of-turn after the final message
    got_ids, want_ids = both(toks, chat, **kwargs, return_dict=False)
    assert got_ids == want_ids


def test_continue_final_message_reasoning_field(toks):
    chat = [{"role": "user", "content": "Add 2 and 2."},
            {"role": "assistant", "content": "", "reasoning_content": "2 plus 2"}]
    got, want = both(toks, chat, tokenize=False, continue_final_message="reasoning_content")
    assert got == want and got.endswith("<think>\n2 plus 2")


def test_batched_conversations_with_padding(toks):
    batch = [CHAT, CHAT[1:2], TOOL_CHAT[:2]]
    got, want = both(toks, batch, tokenize=False, add_generation_prompt=True)
    assert isinstance(got, list) and got == want
    for kwargs in ({"padding": True, "return_dict": True},
                   {"padding": True, "return_dict": True, "return_tensors": "np"},
                   {"padding": "max_length", "truncation": True, "max_length": 40, "return_dict": True},
                   {"return_dict": False},
                   {"truncation": True, "max_length": 10, "return_dict": False}):
        got, want = both(toks, batch, add_generation_prompt=True, **kwargs)
        assert as_plain(got) == as_plain(want), kwargs
    ours, _ = toks
    enc = ours.apply_chat_template(batch, padding=True, return_dict=True, return_tensors="jax")
    assert enc["input_ids"].shape[0] == 3 and int(enc["attention_mask"][1, 0]) == 0  # left padding from config


def test_template_selection(toks, tmp_path):
    ours, ref = toks
    assert ours.get_chat_template() == ref.get_chat_template() == QWEN
    assert ours.get_chat_template(tools=TOOLS) == QWEN
    assert ours.get_chat_template("gemma") == GEMMA
    inline = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    got, want = both(toks, CHAT, chat_template=inline, tokenize=False)
    assert got == want == "".join(f"[{m['role']}]{m['content']}" for m in CHAT)
    # no default among several named templates
    folder = build_chat_tokenizer(tmp_path / "nodefault", chat_template=[{"name": "a", "template": inline}])
    with pytest.raises(ValueError, match="available: \\['a'\\]"):
        AutoTokenizer.from_pretrained(folder).apply_chat_template(CHAT)
    # chat_template.jinja wins over the config and round-trips through save_pretrained
    folder = build_chat_tokenizer(tmp_path / "jinja")
    (folder / "chat_template.jinja").write_text(MISTRAL)
    tok = AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert tok.chat_template == MISTRAL == hf.chat_template
    assert tok.apply_chat_template(CHAT)["input_ids"] == hf.apply_chat_template(CHAT)["input_ids"]
    assert tok.apply_chat_template(CHAT, return_dict=False) == hf.apply_chat_template(CHAT, return_dict=False)
    tok.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert config["chat_template"] == MISTRAL
    assert AutoTokenizer.from_pretrained(tmp_path / "saved").chat_template == MISTRAL
    # named templates save as a list and load back as a dict
    ours.save_pretrained(tmp_path / "named")
    back = AutoTokenizer.from_pretrained(tmp_path / "named")
    assert back.chat_template == ours.chat_template and set(back.chat_template) >= {"default", "gemma"}
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path / "named")).chat_template == ours.chat_template
    # no template at all
    folder = build_chat_tokenizer(tmp_path / "none", chat_template=None)
    with pytest.raises(ValueError, match="no chat template"):
        AutoTokenizer.from_pretrained(folder).apply_chat_template(CHAT)


# ----------------------------------------------------------------------------- errors


def test_raise_exception_from_template(toks):
    ours, ref = toks
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    for name, match in (("mistral", "roles must alternate"), ("gemma", "roles must alternate")):
        with pytest.raises(TemplateError, match=match):
            ours.apply_chat_template(bad, chat_template=name)
        with pytest.raises(TemplateError, match=match):
            ref.apply_chat_template(bad, chat_template=name)
    with pytest.raises(TemplateError, match="single tool-calls"):
        two_calls = [{"role": "user", "content": "x"},
                     {"role": "assistant", "tool_calls": TOOL_CHAT[2]["tool_calls"] * 2}]
        ours.apply_chat_template(two_calls, chat_template="llama3", date_string="x")


@pytest.mark.parametrize("conversation, error, match", [
    ([], ValueError, "empty conversation"),
    ([[]], ValueError, "empty conversation"),
    ("hello", TypeError, "list of message dicts"),
    (["hello"], TypeError, "message 0"),
    ([{"content": "no role"}], ValueError, "no 'role'"),
    ([{"role": "user"}], ValueError, "no 'content'"),
    ([{"role": "user", "content": 5}], TypeError, "'content' must be"),
    ([{"role": "user", "content": ["not a block"]}], TypeError, "content block 0"),
    ([[{"role": "user", "content": "ok"}], [{"role": 3, "content": "x"}]], ValueError, "conversation 1"),
])
def test_malformed_messages(toks, conversation, error, match):
    ours, _ = toks
    with pytest.raises(error, match=match):
        ours.apply_chat_template(conversation, tokenize=False)


def test_bad_chat_arguments(toks):
    ours, _ = toks
    with pytest.raises(ValueError, match="cannot both be set"):
        ours.apply_chat_template(CHAT, add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(ValueError, match="final message has no"):
        ours.apply_chat_template(CHAT, continue_final_message="reasoning_content")
    with pytest.raises(ValueError, match="never reads"):
        ours.apply_chat_template(REASONING_CHAT, chat_template="gemma", continue_final_message="reasoning_content")
    with pytest.raises(ValueError, match="tools"):
        ours.apply_chat_template(CHAT, tools=[42])
    with pytest.raises(TypeError, match="documents"):
        ours.apply_chat_template(CHAT, documents=["not a dict"])
    with pytest.raises(TemplateError):
        ours.apply_chat_template(CHAT, chat_template="{% for %}")  # syntax error


def test_rich_objects_are_never_seen_by_templates(toks):
    ours, _ = toks
    import numpy as np

    template = "{{ obj }}|{{ flag }}|{{ n }}|{{ obj.read_text is defined }}"
    out = ours.apply_chat_template(CHAT, chat_template=template, tokenize=False, obj=Path("/etc/passwd"),
                                   flag=np.bool_(False), n=np.int64(3))
    assert out == "<PosixPath>|False|3|False"


# ----------------------------------------------------------------------------- sandbox

ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",
    "{{ ''['__class__'] }}",
    "{{ ''|attr('__class__') }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__globals__['datetime'] }}",
    "{{ dict.__call__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ messages|map(attribute='__class__')|list }}",
    "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "{% set ns = namespace() %}{% set ns.__dict__ = 1 %}",
    "{{ namespace(__class__=1) }}",
    "{{ messages.append({'role': 'system', 'content': 'injected'}) }}",
    "{{ config.__class__.__init__.__globals__['os'].popen('cat /etc/passwd').read() }}",
    "{{ config.items() }}",
    "{% include '/etc/passwd' %}",
    "{% import '/etc/passwd' as p %}{{ p }}",
    "{% from '/etc/passwd' import root %}",
    "{% extends '/etc/passwd' %}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escapes_fail_cleanly(toks, template):
    ours, _ = toks
    with pytest.raises(TemplateError) as info:
        ours.apply_chat_template(CHAT, chat_template=template, tokenize=False)
    message = str(info.value)
    assert message  # a clear message, not an empty error
    for leak in ("root:", "<class", "<built-in", "uid=", "<function", "<module"):
        assert leak not in message


@pytest.mark.parametrize("template", ESCAPES[:2] + ESCAPES[4:5] + ESCAPES[-4:])
def test_sandbox_errors_name_the_problem(template):
    with pytest.raises(SecurityError, match="attribute|templates may not"):
        ct.render_chat_template([CHAT], template)


def test_sandbox_still_allows_normal_methods(toks):
    ours, _ = toks
    template = ("{{ messages[1].content.strip().upper() }}|{{ messages|length }}|{{ 'a,b'.split(',') }}|"
                "{{ messages[0].get('role') }}|{{ messages[0].items()|list|length }}|{{ range(3)|list }}")
    assert ours.apply_chat_template(CHAT, chat_template=template, tokenize=False) == (
        "HI THERE! QUELLE HEURE EST-IL? 😀|4|['a', 'b']|system|2|[0, 1, 2]")
