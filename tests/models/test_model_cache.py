"""The converted-weights cache (`ppl.models.weights_cache`): a GGUF model in seconds after the
first load.

Most tests drive the cache with a small source file and a converter that writes a few files,
so they run in milliseconds; two run it from other processes (a killed build, two builds at
once), loading the module by its path so the child imports nothing heavy. The `slow` tests load
the embedded model twice, through a cache in a temporary directory: one conversion, one read.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppl.models import weights_cache
from ppl.models.weights_cache import MANIFEST, cached, verify

MODULE = Path(weights_cache.__file__)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Nothing a test does reaches the user's real cache directory."""
    monkeypatch.setenv("PPL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(os.urandom(4096))
    return path


class Converter:
    """Writes a small "weights" file and a config, counting its calls."""

    def __init__(self, weights: bytes = b"w" * 1000) -> None:
        self.calls = 0
        self.weights = weights

    def __call__(self, directory: Path) -> None:
        self.calls += 1
        (directory / "model.safetensors").write_bytes(self.weights)
        (directory / "config.json").write_text('{"layers": 2}')


def entries(root: Path) -> list[Path]:
    return sorted(p for p in (root / "weights").iterdir() if not p.name.startswith("."))


# -- where the cache is --------------------------------------------------------------------------


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PPL_CACHE_DIR", str(tmp_path / "here"))
    assert weights_cache.cache_dir() == tmp_path / "here"
    monkeypatch.setenv("PPL_CACHE_DIR", "off")
    assert weights_cache.cache_dir() is None
    monkeypatch.delenv("PPL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_cache.cache_dir() == tmp_path / "xdg" / "ppl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights_cache.cache_dir() == Path.home() / ".cache" / "ppl"


# -- building, reading, verifying ----------------------------------------------------------------


def test_the_first_call_converts_and_says_so_later_calls_read(source, tmp_path, capsys):
    convert = Converter()
    entry = cached(source, "float32", convert)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"converting the GGUF weights of {source.name} to float32 once (about" in err
    assert str(entry) in err
    assert entry.parent == tmp_path / "cache" / "weights"
    assert (entry / "model.safetensors").read_bytes() == convert.weights
    manifest = json.loads((entry / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "config.json"}
    assert manifest["key"]["dtype"] == "float32"

    assert cached(source, "float32", convert) == entry
    assert convert.calls == 1
    assert capsys.readouterr().err == ""


def test_a_warm_call_does_not_read_the_source(source, monkeypatch):
    convert = Converter()
    cached(source, "float32", convert)
    real_sha256 = weights_cache._sha256

    def sha256(path):
        assert Path(path) != source.resolve(), "the source was hashed again"
        return real_sha256(path)

    monkeypatch.setattr(weights_cache, "_sha256", sha256)
    cached(source, "float32", convert)
    assert convert.calls == 1


def test_the_key_holds_the_content_and_the_dtype(source):
    convert = Converter()
    first = cached(source, "float32", convert)
    assert cached(source, "bfloat16", convert) != first
    source.write_bytes(os.urandom(4096))  # new content: a new size or mtime makes it re-hash
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cached(source, "float32", convert) != first
    assert convert.calls == 3


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda e: (e / "model.safetensors").write_bytes(b"w" * 10), "has 10 bytes, not 1000"),
        (lambda e: (e / "config.json").write_text('{"layers": 3}'), "checksum of config.json"),
        (lambda e: (e / "config.json").unlink(), "config.json is missing"),
        (lambda e: (e / MANIFEST).unlink(), "the conversion did not finish"),
        (lambda e: (e / MANIFEST).write_text("{"), "unreadable manifest"),
    ],
    ids=["truncated", "flipped", "missing", "unfinished", "bad-manifest"],
)
def test_a_damaged_entry_is_reported_and_rebuilt(source, capsys, damage, problem):
    convert = Converter()
    entry = cached(source, "float32", convert)
    damage(entry)
    capsys.readouterr()
    assert cached(source, "float32", convert) == entry
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"the cached weights at {entry} are damaged (" in err
    assert problem in err
    assert "converting again, about" in err
    assert convert.calls == 2
    assert verify(entry, json.loads((entry / MANIFEST).read_text())["key"]) is None


def test_a_large_file_is_checked_by_its_ends(source, monkeypatch):
    monkeypatch.setattr(weights_cache, "FULL_CHECK_BYTES", 100)
    monkeypatch.setattr(weights_cache, "_END", 16)
    convert = Converter(weights=bytes(1000))
    entry = cached(source, "float32", convert)
    checks = json.loads((entry / MANIFEST).read_text())["files"]
    assert set(checks["model.safetensors"]) == {"size", "sha256_ends"}
    assert set(checks["config.json"]) == {"size", "sha256"}
    with open(entry / "model.safetensors", "r+b") as f:  # the last bytes
        f.seek(990)
        f.write(b"x")
    cached(source, "float32", convert)
    assert convert.calls == 2


