"""Typed run configuration, parsed from Flower's flat run config or a TOML file. Torch-free.

Flower hands a ServerApp its run config as one flat dict with dotted, kebab-case keys
(``adapter.rank``, ``strategy.fraction-train``). Each section below is one dataclass; parsing
checks every key against the section's fields and types and names the offending key in its
error. Every key has a default, so an empty config (``run_simulation``) is a valid run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from cola_fed.adapters.registry import family_of
from cola_fed.adapters.spec import AdapterSpec
from cola_fed.errors import ConfigError
from cola_fed.gl.optim_spec import OptimizerSpec
from cola_fed.suggest import did_you_mean
from cola_fed.tasks.registry import check_task_name

PARTITIONERS = ("iid", "dirichlet")
DATA_MODES = ("stream", "upload")
COL_AGGREGATES = ("mean", "trimmed-mean", "clipped-mean")  # cola_fed.gl.engine's
CHAT_TEMPLATES = ("auto", "none")  # task.chat-template


@dataclass(frozen=True)
class TaskConfig:
    """What is learned, from which local data (docs/tasks.md has a guide to every key).

    Parameters
    ----------
    name : str
        A built-in task (``text-classification``: MiniLM-L6 on Rotten Tomatoes; ``digits``;
        ``mnist``: a frozen random CNN; ``byte-lm``: a tiny random GPT-2 over bytes), a
        generic Hugging Face task
        (``sequence-classification``, ``causal-lm``, ``seq2seq``: the model is ``model``), a
        task a package registers, or a ``package.module:Class`` path
        (:mod:`cola_fed.tasks.registry`).
    model : str
        The model of a generic task: a local model folder, a model id already in the local
        Hugging Face cache, a ``.gguf`` file, or ``pkg:<package>/<path>`` (a file an installed
        package ships). Never downloaded.
    data_path : str
        The data: a CSV, JSONL, Parquet file or a ``datasets.save_to_disk`` folder (or
        ``pkg:<package>/<path>``); empty for the task's bundled offline data. Simulated nodes
        read it; deployed nodes read their own node config ``data-path``.
    skip_invalid_rows : bool
        Drop the data rows a task cannot use (a missing or unknown label, an empty text,
        prompt or response, a bad feature value), log how many (``metrics.json`` says so as
        ``skipped-rows``) and go on. Off: such rows are an error that names the first few by
        the file's line. A file of which no row can be used is an error either way. Simulated
        nodes follow it; deployed nodes set node config ``skip-invalid-rows`` for their own
        files.
    text_column, label_column : str
        The columns holding the text and, for classification, the label.
    prompt_column, response_column : str
        Instruction tuning (``causal-lm``): the prompt and the response; the loss counts the
        response tokens only. Empty ``response_column``: plain text from ``text_column``.
        ``seq2seq``: the source (encoder) and the target (decoder) columns.
    template : str
        A prompt template with ``{column}`` placeholders (e.g. ``"Question: {q}\nAnswer: "``);
        it replaces the text column (or the prompt column in instruction tuning).
    label_names : str
        Comma-separated label values in class order, for string labels; empty: labels are
        integers in ``[0, num_labels)``.
    num_labels : int
        Classes of a sequence-classification task (``label_names`` sets it when given).
    pad_id, eos_id : int
        Token ids of padding and end of sequence; -1: the model's own (padding falls back to
        the end-of-sequence token).
    decoder_start_id : int
        ``seq2seq``: the token id the decoder starts from (its inputs are the labels shifted
        right after it); -1: the model's ``decoder_start_token_id``.
    batch_size : int
        Samples per client batch.
    max_length : int
        Tokens per sample (text tasks pad to it).
    eval_batches : int
        Held-out batches each node sends for personalised evaluation.
    partitioner : str
        ``iid`` or ``dirichlet`` (label skew, concentration ``dirichlet_alpha``).
    partition_by : str
        A column whose distinct values are the nodes: each value is one node's data (natural
        partitions, like the users of a service); overrides ``partitioner``.
    dirichlet_alpha : float
        Concentration of the Dirichlet partitioner; smaller is more skewed.
    server_test_size : int
        Samples held out from every node for a server-held test set (0: none). Each node's
        adapters are then also evaluated on it.
    rouge_prompts : int
        ``causal-lm``, ``seq2seq``: score greedy generations on this many server-held test
        prompts with ROUGE-L, before the first and after the last round (0: off; needs
        ``server_test_size``).
    max_new_tokens : int
        Most tokens generated per prompt for ROUGE-L.
    chat_template : str
        ``causal-lm`` instruction tuning: ``auto`` wraps each prompt in the tokenizer's chat
        template when the model has one (the prompt as a user message, then the generation
        prompt: what ``apply_chat_template(..., add_generation_prompt=True)`` writes), so that
        the tuned model is prompted at inference as chat models are; ``none`` (or a model
        without a template) joins prompt and response as they are. docs/tasks.md shows both.
    seed : int
        Seeds partitioning, shuffling and the model's fresh head.
    """

    name: str = "text-classification"
    model: str = ""
    data_path: str = ""
    skip_invalid_rows: bool = False
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: str = ""
    response_column: str = ""
    template: str = ""
    label_names: str = ""
    num_labels: int = 2
    pad_id: int = -1
    eos_id: int = -1
    decoder_start_id: int = -1
    batch_size: int = 16
    max_length: int = 64
    eval_batches: int = 4
    partitioner: str = "iid"
    partition_by: str = ""
    dirichlet_alpha: float = 0.5
    server_test_size: int = 0
    rouge_prompts: int = 0
    max_new_tokens: int = 32
    chat_template: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        check_task_name(self.name)
        _one_of("task.partitioner", self.partitioner, PARTITIONERS)
        if not isinstance(self.skip_invalid_rows, bool):
            raise ConfigError(f"task.skip-invalid-rows: expected true or false, got "
                              f"{self.skip_invalid_rows!r}")
        _one_of("task.chat-template", self.chat_template, CHAT_TEMPLATES)
        for key in ("batch_size", "max_length", "eval_batches", "num_labels",
                    "max_new_tokens"):
            _positive(f"task.{key.replace('_', '-')}", getattr(self, key))
        for key in ("server_test_size", "rouge_prompts"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"task.{key.replace('_', '-')}: expected an integer >= 0, "
                                  f"got {value!r}")
        for key in ("pad_id", "eos_id", "decoder_start_id"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < -1:
                raise ConfigError(f"task.{key.replace('_', '-')}: expected a token id >= 0, or "
                                  f"-1 for the model's own, got {value!r}")
        if self.rouge_prompts and not self.server_test_size:
            raise ConfigError("task.rouge-prompts: needs a server-held test set; set "
                              "task.server-test-size too")
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"task.dirichlet-alpha: must be > 0, got {self.dirichlet_alpha}")

    @property
    def labels(self) -> list[str]:
        """``label_names`` as a list (empty: integer labels)."""
        return [n.strip() for n in self.label_names.split(",") if n.strip()]


@dataclass(frozen=True)
class AdapterConfig:
    """Each node's auxiliary models.

    ``kinds`` gives heterogeneous nodes, as a list or as a mapping by partition id:
    ``"lowrank,linear,mlp"`` gives the node with partition id ``p`` ``kinds[p % 3]``;
    ``"0:mlp,3:linear"`` gives partitions 0 and 3 those kinds and every other node ``kind``.
    Empty: every node uses ``kind``. The task's fresh head, if it has one, always gets a Linear
    adapter with bias.

    ``targets`` names the adapted layers, comma-separated (a name matches a module's full name
    or its last dotted parts, as PEFT's ``target_modules``: ``"q_proj,v_proj"``); empty: the
    task's defaults (for Hugging Face models, by ``model_type``).

    ``options`` configures a registered family's own settings, ``"name=value,..."`` (numbers,
    ``true``/``false`` or text); each kind receives the options its family declares, and every
    option must be declared by some kind in use.
    """

    kind: str = "lowrank"
    targets: str = ""
    kinds: str = ""
    rank: int = 8
    hidden: int = 128
    depth: int = 2
    activation: str = "relu"
    options: str = ""

    def __post_init__(self) -> None:
        kinds = [self.kind, *per_partition_values("adapter.kinds", self.kinds)]
        declared = set()
        for kind in kinds:
            declared |= set(family_of(kind).options)  # also validates the name
        unused = set(self.option_values) - declared
        if unused:
            raise ConfigError(f"adapter.options: {', '.join(sorted(unused))} is no option of "
                              f"the kinds in use ({', '.join(dict.fromkeys(kinds))})")
        for kind in kinds:
            self.spec_of_kind(kind)  # validates the sizes and options

    @property
    def option_values(self) -> dict[str, int | float | bool | str]:
        """``options`` parsed: ``{"alpha": 2.0, ...}``."""
        values: dict[str, int | float | bool | str] = {}
        for item in filter(None, (part.strip() for part in self.options.split(","))):
            name, sep, text = (t.strip() for t in item.partition("="))
            if not sep or not name:
                raise ConfigError(f"adapter.options: expected name=value, got {item!r}")
            if name in values:
                raise ConfigError(f"adapter.options: {name} is given twice")
            values[name] = _option_value(text)
        return values

    @property
    def target_list(self) -> list[str]:
        """``targets`` as a list (empty: the task's defaults)."""
        return [t.strip() for t in self.targets.split(",") if t.strip()]

    @property
    def all_specs(self) -> list[AdapterSpec]:
        """Every distinct spec some node may get (e.g. to prepare ONNX graphs for all)."""
        kinds = dict.fromkeys([self.kind, *per_partition_values("adapter.kinds", self.kinds)])
        return [self.spec_of_kind(kind) for kind in kinds]

    def spec_for(self, partition_id: int) -> AdapterSpec:
        return self.spec_of_kind(
            per_partition("adapter.kinds", self.kinds, partition_id, self.kind))

    def spec_of_kind(self, kind: str) -> AdapterSpec:
        """The spec of an adapter family at this section's sizes and with its options."""
        own = family_of(kind).options
        options = {k: v for k, v in self.option_values.items() if k in own}
        return AdapterSpec(kind=kind, rank=self.rank, hidden=self.hidden, depth=self.depth,
                           activation=self.activation, options=options)


def _option_value(text: str) -> int | float | bool | str:
    """A number, ``true``/``false``, or the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class OptimizerConfig:
    """The adapters' optimizer (see :class:`cola_fed.gl.optim_spec.OptimizerSpec`)."""

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False
    warmup_steps: int = 0
    total_steps: int = 0
    max_grad_norm: float = 0.0

    def __post_init__(self) -> None:
        self.spec()

    def spec(self) -> OptimizerSpec:
        return OptimizerSpec(
            name=self.name, lr=self.lr, weight_decay=self.weight_decay, momentum=self.momentum,
            nesterov=self.nesterov, warmup_steps=self.warmup_steps,
            total_steps=self.total_steps or None, max_grad_norm=self.max_grad_norm or None,
        )


@dataclass(frozen=True)
class StrategyConfig:
    """How the server drives rounds.

    Parameters
    ----------
    mode : str
        ``unmerged``, ``merged`` or ``col`` (see :class:`cola_fed.gl.engine.ServerEngine`).
    fraction_train : float
        Fraction of the nodes sampled for each training round.
    min_available_nodes : int
        Wait for at least this many nodes before the hello round.
    evaluate_every : int
        Evaluate personalised accuracy every this many rounds (and after the last).
    timeout : float
        Seconds a node has to answer a message (counted from when it is sent); a node that
        misses it is skipped for the round and keeps its adapters and batches.
    max_server_batch : int
        Most samples in one mixed forward/backward pass.
    max_adapter_norm : float
        Largest Frobenius norm of any one adapter tensor a node may send; a larger one is
        refused for the round (finite but huge adapters would blow up the next pass).
    max_failures : int
        Consecutive refused replies or broken passes after which a node is quarantined for
        the rest of the run.
    min_train_nodes : int
        The run stops early, with every result written, when fewer nodes than this remain
        outside quarantine.
    max_upload_samples : int
        Most training samples a node may upload at hello in ``upload`` data mode.
    wait_for_nodes : float
        Seconds a round waits for ``min-train-nodes`` nodes to be available before the run
        stops, with every result written.
    max_joins_per_round : int
        Most nodes that connected after the hello round sent a hello at the start of each
        round (they join at the next round once they answer).
    max_inflight_mb : float
        Most megabytes of sealed payloads sent and not yet answered; the server sends each
        node's payload as soon as its pass is done, within this cap.
    partition_owners : str
        A file naming the node identities allowed to hold each partition (one
        ``<partition-id> <fingerprint>`` per line, as SSH's ``authorized_keys``; the format is
        in docs/security.md). A claim by any other identity, or of a partition the file does
        not list, is refused. Empty: a partition goes to the first identity that claims it.
    col_aggregate : str
        ``col`` mode: how the shared delta W is formed from the nodes' own: ``mean`` (the
        reference code's), ``trimmed-mean`` (per coordinate, cutting ``col-trim-fraction`` of
        the nodes from each tail) or ``clipped-mean`` (each node's delta of a layer clipped to
        ``col-clip-multiple`` times the round's median norm, then the mean).
    col_trim_fraction : float
        ``trimmed-mean``: the fraction of nodes cut from each tail per coordinate, in
        ``[0, 0.5)`` (Flower's ``FedTrimmedAvg`` ``beta``).
    col_clip_multiple : float
        ``clipped-mean``: the multiple of the round's median delta norm (per layer) each node's
        delta is clipped to, > 0.
    """

    mode: str = "unmerged"
    fraction_train: float = 1.0
    min_available_nodes: int = 2
    evaluate_every: int = 1
    timeout: float = 600.0
    max_server_batch: int = 64
    max_adapter_norm: float = 1000.0
    max_failures: int = 3
    min_train_nodes: int = 1
    max_upload_samples: int = 100_000
    wait_for_nodes: float = 300.0
    max_joins_per_round: int = 16
    max_inflight_mb: float = 1024.0
    partition_owners: str = ""
    col_aggregate: str = "mean"
    col_trim_fraction: float = 0.2
    col_clip_multiple: float = 1.0

    def __post_init__(self) -> None:
        _one_of("strategy.mode", self.mode, ("unmerged", "merged", "col"))
        _one_of("strategy.col-aggregate", self.col_aggregate, COL_AGGREGATES)
        if not 0 <= self.col_trim_fraction < 0.5:
            raise ConfigError(f"strategy.col-trim-fraction: must be in [0, 0.5), got "
                              f"{self.col_trim_fraction}")
        if not 0 < self.col_clip_multiple < float("inf"):
            raise ConfigError(f"strategy.col-clip-multiple: must be a finite number > 0, got "
                              f"{self.col_clip_multiple}")
        if not self.max_adapter_norm > 0 or self.max_adapter_norm == float("inf"):
            raise ConfigError(f"strategy.max-adapter-norm: must be a finite number > 0, got "
                              f"{self.max_adapter_norm}")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"strategy.fraction-train: must be in (0, 1], got "
                              f"{self.fraction_train}")
        for key in ("min_available_nodes", "evaluate_every", "max_server_batch", "max_failures",
                    "min_train_nodes", "max_upload_samples", "max_joins_per_round"):
            _positive(f"strategy.{key.replace('_', '-')}", getattr(self, key))
        for key in ("timeout", "max_inflight_mb"):
            if not 0 < getattr(self, key) < float("inf"):
                raise ConfigError(f"strategy.{key.replace('_', '-')}: must be a finite number "
                                  f"> 0, got {getattr(self, key)}")
        if not 0 <= self.wait_for_nodes < float("inf"):
            raise ConfigError(f"strategy.wait-for-nodes: must be a finite number >= 0 seconds, "
                              f"got {self.wait_for_nodes}")


