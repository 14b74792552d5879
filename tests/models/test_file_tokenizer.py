"""`load_file_tokenizer` against transformers' `AutoTokenizer` on the same directory.

Every test loads a saved tokenizer both ways and asserts the two agree: encoding a corpus of
awkward strings, decoding, the vocabulary id by id, the special tokens, and chat templates that
lean on what transformers' jinja environment does (trimmed blocks, `tojson`, `raise_exception`,
namespaces, loop controls, `{% generation %}`). The tiny tokenizer runs in a second; the embedded
model's own tokenizer (`slow`) is read from the weights cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ppl.models.hf.file_tokenizer import FileTokenizer, load_file_tokenizer

CORPUS = [
    "",
    " ",
    "hello world",
    "  leading and trailing spaces  ",
    "runs   of\t\ttabs and    spaces",
    "line one\nline two\n\n\nline five\r\nwindows",
    "Héllo wörld, naïve café — “quotes” and ‘apostrophes’",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 and flags 🇫🇷",
    "日本語のテキストと한국어 텍스트",
    "zero\u200bwidth and combining e\u0301",
    "<s>hello</s>",
    "a<s>b</s>c<s></s>",
    "<s> spaced </s>",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<|endoftext|>",
    "<|im_start|<|im_end|>|>",
    "numbers 1234567890 3.14159 -42",
    "code: def f(x):\n    return x ** 2  # square",
    "x" * 300,
    "ends with a newline\n",
]

MESSAGES = {
    "user": [{"role": "user", "content": "What is 2 + 2?"}],
    "system": [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Name a colour."},
    ],
    "turns": [
        {"role": "system", "content": "Be kind.\n"},
        {"role": "user", "content": "Hi there!  "},
        {"role": "assistant", "content": "Hello 😀 — how can I help?"},
        {"role": "user", "content": 'Say "<s>" and a newline\nplease'},
    ],
    "no system": [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
    ],
}

# `bos_token`, `raise_exception`, `loop.last`, and indentation that trim_blocks and
# lstrip_blocks remove
INDENTED = """\
{{ bos_token }}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role: ' + message['role']) }}
    {% endif %}
    {{ '<' + message['role'] + '>' }} {{ message['content'] | trim }}
    {% if not loop.last %}
{{ '\\n' }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
    <assistant>
{% endif %}
"""
# `tojson` (with arguments), `namespace`, `eos_token`, the `tools` and `documents` variables
JSON = """\
{% set ns = namespace(system='', count=0) %}
{% for m in messages %}
{% if m.role == 'system' %}{% set ns.system = m.content %}{% endif %}
{% endfor %}
{% if tools is none and documents is none %}no tools{% else %}tools: {{ tools | tojson }}{% endif %}

{% if ns.system %}SYSTEM {{ ns.system | tojson }}
{% endif %}
{% for m in messages if m.role != 'system' %}
{% set ns.count = ns.count + 1 %}
{{ ns.count }}. {{ m | tojson(sort_keys=True) }}{{ eos_token if m.role == 'assistant' }}
{% endfor %}
{% if add_generation_prompt %}{{ {'role': 'assistant', 'text': 'é'} | tojson(indent=2) }}{% endif %}
"""
# loop controls, `{% generation %}`, `strftime_now`, whitespace control, a caller's variable
CONTROLS = """\
{%- for message in messages -%}
{%- if message.role == 'system' and not include_system | default(true) %}{% continue %}{% endif -%}
<|{{ message.role }}|>
{% if message.role == 'assistant' %}{% generation %}{{ message.content }}{% endgeneration %}\
{% else %}{{ message.content }}{% endif %}</s>
{% if loop.index > 3 %}{% break %}{% endif %}
{% endfor -%}
{%- if add_generation_prompt %}<|assistant|>
{% endif -%}
{{ strftime_now('%Y') | length }} digits in the year, {{ dict(a=1) | length }} key
"""
TEMPLATES = {"indented": INDENTED, "json": JSON, "controls": CONTROLS}


def save_tiny(directory: Path, template: str | None, **options) -> Path:
    from ppl.models.hf.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer(CORPUS + [m["content"] for ms in MESSAGES.values() for m in ms])
    tokenizer.chat_template = template
    tokenizer.save_pretrained(directory, **options)
    return directory


def both(directory: Path) -> tuple[object, FileTokenizer]:
    """transformers' tokenizer of `directory` and ours."""
    from transformers import AutoTokenizer

    ours = load_file_tokenizer(directory)
    assert ours is not None
    return AutoTokenizer.from_pretrained(directory), ours


def assert_same(hf, ours: FileTokenizer, corpus: list[str]) -> None:
    """Everything but the chat template gives the same answer."""
    assert len(ours) == len(hf)
    assert ours.vocab_size == hf.vocab_size
    assert ours.get_vocab() == hf.get_vocab()
    ids = list(range(len(hf) + 3))  # and ids past the end
    assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert [ours.convert_ids_to_tokens(i) for i in ids] == [
        hf.convert_ids_to_tokens(i) for i in ids
    ]
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == hf.convert_ids_to_tokens(
        ids, skip_special_tokens=True
    )
    tokens = [*hf.get_vocab(), "not a token", "<unknown>", ""]
    assert ours.convert_tokens_to_ids(tokens) == hf.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("not a token") == hf.convert_tokens_to_ids("not a token")
    for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(hf, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id"), name
    assert ours.special_tokens_map == hf.special_tokens_map
    assert ours.all_special_tokens == hf.all_special_tokens
    assert ours.all_special_ids == hf.all_special_ids
    assert {i: t.__getstate__() for i, t in ours.added_tokens_decoder.items()} == {
        i: t.__getstate__() for i, t in hf.added_tokens_decoder.items()
    }
    assert ours.model_max_length == hf.model_max_length
    assert ours.chat_template == hf.chat_template
    assert ours.name_or_path == hf.name_or_path
    for text in corpus:
        for special in (True, False):
            encoded = ours.encode(text, add_special_tokens=special)
            assert encoded == hf.encode(text, add_special_tokens=special), (text, special)
            for skip in (False, True):
                assert ours.decode(encoded, skip) == hf.decode(encoded, skip), (text, skip)
    every_id = list(range(len(hf)))
    for skip in (False, True):
        assert ours.decode(every_id, skip_special_tokens=skip) == hf.decode(
            every_id, skip_special_tokens=skip
        )
        assert [ours.decode(i, skip) for i in every_id] == [hf.decode(i, skip) for i in every_id]


def assert_same_chats(hf, ours: FileTokenizer, **variables) -> None:
    for name, messages in MESSAGES.items():
        for prompt in (False, True):
            options = dict(add_generation_prompt=prompt, **variables)
            text = ours.apply_chat_template(messages, tokenize=False, **options)
            assert text == hf.apply_chat_template(messages, tokenize=False, **options), name
            ids = ours.apply_chat_template(messages, **options)
            assert ids == hf.apply_chat_template(messages, return_dict=False, **options), name
            assert ids == ours.encode(text, add_special_tokens=False)
            mapping = ours.apply_chat_template(messages, return_dict=True, **options)
            expected = hf.apply_chat_template(messages, return_dict=True, **options)
            assert mapping == {k: expected[k] for k in ("input_ids", "attention_mask")}


# -- the tiny tokenizer --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return both(save_tiny(tmp_path_factory.mktemp("tiny"), INDENTED))


def test_the_tiny_tokenizer_matches_transformers(tiny):
    hf, ours = tiny
    assert ours.bos_token == "<s>" and ours.encode("hi")[0] == ours.bos_token_id  # as tiny.py says
    assert_same(hf, ours, CORPUS)


def test_decode_takes_tensors_and_batches_as_transformers_does(tiny):
    import torch

    hf, ours = tiny
    rows = [ours.encode(text) for text in ("one two", "three four")]
    assert ours.decode(torch.tensor(rows[0])) == hf.decode(torch.tensor(rows[0]))
    assert ours.decode(rows) == hf.decode(rows) == [ours.decode(row) for row in rows]


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("where", ["jinja file", "tokenizer_config.json"])
def test_chat_templates_render_as_in_transformers(tmp_path, name, where):
    directory = save_tiny(tmp_path, TEMPLATES[name], save_jinja_files=where == "jinja file")
    assert (directory / "chat_template.jinja").exists() == (where == "jinja file")
    hf, ours = both(directory)
    assert ours.chat_template == hf.chat_template == TEMPLATES[name]
    assert_same_chats(hf, ours)
    if name == "controls":
        assert_same_chats(hf, ours, include_system=False)
    if name == "json":
        tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
        assert_same_chats(hf, ours, tools=tools)


def test_a_template_that_raises_raises_the_same_error(tmp_path):
    import jinja2

    hf, ours = both(save_tiny(tmp_path, INDENTED))
    chat = [{"role": "tool", "content": "42"}]
    with pytest.raises(jinja2.TemplateError, match="unknown role: tool"):
        hf.apply_chat_template(chat, tokenize=False)
    with pytest.raises(jinja2.TemplateError, match="unknown role: tool"):
        ours.apply_chat_template(chat, tokenize=False)


def test_continuing_the_final_message_cuts_where_transformers_does(tmp_path):
    hf, ours = both(save_tiny(tmp_path, CONTROLS))
    for content in ("The answer is", "The answer is ", "Trailing newline\n"):
        chat = [*MESSAGES["user"], {"role": "assistant", "content": content}]
        text = ours.apply_chat_template(chat, tokenize=False, continue_final_message=True)
        assert text.rstrip().endswith(content.rstrip())
        assert text == hf.apply_chat_template(chat, tokenize=False, continue_final_message=True)


def test_messages_with_none_fields_and_reasoning_render_as_in_transformers(tmp_path):
    template = "{% for m in messages %}{{ m | tojson }}\n{% endfor %}"
    hf, ours = both(save_tiny(tmp_path, template))
    chat = [
        {"role": "user", "content": "q", "name": None},
        {"role": "assistant", "content": "a", "reasoning": "because", "tool_calls": None},
    ]
    text = ours.apply_chat_template(chat, tokenize=False)
    assert text == hf.apply_chat_template(chat, tokenize=False)
    assert chat[0]["name"] is None  # the caller's messages are left as they were


def test_without_a_chat_template_applying_one_is_a_value_error(tmp_path):
    hf, ours = both(save_tiny(tmp_path, None))
    assert ours.chat_template is None is hf.chat_template
    with pytest.raises(ValueError, match="no chat template"):
        ours.apply_chat_template(MESSAGES["user"])
    with pytest.raises(ValueError):
        hf.apply_chat_template(MESSAGES["user"])


def test_special_tokens_that_tokenizer_json_lacks_are_added_as_transformers_adds_them(tmp_path):
    directory = save_tiny(tmp_path, None)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.pop("added_tokens_decoder", None)  # so that transformers reads special_tokens_map.json
    config["unk_token"] = "<unk>"
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    special_map = {
        "pad_token": {"content": "<pad>", "lstrip": False, "normalized": False, "rstrip": False},
        "eos_token": "</s>",
        "additional_special_tokens": ["<tool>", "<s>"],
    }
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map))
    hf, ours = both(directory)
    assert len(ours) == len(hf) == ours.vocab_size + 3  # <unk>, <pad> and <tool> appended
    assert ours.all_special_tokens == ["<s>", "</s>", "<unk>", "<pad>", "<tool>"]
    assert_same(hf, ours, [*CORPUS, "a<pad>b<tool>c<unk>", "<tool><tool>"])