def test_a_failed_conversion_leaves_nothing(source, tmp_path):
    def convert(directory):
        (directory / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cached(source, "float32", convert)
    assert list((tmp_path / "cache" / "weights").iterdir()) == [
        tmp_path / "cache" / "weights" / ".sources"
    ]


def test_an_unwritable_cache_is_said_and_skipped(source, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    convert = Converter()
    assert cached(source, "float32", convert, root=tmp_path / "file" / "cache") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"cannot write the weights cache in {tmp_path / 'file' / 'cache'}" in err
    assert "loading without it" in err


# -- other processes -----------------------------------------------------------------------------

CHILD = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("weights_cache", sys.argv[1])
wc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wc)

def convert(directory):
    (directory / "model.safetensors").write_bytes(b"w" * 1000)
    print("writing", flush=True)
    time.sleep(float(sys.argv[3]))
    (directory / "config.json").write_text("{}")

print(wc.cached(Path(sys.argv[2]), "float32", convert), flush=True)
"""


def child(source: Path, sleep_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(MODULE), str(source), str(sleep_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_build_is_ignored_and_cleaned(source, tmp_path):
    with child(source, 60) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "writing\n"
        proc.send_signal(signal.SIGKILL)
    weights = tmp_path / "cache" / "weights"
    (leftover,) = weights.glob(".tmp-*")
    assert entries(tmp_path / "cache") == []

    convert = Converter()
    entry = cached(source, "float32", convert)
    assert convert.calls == 1
    assert not leftover.exists()
    assert entries(tmp_path / "cache") == [entry]


def test_two_processes_building_at_once_both_get_a_whole_entry(source, tmp_path):
    with child(source, 0.5) as first, child(source, 0.5) as second:
        procs = [first, second]
        outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    (entry,) = {out.splitlines()[-1] for out, _ in outs}
    assert entries(tmp_path / "cache") == [Path(entry)]
    assert not list((tmp_path / "cache" / "weights").glob(".tmp-*"))
    key = json.loads((Path(entry) / MANIFEST).read_text())["key"]
    assert verify(Path(entry), key) is None


# -- turning it off ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_off_converts_directly_and_writes_nothing(source, tmp_path, monkeypatch, how):
    import transformers

    from ppl.models.hf import gguf
    from ppl.models.hf import model as hf_model

    class Reached(Exception):
        pass

    def direct(name_or_path, **kwargs):
        raise Reached(kwargs.get("gguf_file"))

    def no_cache(*args, **kwargs):
        raise AssertionError("the weights cache was used")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", direct)
    monkeypatch.setattr(gguf, "cached", no_cache)
    options = {"weights_cache": False}
    if how == "environment":
        monkeypatch.setenv("PPL_CACHE_DIR", "off")
        options = {}
    with pytest.raises(Reached, match=source.name):
        hf_model.HFModel.from_pretrained(str(source.parent), gguf_file=source.name, **options)
    assert not (tmp_path / "cache").exists()


# -- the embedded model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_cold(tmp_path_factory):
    """The embedded model's first load through an empty cache, what it said on stderr, and the
    model as transformers read it from the GGUF file (caught on its way into the cache)."""
    import safetensors.torch

    from ppl.models.default import gguf_path
    from ppl.models.hf.model import HFModel

    root = tmp_path_factory.mktemp("cache")
    converted = []
    save_model = safetensors.torch.save_model

    def keep(model, *args, **kwargs):
        converted.append(model)
        return save_model(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPL_CACHE_DIR", str(root))
        mp.setattr(safetensors.torch, "save_model", keep)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            lm = HFModel.from_pretrained(
                str(gguf_path().parent), gguf_file=gguf_path().name, device="cpu", dtype="float32"
            )
    (uncached,) = converted
    return root, lm, err.getvalue(), uncached


def logits(model, tokenizer, text="The capital of France is"):
    import torch

    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.slow
def test_the_embedded_model_loads_from_the_cache_without_its_gguf(embedded_cold, monkeypatch):
    import gguf
    import torch
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from ppl.models.default import gguf_path
    from ppl.models.hf.model import HFModel

    root, cold, said, _ = embedded_cold
    (entry,) = entries(root)
    assert "converting the GGUF weights of SmolLM2-135M-Instruct.Q4_1.gguf to float32" in said
    assert str(entry) in said

    def read(*args, **kwargs):
        raise AssertionError("the GGUF file was read")

    monkeypatch.setenv("PPL_CACHE_DIR", str(root))
    monkeypatch.setattr(gguf, "GGUFReader", read)
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", read)
    real_sha256 = weights_cache._sha256
    gguf_file = gguf_path().resolve()
    monkeypatch.setattr(
        weights_cache, "_sha256", lambda p: read() if Path(p) == gguf_file else real_sha256(p)
    )
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        warm = HFModel.from_pretrained(
            str(gguf_path().parent), gguf_file=gguf_path().name, device="cpu", dtype="float32"
        )
    assert "ppl:" not in err.getvalue()
    assert warm.model is not cold.model
    assert torch.equal(logits(warm.model, warm.tokenizer), logits(cold.model, cold.tokenizer))
    assert warm.tokenizer.get_vocab() == cold.tokenizer.get_vocab()
    assert warm.tokenizer.chat_template == cold.tokenizer.chat_template
    assert warm.model.config.to_dict() == cold.model.config.to_dict()
    assert repr(warm) == repr(cold)
    assert warm.spec == cold.spec


@pytest.mark.slow
def test_the_embedded_model_from_the_cache_is_the_model_from_its_gguf(embedded_cold):
    import torch

    from ppl.models.hf.native import NativeLlama

    _, cold, _, uncached = embedded_cold
    assert cold.model is not uncached
    # the same forward pass over the weights transformers read from the GGUF file (an uncached
    # load runs that), bit for bit
    direct = NativeLlama.from_transformers(uncached)
    assert torch.equal(logits(cold.model, cold.tokenizer), logits(direct, cold.tokenizer))


def test_the_module_imports_nothing_heavy():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('wc', {str(MODULE)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