@dataclass(frozen=True)
class DataConfig:
    """How client data reaches the server.

    ``stream`` (default): every reply carries the node's next ``interval`` batches. ``upload``:
    the node sends its whole training split once, at hello (the fine-tuning-as-a-service
    reading of the paper); the server then draws the same seeded batches itself and rounds carry
    only adaptation data down and adapters up. ``interval`` is ColA's adaptation interval I: one
    optimizer step per I batches.
    """

    mode: str = "stream"
    interval: int = 1

    def __post_init__(self) -> None:
        _one_of("data.mode", self.mode, DATA_MODES)
        _positive("data.interval", self.interval)


@dataclass(frozen=True)
class WireConfig:
    """Payload encoding: ``dtype`` of adaptation data (float16/bfloat16 are lossy, opt-in),
    its exact ``form`` per layer (``auto``, the default: the smallest of rows, the
    weight-space gradient ``G = d^T x`` and the adapter's parameter gradient; ``rows``;
    ``weight-gradient`` or ``parameter-gradient`` wherever possible; see
    :mod:`cola_fed.gl.forms`) and the server identity key file (empty:
    ``$COLA_FED_HOME/server-identity.pem``, created on first use; see docs/security.md)."""

    dtype: str = "float32"
    form: str = "auto"
    server_key: str = ""

    def __post_init__(self) -> None:
        _one_of("wire.dtype", self.dtype, ("float32", "float16", "bfloat16"))
        _one_of("wire.form", self.form, ("auto", "rows", "weight-gradient",
                                         "parameter-gradient"))


