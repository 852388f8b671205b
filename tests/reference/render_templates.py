#!/usr/bin/env python3
"""Render chat templates with jinja2 exactly as transformers does, for the Rust renderer's goldens.

transformers (`utils/chat_template_utils.py`) compiles chat templates in an
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols
extension, a `tojson` filter that is plain json.dumps (ensure_ascii=False, no HTML escaping) and a
`raise_exception` global, and renders them with messages, add_generation_prompt and the special
tokens. This script does the same for each case below and writes
tests/reference/goldens/chat_templates.json, which engine/src/text/chat_template.rs compares to.

Run:  python3 tests/reference/render_templates.py     (needs only `pip install jinja2`)
"""

import json
import pathlib

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

OUT = pathlib.Path(__file__).resolve().parent / "goldens" / "chat_templates.json"


class TemplateError(Exception):
    pass


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
ENV.filters["tojson"] = tojson
ENV.globals["raise_exception"] = raise_exception

TEMPLATES = {
    # microsoft/bitnet-b1.58-2B-4T tokenizer_config.json: LLaMA-3's template with "Role: " turns.
    "bitnet_2b4t": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
    ),
    # The same turns without bos_token, as GGUF conversions of 2B-4T ship it: the tokenizer must add it.
    "bitnet_2b4t_no_bos": (
        "{% for message in messages %}"
        "{{ message['role'] | capitalize + ': ' + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
    ),
    # Meta-Llama-3-8B-Instruct; the engine's LLAMA3_TEMPLATE must equal it.
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # The engine's CHATML_TEMPLATE.
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
        " + '<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # The engine's PLAIN_TEMPLATE.
    "plain": (
        "{{ bos_token }}{% for message in messages %}"
        "{{ message['role'] | capitalize + ': ' + message['content'] | trim + '\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
    # Mistral-style alternation check: raise_exception, messages[0]['role'], slicing.
    "alternating": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
        "{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}{% if loop.first and system %}"
        "{{ '[INST] ' + system + '\n\n' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
        "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    # Multi-line template leaning on trim_blocks/lstrip_blocks, `-` whitespace control, Python
    # string methods, loop.first/last, tojson (plain and indented, non-ASCII), namespace, break.
    "features": """{%- set ns = namespace(turns=0) -%}
{% for message in messages %}
    {% if message.content.strip().startswith('/stop') %}
        {% break %}
    {% endif %}
    {% set ns.turns = ns.turns + 1 %}
    <{{ message.role.upper() }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %}>
    {{ message['content'].strip() | replace('\\n', ' / ') }}
    {{ message | tojson }}
{% endfor %}
turns={{ ns.turns }} first_role={{ messages[0]['role'] }}
{{ {'b': [1, 2.5, true, none], 'a': 'é"\\\\'} | tojson(indent=2) }}
{{ {'z': 1, 'a': {}} | tojson(sort_keys=true) }}
{% if add_generation_prompt %}
    <ASSISTANT>
{% endif %}
""",
}

MESSAGES = {
    "system_user": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "  Hello, who are you?\n"},
    ],
    "multi_turn": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Und auf Deutsch? 🙂 « vier » 世界"},
    ],
    "not_alternating": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
    "with_stop": [
        {"role": "user", "content": "line one\nline two"},
        {"role": "assistant", "content": "  /stop here"},
        {"role": "user", "content": "never shown"},
    ],
}

CASES = [
    (t, m, g)
    for t in ["bitnet_2b4t", "bitnet_2b4t_no_bos", "llama3", "chatml", "plain"]
    for m in ["system_user", "multi_turn"]
    for g in [True, False]
] + [
    ("alternating", "system_user", False),
    ("alternating", "multi_turn", False),
    ("alternating", "not_alternating", False),
    ("features", "system_user", True),
    ("features", "multi_turn", False),
    ("features", "with_stop", True),
]


def main():
    cases = []
    for template, messages, add_generation_prompt in CASES:
        case = {
            "template": template,
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
        }
        try:
            case["output"] = ENV.from_string(TEMPLATES[template]).render(
                messages=MESSAGES[messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=case["bos_token"],
                eos_token=case["eos_token"],
            )
        except TemplateError as e:
            case["error"] = str(e)
        cases.append(case)
    golden = {"jinja2": jinja2.__version__, "templates": TEMPLATES, "messages": MESSAGES, "cases": cases}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
