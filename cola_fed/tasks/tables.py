"""Users' own data files, read node side without torch: CSV, JSON lines, Parquet, and folders
written by ``datasets.Dataset.save_to_disk``.

A file becomes a :data:`Table`, plain columns of python values, so that a task can pick its
columns by name (:func:`column`), build prompts from a template (:func:`render_column`) and map
labels to class ids (:func:`label_ids`). pyarrow and datasets are imported only for the formats
that need them: an edge node reading CSV or JSON lines carries neither.

Every error is a :class:`~cola_fed.errors.ConfigError` naming the config key the value came
from, what was expected and where (line, row or column) the data disagrees. Lines are the file's,
1-based and counting the header, as an editor shows them. Rows a task cannot use (a missing
label, say) are listed together, the first few of them (:func:`checked_rows`), and
``task.skip-invalid-rows`` drops and counts them instead.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cola_fed.errors import ConfigError

log = logging.getLogger("cola_fed")

#: column name -> values, all columns the same length
Table = dict[str, list]


class LocatedTable(dict):
    """A :data:`Table` read from a file, that knows where each of its rows stands there.

    ``places[i]`` names row ``i`` as the user finds it: ``"line 7"`` (CSV, counting the header;
    JSON lines), ``"item 3"`` (a JSON list, counting from 0); ``None`` where the format has no
    lines (Parquet, ``save_to_disk``): then :meth:`where` says ``"row i+1"``.
    """

    def __init__(self, columns: Table, places: list[str] | None = None) -> None:
        super().__init__(columns)
        self.places = places

    def where(self, row: int) -> str:
        """Where row ``row`` (0-based) is in the file."""
        return self.places[row] if self.places is not None else f"row {row + 1}"

#: file suffixes :func:`read_table` reads (besides ``save_to_disk`` folders)
SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
#: compressions of the text formats (``data.csv.gz``, ``data.jsonl.bz2``), by suffix
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2"}
#: how many values an error message lists before it says "..."
PREVIEW = 10
#: how many invalid rows an error lists before it says how many more there are
SHOWN_BAD_ROWS = 5
#: most distinct keys the rows of a JSON file may have between them (columns)
MAX_JSON_COLUMNS = 1024
#: conversions a template may use: ``{text!r}`` quotes a value, nothing else is needed
CONVERSIONS = (None, "s", "r", "a")

_FORMATTER = string.Formatter()


# ---------------------------------------------------------------------------------------------
# reading


def read_table(path: str | Path, *, key: str = "task.data-path") -> Table:
    """Read a data file (or ``save_to_disk`` folder) into columns of python values.

    The format is chosen by what the path is: a folder is a ``datasets`` ``save_to_disk``
    folder, otherwise the suffix picks CSV, JSON lines / a JSON list, or Parquet.

    Parameters
    ----------
    path
        The file or folder, as the user configured it.
    key
        The config key the path came from, named in every error.

    Returns
    -------
    LocatedTable
        Columns in the file's order, all of the same (non-zero) length, and where each row is
        in the file. CSV values stay strings; JSON, Parquet and ``datasets`` values keep their
        types; a JSON row without one of the columns holds ``None`` (null) there.

    Raises
    ------
    ConfigError
        The path is empty or missing, its suffix unknown, or the data empty or malformed.
    """
    if not str(path).strip():
        raise ConfigError(f"{key} is empty: set it to a data file or a save_to_disk folder")
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"{key} {path}: no such file or folder")
    table = _read_saved_dataset(path, key) if path.is_dir() else _read_file(path, key)
    if not table:
        raise ConfigError(f"{key} {path}: the data has no columns")
    if not next(iter(table.values())):
        raise ConfigError(f"{key} {path}: the data has no rows")
    return table if isinstance(table, LocatedTable) else LocatedTable(table)


def _read_file(path: Path, key: str) -> Table:
    """A CSV, JSON or Parquet file, by its (case-insensitive) suffix; the text formats may be
    gzip or bzip2 compressed (``.csv.gz``)."""
    suffix, compression = path.suffix.lower(), None
    if suffix in COMPRESSIONS:
        compression, suffix = COMPRESSIONS[suffix], Path(path.stem).suffix.lower()
    if suffix not in SUFFIXES or (compression and suffix == ".parquet"):
        raise ConfigError(
            f"{key} {path}: unknown file type {''.join(path.suffixes) or '(no suffix)'!r}; "
            f"expected {', '.join(SUFFIXES)} (the text ones also as .gz or .bz2) or a folder "
            "written by datasets' save_to_disk"
        )
    if suffix == ".parquet":
        return _read_parquet(path, key)
    text = _read_text(path, key, compression)
    if suffix == ".csv":
        return _read_csv(text, path, key)
    if suffix == ".json":
        return _read_json(text, path, key)
    return _read_json_lines(text, path, key)


def _read_text(path: Path, key: str, compression: str | None = None) -> str:
    """The file as UTF-8 text (a byte-order mark, as spreadsheets write, is dropped)."""
    try:
        if compression is None:
            text = path.read_text(encoding="utf-8-sig")
        else:
            opener = importlib.import_module(compression).open
            with opener(path, "rt", encoding="utf-8-sig") as handle:
                text = handle.read()
    except UnicodeDecodeError as err:
        raise ConfigError(f"{key} {path}: not UTF-8 text ({err})") from None
    except (OSError, EOFError) as err:
        raise ConfigError(f"{key} {path}: cannot be read ({err})") from None
    if not text.strip():
        raise ConfigError(f"{key} {path}: the file is empty")
    return text


def _read_csv(text: str, path: Path, key: str) -> Table:
    """A CSV file with a header line; every row must have as many fields as the header."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise ConfigError(f"{key} {path}: the header repeats column(s) {_names(duplicates)}")
        table: Table = {name: [] for name in header}
        places: list[str] = []
        for row in reader:
            fields = _csv_fields(row, len(header))
            if fields != len(header):
                raise ConfigError(f"{key} {path}: line {reader.line_num} has {fields} fields, "
                                  f"the header has {len(header)}")
            # the row's first line: a quoted value may span lines
            breaks = sum(value.count("\n") for value in row.values() if value)
            places.append(f"line {reader.line_num - breaks}")
            for name, value in row.items():
                table[name].append(value)
    except csv.Error as err:
        raise ConfigError(f"{key} {path}: malformed CSV at line {reader.line_num} ({err})"
                          ) from None
    if table and not next(iter(table.values())):
        raise ConfigError(f"{key} {path}: the file has a header but no rows")
    return LocatedTable(table, places)