BACKENDS = ("torch", "onnx")


@dataclass(frozen=True)
class EdgeConfig:
    """Nodes that train on ONNX Runtime instead of PyTorch (see docs/edge.md).

    Parameters
    ----------
    graphs : bool or "auto"
        Ship the run's train-step graphs (a few tens of kB each; exporting them takes seconds
        per graph) at hello, so nodes without PyTorch can join. ``"auto"``: only when some node
        may train on ONNX Runtime: in a simulation, when ``backends`` names ``onnx``; in a
        deployment always (the server cannot know the nodes' backends). ``false``: never;
        such nodes are refused with a clear error.
    backends : str
        The backend of nodes whose node config does not set ``backend``, as a cyclic list
        (``"onnx,torch"``) or a mapping by partition id (``"0:onnx,2:onnx"``; others choose
        themselves). Empty: each node chooses, torch when it is installed, else onnx. Meant
        for simulations; deployed nodes set ``backend`` in their node config.
    """

    graphs: bool | typing.Literal["auto"] = "auto"
    backends: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.graphs, bool) or self.graphs == "auto"):
            raise ConfigError(f'edge.graphs: expected true or false, or "auto", got '
                              f"{_described(self.graphs)}"
                              f"{_unquote_hint('edge.graphs', self.graphs, bool)}")
        for backend in per_partition_values("edge.backends", self.backends):
            _one_of("edge.backends", backend, BACKENDS)


