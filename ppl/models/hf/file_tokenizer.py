"""A saved transformers tokenizer, read with the `tokenizers` library and jinja2 alone.

Importing transformers' tokenizer code and running `AutoTokenizer.from_pretrained` costs some
2 s per process, most of a warm load of the embedded model. `load_file_tokenizer(directory)`
reads what `save_pretrained` wrote (`tokenizer.json`, `tokenizer_config.json`, and
`chat_template.jinja` and `special_tokens_map.json` when present) without importing
transformers, and returns a `FileTokenizer`: the part of transformers' tokenizer API that ppl and
its users call (encode, decode, the vocabulary, the special tokens, `apply_chat_template`), each
giving what `AutoTokenizer.from_pretrained(directory)` gives.

It interprets only settings whose effect it reproduces: the special tokens (strings, or
AddedToken dicts as transformers writes them), `model_max_length`, the chat template, added
tokens that `tokenizer.json` already holds, and keys that change nothing here. A directory with
anything else gets None, and the caller falls back to `AutoTokenizer`: a tokenizer class other
than the plain fast one, a key such as `add_bos_token` or `add_prefix_space` (transformers may
rebuild the post-processor or pre-tokenizer), truncation or padding stored in `tokenizer.json`,
space clean-up in decode, extra chat templates, or a `config.json` whose model type makes
`AutoTokenizer` pick a class of its own. As transformers does, special tokens that are not among
`tokenizer.json`'s added tokens are added to it, as special tokens, at the next free ids.
`tests/models/test_file_tokenizer.py` holds it to transformers 5's answers.

The chat template renders as in transformers: a sandboxed jinja2 environment that trims blocks
and their leading whitespace, with loop controls, a `tojson` that does not escape HTML,
`raise_exception`, `strftime_now`, `{% generation %}` blocks, and the variables `messages`,
`tools`, `documents`, `add_generation_prompt`, the named special tokens and the caller's keywords.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer

#: `model_max_length` when the config gives none (transformers' VERY_LARGE_INTEGER)
VERY_LARGE_INTEGER = int(1e30)
#: the named special tokens, in the order in which `all_special_tokens` lists them
SPECIAL_TOKEN_NAMES = (
    *("bos_token", "eos_token", "unk_token", "sep_token"),
    *("pad_token", "cls_token", "mask_token"),
)
_CLASSES = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})
_EXTRA_KEYS = ("extra_special_tokens", "additional_special_tokens")
_MAP_EXTRAS = "additional_special_tokens"
_MAP_KEYS = frozenset({*SPECIAL_TOKEN_NAMES, _MAP_EXTRAS})  # special_tokens_map.json
# tokenizer_config.json keys read here, or without effect here (`from_pretrained` overwrites the
# last four with the directory it is given)
_KNOWN_KEYS = frozenset(
    {*SPECIAL_TOKEN_NAMES, *_EXTRA_KEYS, "backend", "tokenizer_class", "model_max_length"}
    | {"chat_template", "clean_up_tokenization_spaces", "added_tokens_decoder"}
    | {"name_or_path", "_name_or_path", "is_local", "local_files_only"}
)
# config.json model types for which AutoTokenizer builds the class that tokenizer_config.json
# names (for others it may choose a class that rebuilds the backend, as for "qwen2")
_MODEL_TYPES = frozenset({"llama"})
# transformers patches the pre-tokenizer of some tokenizers with a vocabulary this large
_LARGEST_VOCABULARY = 100_000
# apply_chat_template options of transformers for batches and tensors, which this one lacks
_UNSUPPORTED = frozenset(
    {"padding", "truncation", "max_length", "return_tensors", "tokenizer_kwargs"}
    | {"return_assistant_tokens_mask", "sanitize_control_tokens"}
)
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_MISSING = object()


class FileTokenizer:
    """transformers' tokenizer API over a `tokenizers.Tokenizer`, for `load_file_tokenizer`."""

    bos_token: str | None
    bos_token_id: int | None
    eos_token: str | None
    eos_token_id: int | None
    unk_token: str | None
    unk_token_id: int | None
    sep_token: str | None
    sep_token_id: int | None
    pad_token: str | None
    pad_token_id: int | None
    cls_token: str | None
    cls_token_id: int | None
    mask_token: str | None
    mask_token_id: int | None

    def __init__(
        self,
        backend: Tokenizer,
        special_tokens: dict[str, str],
        extra_special_tokens: list[str],
        *,
        model_max_length: int = VERY_LARGE_INTEGER,
        chat_template: str | None = None,
        name_or_path: str = "",
    ) -> None:
        self.backend_tokenizer = backend
        self.model_max_length = model_max_length
        self.chat_template = chat_template
        self.name_or_path = name_or_path
        #: the named special tokens that are set, as the chat template sees them
        self.special_tokens_map = {
            name: special_tokens[name] for name in SPECIAL_TOKEN_NAMES if name in special_tokens
        }
        for name in SPECIAL_TOKEN_NAMES:
            token = self.special_tokens_map.get(name)
            setattr(self, name, token)
            setattr(self, f"{name}_id", None if token is None else backend.token_to_id(token))
        named = self.special_tokens_map.values()
        self.all_special_tokens = list(dict.fromkeys([*named, *extra_special_tokens]))
        self.all_special_ids = self.convert_tokens_to_ids(self.all_special_tokens)

    def __len__(self) -> int:
        """The vocabulary's size, added tokens included."""
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """The base vocabulary's size (added tokens that the model's vocabulary lacks excluded)."""
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=False)

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        return self.backend_tokenizer.get_added_tokens_decoder()

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str | list[str]:
        """The text of `ids` (an id, a sequence or a tensor of them); of each row for a batch."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        ids = [ids] if isinstance(ids, int) else list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            return [self.decode(row, skip_special_tokens) for row in ids]
        return self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> Any:
        """The token string of an id (None outside the vocabulary), or the list of those of ids."""
        if isinstance(ids, int):
            return self.backend_tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.backend_tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_ids(self, tokens: Any) -> Any:
        """The id of a token string (the unknown token's id if it has none), or the list of ids."""
        if isinstance(tokens, str):
            found = self.backend_tokenizer.token_to_id(tokens)
            return found if found is not None else getattr(self, "unk_token_id", None)
        return [self.convert_tokens_to_ids(token) for token in tokens]

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        return_dict: bool = False,
        **kwargs: Any,
    ) -> str | list[int] | dict[str, list[int]]:
        """The conversation rendered by the chat template: the text, or with `tokenize` its ids
        (encoded without special tokens, as transformers does), as a list; with `return_dict`,
        as `{"input_ids", "attention_mask"}` (transformers 5's default, in a BatchEncoding).
        `kwargs` are variables for the template; `tools` must be JSON schemas (dicts).

        `continue_final_message` (or the name of the final message's field to continue) ends
        the text inside the final message, for the model to continue it.
        """
        if unsupported := sorted(_UNSUPPORTED & kwargs.keys()):
            raise TypeError(f"apply_chat_template here does not take {', '.join(unsupported)}")
        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            raise ValueError(f"the tokenizer of {self.name_or_path!r} has no chat template")
        if not conversation:
            raise ValueError("cannot apply a chat template to an empty conversation")
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt exclude each other")
        messages = [_template_message(message) for message in conversation]
        if continue_final_message:
            field = continue_final_message if isinstance(continue_final_message, str) else "content"
            final = messages[-1].get(field)
            if not isinstance(final, str):
                raise ValueError(f"continue_final_message: the final message has no text {field!r}")
            fields = [field]
            if field in _REASONING_FIELDS:  # copied under each name: continue every copy
                fields = [name for name in _REASONING_FIELDS if messages[-1].get(name) == final]
            if not any(name in template for name in fields):
                raise ValueError(f"continue_final_message: the chat template never reads {field!r}")
            messages[-1].update(dict.fromkeys(fields, final + _CONTINUE_TAG))
        variables = {"tools": None, "documents": None, **self.special_tokens_map, **kwargs}
        text = _compiled(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **variables
        )
        if continue_final_message:
            tag = _CONTINUE_TAG.strip()
            if final.strip() not in text or tag not in text:
                raise ValueError("continue_final_message: the template dropped the final message")
            at = text.rindex(tag)
            text = text[:at] if text.startswith(_CONTINUE_TAG, at) else text[:at].rstrip()
        if not tokenize:
            return text
        ids = self.encode(text, add_special_tokens=False)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)} if return_dict else ids

    def __repr__(self) -> str:
        return f"FileTokenizer({self.name_or_path!r}, vocabulary of {len(self)})"


