"""A node's adapters as a PEFT adapter folder that loads like any other, anywhere.

:func:`cola_fed.export.export_peft` writes the LoRA weights; this module adds what other tools
need to open them without cola-fed:

- the PEFT ``task_type`` (``SEQ_CLS``, ``CAUSAL_LM``, ``SEQ_2_SEQ_LM``), so that
  ``AutoPeftModelForSequenceClassification`` / ``AutoPeftModelForCausalLM`` /
  ``AutoPeftModelForSeq2SeqLM`` know which model class to build;
- a base model other tools open (``base_model_name_or_path``): the model's own folder or model
  id where it is one; a Hugging Face folder written by cola-fed (``base-model/`` inside the
  export, or ``--base-out``) where it is not: a GGUF file (its float32 conversion) or a
  classifier, whose freshly initialised head and labels (``num_labels``, ``id2label``,
  ``label2id``) only exist in this run;
- the tokenizer files (and the chat template the run trained with, or none);
- a model card (``README.md``): base, task, adapter kind, rank and targets, rounds, metrics, the
  training format and, for a GGUF base, the file it came from.

``base_model_name_or_path`` is an absolute path when cola-fed writes the base: PEFT opens it
from any working directory, but a moved export needs the path edited (the card says so).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola_fed.config import RunConfig
from cola_fed.errors import ConfigError

#: PEFT task types of cola-fed's tasks whose base other tools can open
TASK_TYPES = {"text-classification": "SEQ_CLS", "sequence-classification": "SEQ_CLS",
              "causal-lm": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}
#: the AutoPeftModel class that loads each task type
AUTO_CLASSES = {"SEQ_CLS": "AutoPeftModelForSequenceClassification",
                "CAUSAL_LM": "AutoPeftModelForCausalLM",
                "SEQ_2_SEQ_LM": "AutoPeftModelForSeq2SeqLM"}
#: the base's folder inside the export, when cola-fed writes one
BASE_FOLDER = "base-model"
_PARTITION_FILE = re.compile(r"partition-(\d+)\.safetensors")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Export:
    """What :func:`export_node_adapters` wrote."""

    folder: Path
    task_type: str | None
    base_model: str | None
    base_written: bool


def export_node_adapters(config: RunConfig, adapters_file: str | Path, out: str | Path, *,
                         base_out: str | Path | None = None) -> Export:
    """Write ``out``: the PEFT adapter of ``adapters_file``, its tokenizer, base and card.

    Parameters
    ----------
    config : RunConfig
        The run's config: its task names the base model, the labels and the training format.
    adapters_file : str or pathlib.Path
        A node's adapters (``adapters/partition-N.safetensors`` of a results folder); the
        results folder's ``metrics.json``, if present, fills the card's rounds and metrics.
    out : str or pathlib.Path
        The folder to write.
    base_out : str or pathlib.Path, optional
        Where to write the base model when cola-fed writes one (default ``out/base-model``);
        given, the base is written there even when the model's own folder would do.

    Raises
    ------
    ConfigError, AdapterError
        When the adapters cannot be read or expressed in PEFT (non-Low-Rank kinds), or the
        base model cannot be loaded or written.
    """
    from cola_fed.export import export_peft
    from cola_fed.tasks import get_task
    from cola_fed.wire import decode_adapter_state

    adapters_file, out = Path(adapters_file), Path(out)
    _refuse_to_overwrite(out, "--out", earlier="adapter_config.json")
    if base_out is not None:
        _refuse_to_overwrite(Path(base_out), "--base-out")
    try:
        adapters = decode_adapter_state(adapters_file.read_bytes())
    except OSError as err:
        raise ConfigError(f"--adapters: cannot read {adapters_file}: {err}") from None
    task = get_task(config.task)
    model = task.build_model()
    task_type = TASK_TYPES.get(config.task.name)
    source = _source_folder(config, task) if task_type else None
    labels = _label_names(config, task) if task_type == "SEQ_CLS" else []
    if labels:
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
    base_model, base_written = None, False
    if source is not None:
        gguf = _gguf_source(source)
        if task_type == "SEQ_CLS" or gguf is not None or base_out is not None:
            base = Path(base_out) if base_out is not None else out / BASE_FOLDER
            _write_base(model, source, base)
            base_model, base_written = str(base.resolve()), True
        elif _REPO_ID.fullmatch(config.task.model.strip()) and not Path(config.task.model).exists():
            base_model = config.task.model.strip()  # a model id in the Hugging Face cache
        else:
            base_model = str(source.resolve())
    folder = export_peft(model, adapters, out, base_model_name_or_path=base_model,
                         task_type=task_type)
    chat = None
    if source is not None:
        chat = _write_tokenizer(config, task, source, folder)
    (folder / "README.md").write_text(_model_card(
        config, adapters, task_type, base_model, base_written, labels, chat,
        gguf=_gguf_source(source) if source is not None else None,
        metrics=_node_metrics(adapters_file)), encoding="utf-8")
    return Export(folder, task_type, base_model, base_written)


def _refuse_to_overwrite(folder: Path, option: str, *, earlier: str | None = None) -> None:
    """An export writes ``README.md``, ``config.json``, weights and tokenizer files: into a new
    or empty folder only, or (``earlier``: a file only an export holds there) over an earlier
    export, never over a folder of the user's own (a project's README, the model's folder)."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ConfigError(f"{option} {folder}: not a folder (or a symbolic link); give a new "
                          "or empty folder")
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if present and not (earlier and (folder / earlier).is_file()):
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise ConfigError(f"{option} {folder} holds {shown}, which the export would "
                          "overwrite: give a new or empty folder"
                          + (" (or an earlier export's, which is replaced)" if earlier else ""))