@dataclass(frozen=True)
class CheckpointConfig:
    """Server checkpoints (``<output-dir>/checkpoint``; see docs/operations.md).

    Parameters
    ----------
    every : int
        Write a checkpoint after every this many rounds (and after the last); 0: never.
    resume : bool
        Go on from the latest checkpoint in the output folder instead of starting afresh
        (``cola-fed simulate NAME --resume`` sets it). Without a checkpoint it is an error.
    """

    every: int = 1
    resume: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 0:
            raise ConfigError(f"checkpoint.every: expected an integer >= 0, got {self.every!r}")


@dataclass(frozen=True)
class ServerConfig:
    """Where the server's forward/backward passes run (see docs/architecture.md, "The compute
    pool").

    Parameters
    ----------
    engine : str
        ``local``: in the ServerApp's own process, group after group (the default). ``ray``: on
        ``workers`` Ray actors, each holding the frozen model once; a round submits all of its
        groups at once and seals each node's payload as soon as its group returns.
    workers : int
        ``ray``: how many actors (each loads the model once).
    gpus_per_worker : float
        ``ray``: GPUs each actor reserves (0: CPU only; fractions share a GPU).
    cpus_per_worker : float
        ``ray``: CPUs each actor reserves (> 0).
    ray_address : str
        ``ray``: a running Ray cluster's address (``ray start --head`` prints it; ``auto``:
        the cluster this host belongs to). Empty: a Ray of its own is started for the run on
        this host and stopped after it.
    """

    engine: str = "local"
    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    ray_address: str = ""

    def __post_init__(self) -> None:
        _one_of("server.engine", self.engine, ("local", "ray"))
        _positive("server.workers", self.workers)
        if not 0 <= self.gpus_per_worker < float("inf"):
            raise ConfigError(f"server.gpus-per-worker: must be a finite number >= 0, got "
                              f"{self.gpus_per_worker}")
        if not 0 < self.cpus_per_worker < float("inf"):
            raise ConfigError(f"server.cpus-per-worker: must be a finite number > 0, got "
                              f"{self.cpus_per_worker}")
        if self.ray_address != self.ray_address.strip():
            raise ConfigError(f"server.ray-address: expected an address such as "
                              f"'127.0.0.1:6379' or 'auto', without spaces; got "
                              f"{self.ray_address!r}")