def load_file_tokenizer(directory: Path) -> FileTokenizer | None:
    """The tokenizer saved in `directory`, or None where it needs transformers (see the module's
    docstring for what that is)."""
    directory = Path(directory)
    config = _read_json(directory / "tokenizer_config.json")
    model_config = _read_json(directory / "config.json")
    if (
        not isinstance(config, dict)
        or not (directory / "tokenizer.json").is_file()
        or not _KNOWN_KEYS.issuperset(config)
        or config.get("tokenizer_class") not in _CLASSES
        or config.get("backend", "tokenizers") != "tokenizers"
        or config.get("clean_up_tokenization_spaces")
        or (directory / "added_tokens.json").exists()
        or (directory / "additional_chat_templates").exists()
        or not (model_config is None or _model_type(model_config) in _MODEL_TYPES)
    ):
        return None
    special = {name: _content(config.get(name), marked=True) for name in SPECIAL_TOKEN_NAMES}
    extras = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if "added_tokens_decoder" not in config:  # transformers reads the older file only then
        special_map = _read_json(directory / "special_tokens_map.json") or {}
        if not isinstance(special_map, dict) or not _MAP_KEYS.issuperset(special_map):
            return None
        special.update(
            {k: _content(v, marked=False) for k, v in special_map.items() if k != _MAP_EXTRAS}
        )
        if _MAP_EXTRAS in special_map:
            if any(key in config for key in _EXTRA_KEYS):
                return None  # which list wins has changed between transformers versions
            extras = special_map[_MAP_EXTRAS]
    template = _read(directory / "chat_template.jinja")
    template = config.get("chat_template") if template is None else template
    if not isinstance(extras, list) or not isinstance(template, (str, type(None))):
        return None
    special = {name: token for name, token in special.items() if token is not None}
    extras = [_content(token, marked=True) for token in extras]
    if _MISSING in special.values() or _MISSING in extras or None in extras:
        return None

    try:
        backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception:  # transformers will say what is wrong with it
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    if backend.pre_tokenizer is not None and backend.get_vocab_size(False) > _LARGEST_VOCABULARY:
        return None
    added = backend.get_added_tokens_decoder()
    for index, entry in (config.get("added_tokens_decoder") or {}).items():
        try:
            same = added[int(index)].__getstate__() == AddedToken(**entry).__getstate__()
        except (KeyError, TypeError, ValueError):
            same = False
        if not same:  # transformers would add it to the vocabulary
            return None
    added_special = {token.content: token.special for token in added.values()}
    specials = [*special.values(), *extras]
    if not all(added_special.get(token, True) for token in specials):
        return None  # an added token that is not special, which transformers would half make one
    max_length = config.get("model_max_length")
    missing = dict.fromkeys(token for token in specials if token not in added_special)
    backend.add_tokens([AddedToken(token, special=True) for token in missing])
    return FileTokenizer(
        backend,
        special,
        extras,
        model_max_length=VERY_LARGE_INTEGER if max_length is None else max_length,
        chat_template=template,
        name_or_path=str(directory),
    )