def _csv_fields(row: dict, header: int) -> int:
    """How many fields a ``DictReader`` row had: extras go under ``None``, gaps read ``None``."""
    if None in row:
        return header + len(row[None])
    return sum(value is not None for value in row.values())


def _read_json(text: str, path: Path, key: str) -> Table:
    """A ``.json`` file: one top-level list of row objects, or one object per line."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("["):
            raise ConfigError(
                f"{key} {path}: malformed JSON at line {err.lineno}, column {err.colno} "
                f"({err.msg})"
            ) from None
        return _read_json_lines(text, path, key)
    if isinstance(document, dict):
        raise ConfigError(
            f"{key} {path}: holds a single JSON object; expected a list of row objects or one "
            "object per line (pandas: to_json(orient='records', lines=True))"
        )
    if not isinstance(document, list):
        raise ConfigError(f"{key} {path}: expected a list of row objects, got a JSON "
                          f"{type(document).__name__}")
    if not document:
        raise ConfigError(f"{key} {path}: the JSON list is empty")
    return _rows_to_table(((f"item {i}", row) for i, row in enumerate(document)), path, key)


def _read_json_lines(text: str, path: Path, key: str) -> Table:
    """One JSON object per line; blank lines are skipped."""

    def rows() -> Iterable[tuple[str, Any]]:
        # split on "\n" only: JSON strings may hold U+2028 and other breaks unescaped
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"{key} {path}: malformed JSON at line {number}, column {err.colno} "
                    f"({err.msg})"
                ) from None

    return _rows_to_table(rows(), path, key)


def _rows_to_table(rows: Iterable[tuple[str, Any]], path: Path, key: str) -> LocatedTable:
    """Columns from ``(where, row)`` pairs, each row a JSON object: the columns are every key
    some row has (in first-seen order, at most :data:`MAX_JSON_COLUMNS`), and a row without a
    key holds ``None`` there, as a JSON null: the task's row checks then name its line (a
    missing label is a missing label, however it is written)."""
    table: Table = {}
    places: list[str] = []
    for where, row in rows:
        if not isinstance(row, dict):
            raise ConfigError(f"{key} {path}: {where} is a JSON {type(row).__name__}, "
                              "expected an object (one row, keyed by column)")
        for name in row:
            if name not in table:
                if len(table) == MAX_JSON_COLUMNS:
                    raise ConfigError(f"{key} {path}: {where} brings the rows' keys past "
                                      f"{MAX_JSON_COLUMNS} distinct columns")
                table[name] = [None] * len(places)
        for name, values in table.items():
            values.append(row.get(name))
        places.append(where)
    return LocatedTable(table, places)


def _read_parquet(path: Path, key: str) -> Table:
    """A Parquet file, through pyarrow (imported only here)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            f"{key} {path}: reading Parquet needs pyarrow: pip install pyarrow"
        ) from None
    try:
        return pq.read_table(path).to_pydict()
    except (OSError, ValueError, pa.ArrowException) as err:
        raise ConfigError(f"{key} {path}: not a readable Parquet file ({err})") from None