@dataclass(frozen=True)
class LoggingConfig:
    """Where each round's metrics are recorded besides ``metrics.json`` (see docs/operations.md,
    "Watch and record"). Both are off by default and need an optional extra.

    Parameters
    ----------
    tensorboard : bool
        Write TensorBoard event files under ``<output-dir>/tensorboard`` (one scalar per
        ``metrics.json`` round value, the round as the step); needs
        ``pip install cola-fed[tensorboard]``.
    mlflow : bool
        Log the same values to an MLflow file store in ``<output-dir>/mlruns`` (experiment
        ``cola-fed``, one MLflow run per cola-fed run, continued on resume); needs
        ``pip install cola-fed[mlflow]``.
    """

    tensorboard: bool = False
    mlflow: bool = False


@dataclass(frozen=True)
class RunConfig:
    """The whole run; the sections are the run config's dotted prefixes."""

    num_server_rounds: int = 3
    output_dir: str = "results"
    task: TaskConfig = field(default_factory=TaskConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    wire: WireConfig = field(default_factory=WireConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        _positive("num-server-rounds", self.num_server_rounds)

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> RunConfig:
        """Parse Flower's flat run config (``{"adapter.rank": 8, ...}``)."""
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in flat.items():
            head, _, rest = key.partition(".")
            name = head.replace("-", "_")
            section = name in fields and dataclasses.is_dataclass(_field_type(fields[name]))
            if rest and section:
                sections.setdefault(name, {})[rest] = value
            elif not rest and name in fields and not section:
                top[key] = value  # as written: errors name the key, never the field
            else:
                raise ConfigError(unknown_key_message(key))
        values = _typed(cls, top, prefix="")
        for name, raw in sections.items():
            values[name] = _build(_field_type(fields[name]), raw,
                                  prefix=f"{name.replace('_', '-')}.")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        """Parse a TOML file of the same keys (tables or dotted keys)."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read run config {path}: {err}") from None
        return cls.from_flat(flatten(raw))


def per_partition(key: str, value: str, partition_id: int, default: str) -> str:
    """The entry of a per-partition setting for one node.

    ``value`` is a cyclic list (``"a,b,c"``: partition ``p`` gets entry ``p % 3``), a mapping by
    partition id (``"0:a,3:b"``: unlisted partitions get ``default``) or empty (``default``).
    """
    entries = _entries(value)
    if not any(":" in e for e in entries):
        return entries[partition_id % len(entries)] if entries else default
    return _mapping(key, entries).get(partition_id, default)


def per_partition_values(key: str, value: str) -> list[str]:
    """Every entry a per-partition setting names (checked for form)."""
    entries = _entries(value)
    if any(":" in e for e in entries):
        return list(_mapping(key, entries).values())
    return entries


def _entries(value: str) -> list[str]:
    return [e.strip() for e in value.split(",") if e.strip()]


def _mapping(key: str, entries: list[str]) -> dict[int, str]:
    mapping = {}
    for entry in entries:
        pid, sep, choice = entry.partition(":")
        if not sep or not pid.strip().isdigit():
            raise ConfigError(f"{key}: expected 'partition-id:value' entries or a plain list, "
                              f"got {entry!r}")
        mapping[int(pid)] = choice.strip()
    return mapping


def default_flat_config() -> dict[str, Any]:
    """Every run config key at its default, as Flower's flat run config (``{"adapter.rank": 8,
    ...}``): the keys are the dataclasses' fields, so this is the one list of keys, which
    pyproject.toml's ``[tool.flwr.app.config]`` and docs/configuration.md must match (the tests
    check both)."""
    defaults = RunConfig()
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        key = f.name.replace("_", "-")
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                flat[f"{key}.{sub.name.replace('_', '-')}"] = getattr(value, sub.name)
        else:
            flat[key] = value
    return flat


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _field_type(f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(RunConfig)
    return hints[f.name]


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    return cls(**_typed(cls, raw, prefix))


def _typed(cls: type, raw: dict[str, Any], prefix: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in names or dataclasses.is_dataclass(hints[name]):
            raise ConfigError(unknown_key_message(f"{prefix}{key}"))
        values[name] = _coerce(f"{prefix}{key}", value, hints[name])
    return values


def unknown_key_message(key: str) -> str:
    """Why run config key ``key`` (as the user wrote it) is refused: the closest known keys
    ("did you mean"), and the keys of its section (or the sections, for an unknown one)."""
    known = list(default_flat_config())
    head = key.partition(".")[0]
    siblings = [k for k in known if k.startswith(f"{head}.")]
    if siblings and "." not in key:
        return (f"run config key {key!r} is a section, not a key: set its keys, as "
                f"{siblings[0]} = ... ({head} keys: {', '.join(siblings)})")
    hint = did_you_mean(key.replace("_", "-"), known)
    sections = dict.fromkeys(k.partition(".")[0] for k in known)
    listing = (f"{head} keys: {', '.join(siblings)}" if siblings else
               f"sections and top-level keys: {', '.join(sections)}")
    return (f"unknown run config key {key!r}{hint} ({listing}; docs/configuration.md lists "
            "every key)")


#: how errors name the types of run config values, as TOML spells them
_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string (in quotes)",
               bool: "true or false"}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    if isinstance(hint, types.UnionType):
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key}: expected {_TYPE_WORDS[hint]}, got {_described(value)}"
                          f"{_unquote_hint(key, value, hint)}")
    return value


def _described(value: Any) -> str:
    """A value as an error shows it, with its TOML type where that is the problem."""
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return repr(value)


def _unquote_hint(key: str, value: Any, hint: type) -> str:
    """``"; write key = 10, without quotes"`` when a quoted string holds a value of the right
    type (the usual slip in TOML and in ``--run-config``), else ``""``."""
    if not isinstance(value, str) or hint is str:
        return ""
    text = value.strip()
    if hint is bool and text.lower() in ("true", "false"):
        return f"; write {key} = {text.lower()}, without quotes"
    for kind in ((int,) if hint is int else (int, float) if hint is float else ()):
        try:
            kind(text)
        except ValueError:
            continue
        return f"; write {key} = {text}, without quotes"
    return ""


def _one_of(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{key}: expected one of {', '.join(options)}, got {value!r}"
                          f"{did_you_mean(str(value), options)}")


def _positive(key: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