# -- what it leaves to transformers ------------------------------------------------------------


def edit_config(directory: Path, **changes) -> None:
    path = directory / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "change",
    [
        lambda d: edit_config(d, add_bos_token=True),
        lambda d: edit_config(d, add_prefix_space=True),
        lambda d: edit_config(d, legacy=False),
        lambda d: edit_config(d, clean_up_tokenization_spaces=True),
        lambda d: edit_config(d, tokenizer_class="LlamaTokenizerFast"),
        lambda d: edit_config(d, image_token="<image>"),
        lambda d: edit_config(d, extra_special_tokens={"image_token": "<image>"}),
        lambda d: edit_config(d, bos_token={"content": "<s>"}),  # transformers rejects this dict
        lambda d: edit_config(d, added_tokens_decoder={"0": {"content": "<other>"}}),
        lambda d: (d / "tokenizer.json").unlink(),
        lambda d: (d / "tokenizer_config.json").unlink(),
        lambda d: (d / "config.json").write_text(json.dumps({"model_type": "qwen2"})),
        lambda d: (d / "added_tokens.json").write_text("{}"),
    ],
    ids=[
        *("add_bos_token", "add_prefix_space", "legacy", "clean_up_spaces", "llama_class"),
        *("model_specific_token", "extra_tokens_dict", "untyped_token_dict"),
        *("other_added_token", "no_tokenizer_json", "no_config", "qwen2", "added_tokens_json"),
    ],
)
def test_settings_it_does_not_interpret_give_none(tmp_path, change):
    directory = save_tiny(tmp_path, INDENTED)
    assert load_file_tokenizer(directory) is not None
    change(directory)
    assert load_file_tokenizer(directory) is None