def _content(token: Any, *, marked: bool) -> Any:
    """The text of a special token setting: None when unset, _MISSING when not understood.
    `marked`: as in tokenizer_config.json, where transformers reads a dict as an AddedToken only
    if its "__type" says so."""
    if token is None or isinstance(token, str):
        return token
    if isinstance(token, dict) and isinstance(token.get("content"), str):
        if token.get("__type") == "AddedToken" or not marked:
            return token["content"]
    return _MISSING


def _model_type(config: Any) -> Any:
    return config.get("model_type") if isinstance(config, dict) else _MISSING


def _template_message(message: Any) -> dict[str, Any]:
    """A message as transformers gives it to a template: without None fields, its reasoning
    under both names that templates read."""
    message = {key: value for key, value in dict(message).items() if value is not None}
    reasoning = next((message[key] for key in _REASONING_FIELDS if key in message), None)
    if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


@lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for transformers'
        # assistant masks; rendering, it is its body
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_body")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    class Namespace(jinja2.utils.Namespace):
        # without underscore names: no reach into Python's internals from a template
        def __init__(*args: Any, **kwargs: Any) -> None:
            attrs = dict(*args[1:], **kwargs)
            for name in attrs:
                _plain_name(name)
            jinja2.utils.Namespace.__init__(args[0], attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            jinja2.utils.Namespace.__setitem__(self, _plain_name(name), value)

    def _plain_name(name: Any) -> Any:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a namespace cannot hold {name!r}")
        return name

    class Dict:
        # `dict(...)` and `dict.fromkeys(...)`, without the type itself
        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals.update(
        raise_exception=raise_exception,
        strftime_now=lambda format: datetime.now().strftime(format),
        dict=Dict(),
        namespace=Namespace,
    )
    return env.from_string(template)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _read_json(path: Path) -> Any:
    """The file's content; None if it does not exist, _MISSING if it is not JSON."""
    text = _read(path)
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return _MISSING