# --------------------------------------------------------------------------------------------
# base model, labels, tokenizer


def _source_folder(config: RunConfig, task: Any) -> Path:
    """The folder the task's model was loaded from (a GGUF file's conversion)."""
    if config.task.name == "text-classification":
        from cola_fed.tasks.text_classification import minilm_path

        return Path(minilm_path())
    return Path(task.model_folder)


def _gguf_source(folder: Path) -> dict[str, Any] | None:
    """What a converted GGUF folder records about its file (None: not a conversion)."""
    from cola_fed.tasks.models import SOURCE_FILE

    try:
        record = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _label_names(config: RunConfig, task: Any) -> list[str]:
    """Class names in class order: ``task.label-names``, the built-in task's, else ``0..n-1``
    (integer labels)."""
    if config.task.labels:
        return list(config.task.labels)
    if config.task.name == "text-classification":
        from cola_fed.tasks.text_classification import LABELS

        return [name for name, _ in sorted(LABELS.items(), key=lambda item: item[1])]
    return [str(i) for i in range(task.num_classes)]


def _write_base(model: Any, source: Path, base: Path) -> None:
    """The base, as the run built it (float32, the seeded head, the labels), with its
    tokenizer: a folder ``from_pretrained`` opens."""
    from transformers import AutoTokenizer

    try:
        base.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(base)
        AutoTokenizer.from_pretrained(str(source)).save_pretrained(base)
    except OSError as err:
        raise ConfigError(f"--base-out: cannot write the base model to {base}: {err}") from None