def _read_saved_dataset(path: Path, key: str) -> Table:
    """A folder written by ``Dataset.save_to_disk`` (or a ``DatasetDict``'s: its ``train``)."""
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise ConfigError(
            f"{key} {path}: a folder must be one written by datasets' save_to_disk "
            "(it has no state.json or dataset_dict.json)"
        )
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"{key} {path}: reading a save_to_disk folder needs datasets: pip install datasets"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{key} {path}: not a readable save_to_disk folder ({err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ConfigError(
                f"{key} {path}: the DatasetDict has no 'train' split (splits: {_names(loaded)})"
            )
        loaded = loaded["train"]
    return loaded.to_dict()


# ---------------------------------------------------------------------------------------------
# columns and templates


def column(table: Table, name: str, *, key: str) -> list:
    """The column ``name`` of ``table``.

    Parameters
    ----------
    table
        Data from :func:`read_table`.
    name
        The column, as configured.
    key
        The config key that named the column (``task.text-column``), named in the error.

    Raises
    ------
    ConfigError
        The table has no such column; the message lists the columns it has, sorted.
    """
    if name not in table:
        raise ConfigError(f"{key}: the data has no column {name!r} "
                          f"(columns: {_names(sorted(table))})")
    return table[name]


def template_columns(template: str, *, key: str = "task.template") -> tuple[str, ...]:
    """The columns a prompt template's ``{column}`` placeholders name, in first-use order.

    Templates follow ``str.format_map``, with ``{{`` and ``}}`` for literal braces, but a
    placeholder may only name a column (optionally with a ``!s``, ``!r`` or ``!a``
    conversion): attribute and index access (``{a.b}``, ``{a[0]}``), positional fields
    (``{}``, ``{0}``) and format specs (``{a:>99999}``, whose nested fields and widths could
    read or allocate more than the data holds) are refused, so a template only copies values.

    Raises
    ------
    ConfigError
        The template does not parse, names no column, or uses a refused form.
    """
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as err:
        raise ConfigError(
            f"{key}: {template!r} is not a valid template ({err}); write a literal brace as "
            "{{ or }}"
        ) from None
    names: dict[str, None] = {}
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        placeholder = "{" + field + (f"!{conversion}" if conversion else "") + (
            f":{spec}" if spec else "") + "}"
        if not field or field.isdigit():
            raise ConfigError(f"{key}: placeholder {placeholder} must name a column, "
                              "like {text}")
        if any(char in field for char in ".[]"):
            raise ConfigError(
                f"{key}: placeholder {placeholder} uses attribute or index access; only plain "
                "column names like {text} are allowed"
            )
        if spec:
            raise ConfigError(f"{key}: placeholder {placeholder} has a format spec; only plain "
                              "column names like {text} are allowed")
        if conversion not in CONVERSIONS:
            raise ConfigError(f"{key}: placeholder {placeholder} has an unknown conversion; "
                              "use !s, !r or !a, or none")
        names[field] = None
    if not names:
        raise ConfigError(f"{key}: {template!r} has no {{column}} placeholder, so every "
                          "prompt would be the same")
    return tuple(names)


def render(template: str, row: Mapping[str, Any], *, key: str = "task.template") -> str:
    """One prompt: ``template`` with each ``{column}`` replaced by the row's value.

    Raises
    ------
    ConfigError
        The template is refused (see :func:`template_columns`), names a column the row lacks,
        or the row has no value (``None``) for a column it names.
    """
    names = template_columns(template, key=key)
    _check_placeholders(names, row, key)
    for name in names:
        if row[name] is None:
            raise ConfigError(f"{key}: the row has no value (null) for {{{name}}}")
    return template.format_map(row)


def render_column(table: Table, template: str, *, key: str = "task.template") -> list[str]:
    """One prompt per row of ``table`` (see :func:`render`); the template is checked once.

    Raises
    ------
    ConfigError
        As :func:`render`; a null value names its row (counting from 0).
    """
    names = template_columns(template, key=key)
    _check_placeholders(names, table, key)
    columns = [table[name] for name in names]
    prompts = []
    for index, values in enumerate(zip(*columns)):
        for name, value in zip(names, values):
            if value is None:
                raise ConfigError(f"{key}: row {index} has no value (null) for {{{name}}}")
        prompts.append(template.format_map(dict(zip(names, values))))
    return prompts


def _check_placeholders(names: Sequence[str], columns: Iterable[str], key: str) -> None:
    """Every placeholder names one of ``columns``."""
    available = list(columns)
    for name in names:
        if name not in available:
            raise ConfigError(f"{key}: placeholder {{{name}}} names no column of the data "
                              f"(columns: {_names(sorted(available))})")


# ---------------------------------------------------------------------------------------------
# rows a task cannot use

#: skipped rows per data file read in this process (``task.skip-invalid-rows``), for the
#: run's results (``metrics.json``): the file's path -> how many rows were skipped
SKIPPED_ROWS: dict[str, int] = {}


@dataclass(frozen=True)
class RowCheck:
    """One thing every row must satisfy for a task to use it.

    Attributes
    ----------
    column : str
        The column checked.
    key : str
        The config key that named the column (``task.label-column``), named in the error.
    problem : callable
        ``value -> None`` when the value will do, else what is wrong with it (``"no label"``,
        ``"label 'meh', expected one of ..."``).
    """

    column: str
    key: str
    problem: Callable[[Any], str | None]


def missing(value: Any) -> bool:
    """Whether a label is absent: JSON null, a missing JSON key, or an empty CSV field."""
    return value is None or (isinstance(value, str) and not value.strip())


def present(column: str, key: str) -> RowCheck:
    """Rows must have a value in ``column``: not JSON null nor a missing key (an empty text
    is a text, and CSV cannot tell it from a missing one)."""
    return RowCheck(column, key, lambda value: "no value (null)" if value is None else None)


def valid_label(column: str, *, names: Sequence[str] = (), num_labels: int,
                key: str = "task.label-column") -> RowCheck:
    """Rows must hold a label :func:`label_ids` accepts (a known name, or an id in
    ``[0, num_labels)``) in ``column``; an empty one is reported as a missing label."""
    index = _name_index(names, num_labels, key) if names else None
    expected = (f"one of the label names ({_names(names)})" if index is not None
                else f"an integer in [0, {num_labels})")

    def problem(value: Any) -> str | None:
        if missing(value):
            return "no label"
        if _label_id(value, index, num_labels) is None:
            return f"label {_shown(value)}, expected {expected}"
        return None

    return RowCheck(column, key, problem)


def checked_rows(table: Table, checks: Sequence[RowCheck], *, skip: bool = False,
                 source: str = "task.data-path") -> Table:
    """``table`` without the rows that fail a check, or an error listing them.

    Parameters
    ----------
    table
        Data from :func:`read_table` (a :class:`LocatedTable` names each row by its line).
    checks
        What each row must satisfy; a column a check names must exist (see :func:`column`).
    skip
        ``task.skip-invalid-rows``: drop the failing rows, log how many and record the count
        in :data:`SKIPPED_ROWS`, instead of refusing the file. A file of which no row passes
        is refused either way.
    source
        The config key and path of the data, as messages name it.

    Raises
    ------
    ConfigError
        Some rows fail (``skip`` off) or every row does: the message lists the first
        :data:`SHOWN_BAD_ROWS` by the file's line and says how many more there are.
    """
    columns = [(check, column(table, check.column, key=check.key)) for check in checks]
    total = len(next(iter(table.values()), []))
    bad: list[tuple[int, str]] = []
    keys: set[str] = set()
    for row in range(total):
        for check, values in columns:
            why = check.problem(values[row])
            if why:
                bad.append((row, f"{check.key} {check.column!r}: {why}"))
                keys.add(check.key)
                break
    if not bad:
        return table
    where = table.where if isinstance(table, LocatedTable) else (lambda row: f"row {row + 1}")
    problems = [f"{where(row)}: {why}" for row, why in bad]
    if not skip or len(bad) == total:
        # one key at the head when one check failed: what a node's error reply may name
        raise invalid_rows_error(source, problems, total, skip=skip,
                                 key=keys.pop() if len(keys) == 1 else None)
    dropped = {row for row, _ in bad}
    keep = [row for row in range(total) if row not in dropped]
    kept = {name: [values[row] for row in keep] for name, values in table.items()}
    places = [where(row) for row in keep]
    log.warning("%s: skipped %d of %d rows that cannot be used (task.skip-invalid-rows); "
                "first: %s", source, len(bad), total, problems[0])
    SKIPPED_ROWS[source.split(" ", 1)[-1]] = len(bad)
    return LocatedTable(kept, places)


def invalid_rows_error(source: str, problems: list[str], total: int, *, skip: bool,
                       key: str | None = None) -> ConfigError:
    """The error for rows that cannot be used: how many, the first few by line, what to do.
    It starts with ``key`` (the config key of the one check that failed, e.g.
    ``task.label-column``) where given, else with ``source``."""
    listed = "\n".join(f"  {line}" for line in problems[:SHOWN_BAD_ROWS])
    more = len(problems) - SHOWN_BAD_ROWS
    if more > 0:
        listed += f"\n  ... and {more} more"
    rows = f"the {total} rows of {source}" if key else f"its {total} rows"
    head = f"{key}: " if key else f"{source}: "
    if skip and len(problems) == total:
        return ConfigError(f"{head}none of {rows} can be used (task.skip-invalid-rows would "
                           f"leave no data):\n{listed}")
    return ConfigError(f"{head}{len(problems)} of {rows} cannot be used:\n{listed}\n"
                       "Fix or remove them, or set task.skip-invalid-rows = true to skip them "
                       "(they are counted and logged)")


def _shown(value: Any) -> str:
    """A data value in a message, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------------
# labels


def label_ids(values: list, *, names: Sequence[str] = (), num_labels: int,
              key: str = "task.label-column") -> np.ndarray:
    """Class ids in ``[0, num_labels)`` of a label column.

    Without ``names`` a label is an integer, an integral float (``1.0``, as JSON or Parquet
    may hold it) or a string of one (``"1"``, as CSV holds it). With ``names`` a label is a
    string, and its id is its position in ``names``. Booleans are refused either way: whether
    ``true`` is class 1 is for the user to say, through ``names`` or the data.

    Parameters
    ----------
    values
        The label column.
    names
        Class names in id order, as many as ``num_labels``; empty for numeric labels.
    num_labels
        Classes of the model's head.
    key
        The config key of the label column, named in every error.

    Returns
    -------
    numpy.ndarray
        ``int64`` ids, one per value.

    Raises
    ------
    ConfigError
        ``names`` do not fit ``num_labels``, or a value is not a known name or an id in range;
        the message shows the first such value and its row (counting from 0).
    """
    if num_labels < 1:
        raise ConfigError(f"{key}: the number of labels must be >= 1, got {num_labels}")
    index = _name_index(names, num_labels, key) if names else None
    ids = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        label = _label_id(value, index, num_labels)
        if label is None:
            expected = (f"one of the label names ({_names(names)})" if index is not None
                        else f"an integer in [0, {num_labels})")
            raise ConfigError(f"{key}: row {row} has label {value!r}, expected {expected}")
        ids[row] = label
    return ids


def _name_index(names: Sequence[str], num_labels: int, key: str) -> dict[str, int]:
    """Class name -> id; the names must be distinct strings, one per class."""
    if isinstance(names, str):
        raise ConfigError(f"{key}: label names must be a list of strings, got {names!r}")
    if len(names) != num_labels:
        raise ConfigError(f"{key}: {len(names)} label names ({_names(names)}) for "
                          f"{num_labels} labels; give one name per label")
    if not all(isinstance(name, str) for name in names):
        raise ConfigError(f"{key}: label names must be strings, got {list(names)!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: label names repeat ({_names(names)})")
    return {name: i for i, name in enumerate(names)}


def _label_id(value: Any, index: dict[str, int] | None, num_labels: int) -> int | None:
    """The id of one label, or None when it has none."""
    if index is not None:
        return index.get(value) if isinstance(value, str) else None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            return None
    elif isinstance(value, (float, np.floating)):
        if not float(value).is_integer():
            return None
        value = int(value)
    elif not isinstance(value, (int, np.integer)):
        return None
    return int(value) if 0 <= value < num_labels else None


def _names(items: Iterable[Any]) -> str:
    """A short comma-separated listing for messages (the first :data:`PREVIEW` items)."""
    items = [str(item) for item in items]
    more = len(items) - PREVIEW
    return ", ".join(items[:PREVIEW]) + (f", ... ({more} more)" if more > 0 else "")


# ---------------------------------------------------------------------------------------------
# numeric feature CSVs (a node's own data for the digits and MNIST tasks)

#: the name of the label column of a feature CSV
LABEL = "label"
#: a feature value: a plain decimal number (no spaces, no ``nan``/``inf``, no ``1_0``), so that
#: every implementation of the node (Python, JavaScript) accepts exactly the same text
NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_NUMBER = re.compile(NUMBER)
_NUMBERS = re.compile(f"{NUMBER}(?:,{NUMBER})*")
_LABEL = re.compile(r"[0-9]+")


def read_feature_csv(path: str | Path, *, features: int, low: float, high: float,
                     classes: int, key: str = "task.data-path", skip_invalid: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A node's own numeric data: a CSV with a header, one ``label`` column and ``features``
    feature columns (in the order the model reads them, wherever ``label`` stands).

    Features are decimal numbers in ``[low, high]``, read as float64 and cast to float32 (the
    task's input dtype); labels are integers (digits only) in ``[0, classes)``. Blank lines
    are skipped; fields may be quoted as RFC 4180 says. A row that breaks these rules (a
    missing label, a bad value) is reported with its line, with the first few others; with
    ``skip_invalid`` (``task.skip-invalid-rows``) such rows are dropped, logged and counted
    (:data:`SKIPPED_ROWS`) instead, unless no row is left.

    Returns
    -------
    tuple of numpy.ndarray
        float32 ``[rows, features]`` and int64 ``[rows]``.

    Raises
    ------
    ConfigError
        The file is missing, unreadable or not UTF-8; the header lacks ``label``, repeats a
        column or has the wrong number of features; rows have the wrong number of fields, a
        value that is not a decimal number, a feature out of range or a bad label (the error
        names their lines, the first :data:`SHOWN_BAD_ROWS`); or there are no rows.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key} {path}: no such file (expected a CSV with a {LABEL!r} "
                          f"column and {features} feature columns)")
    text = _read_text(path, key, COMPRESSIONS.get(path.suffix.lower()))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    values: list[np.ndarray] = []
    labels: list[int] = []
    problems: list[str] = []
    try:
        header = next((row for row in reader if row), [])
        where = f"{key} {path}: line {reader.line_num}"
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise ConfigError(f"{where}: the header repeats column(s) {_names(duplicates)}")
        if LABEL not in header:
            raise ConfigError(f"{where}: the header has no {LABEL!r} column (expected "
                              f"{LABEL!r} and {features} feature columns)")
        if len(header) != features + 1:
            raise ConfigError(f"{where}: the header has {len(header) - 1} feature columns "
                              f"besides {LABEL!r}, the task reads {features}")
        at = header.index(LABEL)
        for row in reader:
            if not row:
                continue
            try:
                numbers, label = _feature_row(row, header, at, low, high, classes)
            except ValueError as err:
                problems.append(f"line {reader.line_num}: {err}")
                continue
            values.append(numbers)
            labels.append(label)
    except csv.Error as err:
        raise ConfigError(f"{key} {path}: malformed CSV at line {reader.line_num} ({err})"
                          ) from None
    if not labels and not problems:
        raise ConfigError(f"{key} {path}: the file has no rows")
    if problems:
        total = len(labels) + len(problems)
        if not skip_invalid or not labels:
            raise invalid_rows_error(f"{key} {path}", problems, total, skip=skip_invalid)
        log.warning("%s %s: skipped %d of %d rows that cannot be used "
                    "(task.skip-invalid-rows); first: %s", key, path, len(problems), total,
                    problems[0])
        SKIPPED_ROWS[str(path)] = len(problems)
    # float64 first, then float32 (round to nearest even): a JavaScript node does the same
    return np.stack(values).astype(np.float32), np.asarray(labels, dtype=np.int64)


def _feature_row(row: list[str], header: list[str], at: int, low: float, high: float,
                 classes: int) -> tuple[np.ndarray, int]:
    """One row of a feature CSV: its features and label, or a ``ValueError`` saying what is
    wrong with it (the caller adds the line)."""
    if len(row) != len(header):
        raise ValueError(f"{len(row)} fields, the header has {len(header)}")
    row = list(row)
    label = row.pop(at)
    joined = ",".join(row)  # one match for the whole row; a quoted "0,5" is no number
    if joined.count(",") != len(row) - 1 or not _NUMBERS.fullmatch(joined):
        bad = next(i for i, v in enumerate(row) if not _NUMBER.fullmatch(v))
        name = header[bad + (bad >= at)]
        raise ValueError(f"column {name!r} holds {row[bad][:40]!r}, expected a decimal number")
    if not label.strip():
        raise ValueError(f"no label in column {LABEL!r}")
    if not _LABEL.fullmatch(label) or int(label) >= classes:
        raise ValueError(f"label {label[:40]!r}, expected an integer in [0, {classes})")
    return _in_range(row, header, at, low, high), int(label)


def _in_range(row: list[str], header: list[str], at: int, low: float, high: float
              ) -> np.ndarray:
    """The features of ``row`` (decimal text) as float64, each checked to lie in
    ``[low, high]`` (a ``ValueError`` names the first that does not). Python's ``float``
    rounds decimal text correctly, as JavaScript's ``Number`` does."""
    numbers = np.fromiter(map(float, row), dtype=np.float64, count=len(row))
    outside = np.flatnonzero(~((numbers >= low) & (numbers <= high)))
    if len(outside):
        bad = int(outside[0])
        name = header[bad + (bad >= at)]
        raise ValueError(f"column {name!r} holds {row[bad][:40]}, outside [{low}, {high}]")
    return numbers