def test_loading_does_not_import_transformers(tmp_path):
    directory = save_tiny(tmp_path, INDENTED)
    script = textwrap.dedent(
        f"""
        import sys
        from ppl.models.hf.file_tokenizer import load_file_tokenizer
        tokenizer = load_file_tokenizer({str(directory)!r})
        assert tokenizer is not None
        assert tokenizer.decode(tokenizer.encode("hello world")) == "<s>hello world"
        tokenizer.apply_chat_template([{{"role": "user", "content": "hi"}}])
        assert "transformers" not in sys.modules, "transformers was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- the embedded model's tokenizer --------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_directory() -> Path:
    """The weights cache's entry for the embedded model (converted first if it is missing)."""
    import torch

    from ppl.models.default import gguf_path
    from ppl.models.hf.gguf import load_gguf_cached
    from ppl.models.weights_cache import cache_dir, cached

    root = cache_dir()
    if root is None:
        pytest.skip("PPL_CACHE_DIR=off: the embedded model's tokenizer directory is in the cache")
    try:
        gguf = gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        pytest.skip(f"the embedded model is not installed: {e}")
    load_gguf_cached(gguf, torch.float32, root, trust_remote_code=None)

    def already_converted(directory: Path) -> None:
        raise AssertionError("load_gguf_cached converted it a moment ago")

    directory = cached(gguf, "float32", already_converted, root=root)
    if directory is None:
        pytest.skip(f"the weights cache in {root} cannot be written")
    return directory


@pytest.mark.slow
def test_the_embedded_models_tokenizer_matches_transformers(embedded_directory):
    hf, ours = both(embedded_directory)
    assert ours.eos_token == "<|im_end|>" and ours.chat_template is not None
    assert_same(hf, ours, CORPUS)
    assert_same_chats(hf, ours)
    assert "You are a helpful AI assistant named SmolLM" in ours.apply_chat_template(
        MESSAGES["user"], tokenize=False
    )