def _write_tokenizer(config: RunConfig, task: Any, source: Path, folder: Path) -> str | None:
    """The tokenizer files into the export; the chat template only where training used it
    (an adapter trained without it must not be prompted with it). Returns the template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    uses_chat = getattr(task, "chat_wrapping", None) is not None
    if not uses_chat:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    return tokenizer.chat_template if uses_chat else None


# --------------------------------------------------------------------------------------------
# the model card


def _node_metrics(adapters_file: Path) -> dict[str, Any]:
    """Rounds and this node's last held-out metrics from the results folder's
    ``metrics.json`` (a file anyone could have written: only numbers are taken)."""
    match = _PARTITION_FILE.fullmatch(adapters_file.name)
    from cola_fed.watch import read_metrics  # bounded, a regular file only, strict JSON

    try:
        raw, _ = read_metrics(adapters_file.parent.parent)
    except Exception:  # none, or unreadable: the card goes without the run's numbers
        return {}
    if not isinstance(raw, dict):
        return {}
    found: dict[str, Any] = {}
    if _number(raw.get("last-round")):
        found["rounds"] = int(raw["last-round"])
    node = raw.get("nodes", {}).get(match.group(1)) if match and isinstance(
        raw.get("nodes"), dict) else None
    history = node.get("history") if isinstance(node, dict) else None
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        found["metrics"] = {str(k)[:40]: v for k, v in list(history[-1].items())[:20]
                            if _number(v)}
        found["partition"] = int(match.group(1)) if match else None
    return found


def _number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _model_card(config: RunConfig, adapters: dict, task_type: str | None,
                base_model: str | None, base_written: bool, labels: list[str],
                chat: str | None, *, gguf: dict[str, Any] | None,
                metrics: dict[str, Any]) -> str:
    import torch

    from cola_fed.adapters.registry import infer_spec

    specs = {name: infer_spec({k: torch.as_tensor(v) for k, v in state.items()})
             for name, state in adapters.items()}
    lowrank = sorted(n for n, s in specs.items() if s.kind == "lowrank")
    heads = sorted(n for n, s in specs.items() if s.kind == "linear")
    rank = next((s.rank for s in specs.values() if s.kind == "lowrank"), None)
    auto = AUTO_CLASSES.get(task_type or "", "PeftModel")
    lines = ["---", "library_name: peft", *(
        [f"base_model: {json.dumps(base_model)}"] if base_model else []),
        "tags: [cola-fed, lora, federated-learning]", "---", "",
        f"# ColA adapter: {config.task.name}", "",
        "Trained with cola-fed (ColA gradient learning, federated); exported as a PEFT LoRA "
        "adapter (ColA Low Rank with scale 1 is LoRA with `lora_alpha = r`).", "",
        f"- base model: `{base_model}`" + (
            "" if not base_written else " (written by cola-fed: the run's float32 model"
            + (", with its seeded classification head and labels)" if labels else ")")),
        f"- run's `task.model`: `{config.task.model or config.task.name + ' (built-in)'}`",
        f"- task: `{config.task.name}` (PEFT task type `{task_type}`)",
        f"- adapter: LoRA rank {rank}, `lora_alpha` {rank}, on {len(lowrank)} layers: "
        + ", ".join(f"`{n}`" for n in lowrank[:32]) + (" ..." if len(lowrank) > 32 else ""),
    ]
    if heads:
        lines.append("- head (PEFT `modules_to_save`): " + ", ".join(f"`{n}`" for n in heads))
    if gguf:
        lines.append(f"- GGUF source: `{gguf.get('source')}` (SHA-256 "
                     f"{gguf.get('sha256_16')}..., dequantised to {gguf.get('dtype')})")
    if labels:
        lines.append("- labels (`id2label`): " + ", ".join(
            f"{i}: `{name}`" for i, name in enumerate(labels)))
    if "rounds" in metrics:
        lines.append(f"- rounds: {metrics['rounds']}")
    if metrics.get("metrics"):
        lines.append(f"- held-out metrics of node {metrics.get('partition')} (last evaluation): "
                     + ", ".join(f"{k} {v:.4g}" for k, v in metrics["metrics"].items()))
    lines += ["", "## Format", ""]
    if config.task.name == "causal-lm" and config.task.response_column:
        lines.append(("Prompts were wrapped in the tokenizer's chat template (saved here): "
                      "`apply_chat_template([{\"role\": \"user\", \"content\": prompt}], "
                      "add_generation_prompt=True)`, then the response and the end-of-sequence "
                      "token.") if chat else
                     ("Prompt tokens (with the tokenizer's special tokens) then the response's, "
                      "then the end-of-sequence token, with no separator beyond what "
                      f"`task.template` writes ({json.dumps(config.task.template)}); no chat "
                      "template."))
    else:
        lines.append("As cola-fed's task (docs/tasks.md).")
    lines += ["", "## Load", "", "```python", f"from peft import {auto}", "",
              f"model = {auto}.from_pretrained(\"path/to/this/folder\")", "```", ""]
    if base_written:
        lines += ["`base_model_name_or_path` is the absolute path of the base written with "
                  "this export; edit it in `adapter_config.json` if you move the base.", ""]
    return "\n".join(lines)
