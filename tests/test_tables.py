"""Users' data files (CSV, JSON lines, Parquet, save_to_disk), templates, labels and natural
partitions: round trips, and an error naming the config key for each way the data can be wrong."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cola_fed.errors import ConfigError
from cola_fed.tasks.partition import natural_partition, natural_partition_names
from cola_fed.tasks.tables import (
    column,
    label_ids,
    read_table,
    render,
    render_column,
    template_columns,
)

ROWS = [{"text": "good film", "label": 1}, {"text": "dull, long", "label": 0},
        {"text": 'said "wow"\nthen left', "label": 1}]
COLUMNS = {"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}


def write_jsonl(path, rows, end="\n"):
    path.write_text("".join(json.dumps(r) + end for r in rows), encoding="utf-8")
    return path


@contextlib.contextmanager
def raises(*parts):
    """``pytest.raises(ConfigError)`` whose message must hold every one of ``parts``."""
    with pytest.raises(ConfigError) as info:
        yield info
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"


# ---------------------------------------------------------------------------------------------
# formats


def test_csv_round_trip_keeps_strings(tmp_path):
    import csv

    path = tmp_path / "data.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(ROWS)
    table = read_table(path)
    assert list(table) == ["text", "label"]
    assert table["text"] == COLUMNS["text"]
    assert table["label"] == ["1", "0", "1"]


def test_csv_with_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "excel.CSV"
    path.write_bytes("\ufefftext,label\r\nh\u00e9\u2028llo,1\r\n".encode())
    assert read_table(path) == {"text": ["h\u00e9\u2028llo"], "label": ["1"]}


def test_jsonl_round_trip_keeps_types(tmp_path):
    table = read_table(write_jsonl(tmp_path / "data.jsonl", ROWS))
    assert table == COLUMNS


def test_jsonl_skips_blank_lines_and_keeps_unescaped_line_breaks(tmp_path):
    rows = [*ROWS, {"text": "a\u2028b\u0085c\rd", "label": 0}]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    path = tmp_path / "data.jsonl"
    path.write_text("\n" + "\n\n".join(lines) + "\r\n\n", encoding="utf-8", newline="")
    table = read_table(path)
    assert table["text"] == [r["text"] for r in rows]


def test_json_lines_and_json_list(tmp_path):
    assert read_table(write_jsonl(tmp_path / "lines.json", ROWS)) == COLUMNS
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    assert read_table(listed) == COLUMNS


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.table(COLUMNS), path)
    table = read_table(str(path))
    assert table == COLUMNS
    assert all(isinstance(values, list) for values in table.values())


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")

    single = tmp_path / "single"
    datasets.Dataset.from_dict(COLUMNS).save_to_disk(str(single))
    assert read_table(single) == COLUMNS

    both = tmp_path / "both"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(COLUMNS),
        "test": datasets.Dataset.from_dict({"text": ["x"], "label": [0]}),
    }).save_to_disk(str(both))
    assert read_table(both) == COLUMNS

    no_train = tmp_path / "no_train"
    datasets.DatasetDict({
        "validation": datasets.Dataset.from_dict(COLUMNS),
        "test": datasets.Dataset.from_dict(COLUMNS),
    }).save_to_disk(str(no_train))
    with raises("task.data-path", "no 'train' split", "test", "validation"):
        read_table(no_train)


# ---------------------------------------------------------------------------------------------
# reading errors


def test_missing_and_empty_paths(tmp_path):
    with raises("task.data-path", "no such file or folder"):
        read_table(tmp_path / "nope.csv")
    with raises("task.data-path is empty"):
        read_table("")
    with raises("my.key", "no such file"):
        read_table(tmp_path / "nope.csv", key="my.key")


def test_unknown_suffix_lists_the_accepted_ones(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("text\tlabel\n", encoding="utf-8")
    with raises("task.data-path", "'.tsv'", ".csv", ".json", ".jsonl", ".parquet",
                 "save_to_disk"):
        read_table(path)


def test_folder_that_is_no_saved_dataset(tmp_path):
    with raises("task.data-path", "save_to_disk", "state.json"):
        read_table(tmp_path)


@pytest.mark.parametrize("name", ["data.csv", "data.jsonl", "data.json"])
def test_empty_files(tmp_path, name):
    path = tmp_path / name
    path.write_text(" \n\n", encoding="utf-8")
    with raises("task.data-path", "empty"):
        read_table(path)


def test_csv_header_without_rows(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\n", encoding="utf-8")
    with raises("task.data-path", "no rows"):
        read_table(path)


def test_csv_row_with_wrong_field_count_names_the_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,label\na,1\nb,0,extra\n", encoding="utf-8")
    with raises("task.data-path", "line 3", "3 fields", "header has 2"):
        read_table(path)
    path.write_text("text,label\na,1\nb\n", encoding="utf-8")
    with raises("line 3", "1 fields"):
        read_table(path)


def test_csv_repeated_column(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("text,text\na,b\n", encoding="utf-8")
    with raises("task.data-path", "repeats", "text"):
        read_table(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"text,label\n\xff\xfe,1\n")
    with raises("task.data-path", "UTF-8"):
        read_table(path)


def test_malformed_json_line_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": \n', encoding="utf-8")
    with raises("task.data-path", "malformed JSON at line 3"):
        read_table(path)


def test_malformed_json_list_names_the_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n {"text": "a"},\n {"text": }\n]', encoding="utf-8")
    with raises("task.data-path", "malformed JSON at line 3"):
        read_table(path)


def test_a_key_some_rows_lack_is_null_there_and_its_line_is_kept(tmp_path):
    """A row without a key holds null there (a missing label is a missing label, however it
    is written): the task's row checks then name its line (test_invalid_rows_* below)."""
    path = write_jsonl(tmp_path / "data.jsonl",
                       [{"text": "a"}, {"text": "b", "label": 0}, {"text": "c"}])
    table = read_table(path)
    assert table == {"text": ["a", "b", "c"], "label": [None, 0, None]}
    assert [table.where(row) for row in range(3)] == ["line 1", "line 2", "line 3"]
    listed = tmp_path / "data.json"
    listed.write_text(json.dumps([{"text": "a", "label": 1}, {"txt": "b", "label": 1}]))
    assert read_table(listed) == {"text": ["a", None], "label": [1, 1], "txt": [None, "b"]}
    wide = write_jsonl(tmp_path / "wide.jsonl", [{f"k{i}": 0} for i in range(1100)])
    with raises("task.data-path", "line 1025", "1024 distinct columns"):
        read_table(wide)


@pytest.mark.parametrize("row", ["[1, 2]", '"text"', "3", "null"])
def test_non_object_rows(tmp_path, row):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n' + row + "\n", encoding="utf-8")
    with raises("task.data-path", "line 2", "expected an object"):
        read_table(path)
    listed = tmp_path / "data.json"
    listed.write_text(f'[{{"text": "a"}}, {row}]', encoding="utf-8")
    with raises("item 1", "expected an object"):
        read_table(listed)


def test_json_single_object_and_empty_list(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(COLUMNS, indent=1), encoding="utf-8")
    with raises("task.data-path", "single JSON object", "one object per line"):
        read_table(path)
    path.write_text("[]", encoding="utf-8")
    with raises("task.data-path", "empty"):
        read_table(path)


def test_broken_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "data.parquet"
    path.write_bytes(b"not parquet at all")
    with raises("task.data-path", "Parquet"):
        read_table(path)


def test_parquet_without_pyarrow_names_the_install(tmp_path, monkeypatch):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with raises("task.data-path", "pip install pyarrow"):
        read_table(path)


# ---------------------------------------------------------------------------------------------
# columns and templates


def test_column_names_the_key_and_the_columns():
    table = {"text": ["a"], "label": [1]}
    assert column(table, "text", key="task.text-column") == ["a"]
    with pytest.raises(ConfigError) as info:
        column(table, "txt", key="task.text-column")
    assert str(info.value) == \
        "task.text-column: the data has no column 'txt' (columns: label, text)"


def test_render_and_escapes():
    row = {"instruction": "Add", "context": "2 and {3}", "n": 4}
    assert render("Q: {instruction} {{literal}} {context}!{n}", row) == \
        "Q: Add {literal} 2 and {3}!4"
    assert render("{instruction!r}", row) == "'Add'"
    assert render("{my col}-{a-b}", {"my col": 1, "a-b": 2}) == "1-2"


def test_render_column_renders_every_row():
    table = {"q": ["a", "b"], "ctx": ["", "c"], "unused": [None, None]}
    assert render_column(table, "### {q}\n{ctx}") == ["### a\n", "### b\nc"]
    assert template_columns("{q}{ctx}{q}") == ("q", "ctx")


@pytest.mark.parametrize("template, part", [
    ("{a.b}", "attribute or index"),
    ("{a[0]}", "attribute or index"),
    ("{a.__class__}", "attribute or index"),
    ("{a:>999999999}", "format spec"),
    ("{a:{b}}", "format spec"),
    ("{}", "must name a column"),
    ("{0}", "must name a column"),
    ("{a!x}", "conversion"),
    ("{a", "not a valid template"),
    ("a}", "not a valid template"),
    ("no placeholders", "no {column} placeholder"),
])
def test_refused_templates(template, part):
    with raises("task.template", part):
        render(template, {"a": "x", "b": "y"})
    with raises("my.template", part):
        render_column({"a": ["x"], "b": ["y"]}, template, key="my.template")


def test_unknown_placeholder_names_the_columns():
    with raises("task.template", "{txt}", "columns: label, text"):
        render_column({"text": ["a"], "label": [0]}, "{text} {txt}")
    with raises("task.template", "{txt}", "columns: text"):
        render("{txt}", {"text": "a"})


def test_null_values_are_refused_with_their_row():
    with raises("task.template", "row 1", "{ctx}"):
        render_column({"ctx": ["a", None]}, "{ctx}")
    with raises("task.template", "{ctx}"):
        render("{ctx}", {"ctx": None})


# ---------------------------------------------------------------------------------------------
# labels


def test_numeric_labels():
    ids = label_ids([0, "1", " 2 ", 1.0, np.int64(2)], num_labels=3)
    assert ids.dtype == np.int64
    assert ids.tolist() == [0, 1, 2, 1, 2]


def test_named_labels():
    ids = label_ids(["pos", "neg", "pos"], names=("neg", "pos"), num_labels=2)
    assert ids.dtype == np.int64
    assert ids.tolist() == [1, 0, 1]


@pytest.mark.parametrize("values, bad", [
    ([0, 1, 2], "row 2 has label 2"),
    (["0", "-1"], "row 1 has label '-1'"),
    ([0, "1.5"], "row 1 has label '1.5'"),
    ([0.5], "row 0 has label 0.5"),
    ([1, True], "row 1 has label True"),
    ([None], "row 0 has label None"),
])
def test_bad_numeric_labels(values, bad):
    with raises("task.label-column", bad, "[0, 2)"):
        label_ids(values, num_labels=2)


def test_bad_named_labels():
    with raises("task.label-column", "row 1 has label 'meh'", "neg, pos"):
        label_ids(["pos", "meh"], names=("neg", "pos"), num_labels=2)
    with raises("row 0 has label 1"):
        label_ids([1], names=("neg", "pos"), num_labels=2)
    with raises("my.labels", "3 label names", "2 labels"):
        label_ids(["a"], names=("a", "b", "c"), num_labels=2, key="my.labels")
    with raises("repeat"):
        label_ids(["a"], names=("a", "a"), num_labels=2)


# ---------------------------------------------------------------------------------------------
# natural partitions


CATEGORIES = ["qa", "summary", "qa", "brainstorm", "summary", "qa", "closed_qa", 3, "3"]


def test_natural_partition_covers_rows_disjointly_one_value_each():
    names = natural_partition_names(CATEGORIES)
    assert names == ["3", "brainstorm", "closed_qa", "qa", "summary"]
    parts = [natural_partition(CATEGORIES, i, len(names)) for i in range(len(names))]
    every = np.concatenate(parts)
    assert sorted(every.tolist()) == list(range(len(CATEGORIES)))
    for i, rows in enumerate(parts):
        assert rows.dtype == np.int64
        assert rows.tolist() == sorted(rows.tolist())
        assert {str(CATEGORIES[r]) for r in rows} == {names[i]}


def test_natural_partition_is_deterministic_whatever_the_order():
    shuffled = list(reversed(CATEGORIES))
    assert natural_partition_names(shuffled) == natural_partition_names(CATEGORIES)
    assert natural_partition(CATEGORIES, 3, 5).tolist() == [0, 2, 5]
    code = textwrap.dedent(
        """
        from cola_fed.tasks.partition import natural_partition
        print(natural_partition(["b", "a", "c", "a"], 0, 3).tolist())
        """
    )
    seeds = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
             for seed in ("1", "2")}
    assert seeds == {"[1, 3]\n"}


def test_natural_partition_count_mismatch():
    with raises("task.partition-by", "5 distinct value(s)", "'3', 'brainstorm'", "4 partition",
                 "exactly 5 node"):
        natural_partition(CATEGORIES, 0, 4)
    with raises("6 partition"):
        natural_partition(CATEGORIES, 0, 6)


def test_natural_partition_id_out_of_range_and_nulls():
    with raises("partition-id 5", "[0, 5)"):
        natural_partition(CATEGORIES, 5, 5)
    with raises("partition-id -1"):
        natural_partition(CATEGORIES, -1, 5)
    with raises("task.partition-by", "row 1", "null"):
        natural_partition(["a", None], 0, 1)


# ---------------------------------------------------------------------------------------------
# footprint


def test_modules_import_and_read_text_without_torch(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    code = textwrap.dedent(
        f"""
        import sys
        import cola_fed.tasks.tables, cola_fed.tasks.partition
        from cola_fed.tasks.tables import read_table, render_column, label_ids
        from cola_fed.tasks.partition import natural_partition

        table = read_table({str(path)!r})
        render_column(table, "{{text}}")
        label_ids(table["label"], num_labels=2)
        natural_partition(table["label"], 0, 2)
        heavy = sorted({{"torch", "pyarrow", "datasets", "flwr_datasets"}} & set(sys.modules))
        assert not heavy, heavy
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("suffix, opener", [(".csv.gz", "gzip"), (".jsonl.bz2", "bz2")])
def test_compressed_text_files_read_as_their_inner_format(tmp_path, suffix, opener):
    import importlib

    path = tmp_path / f"data{suffix}"
    text = ("text,label\nhi,1\nho,0\n" if ".csv" in suffix else
            '{"text": "hi", "label": 1}\n{"text": "ho", "label": 0}\n')
    with importlib.import_module(opener).open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    table = read_table(path)
    assert [str(v) for v in table["label"]] == ["1", "0"] and table["text"] == ["hi", "ho"]


def test_a_compressed_parquet_or_unknown_inner_format_is_refused(tmp_path):
    for name in ("data.parquet.gz", "data.txt.gz"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ConfigError, match="unknown file type"):
            read_table(tmp_path / name)



# ---------------------------------------------------------------------------------------------
# rows a task cannot use: the file's line numbers, the first few rows, task.skip-invalid-rows


def label_csv(path, labels) -> str:
    """A text CSV with one row per label (an empty label is a missing one), after a quoted
    text of two lines, so that lines and rows differ."""
    lines = ["text,label", '"two\nlines",pos'] + [f"row {i},{label}" for i, label in
                                                    enumerate(labels)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def sequence_task(data_path: str, **extra):
    from cola_fed.config import TaskConfig
    from cola_fed.tasks import get_task

    return get_task(TaskConfig(name="sequence-classification", data_path=data_path,
                               label_names="neg,pos", **extra))


def test_invalid_rows_are_named_by_the_files_lines_the_first_five_then_a_count(tmp_path):
    path = label_csv(tmp_path / "data.csv", ["pos", "", "neg", "meh", "", "", "", "", "pos"])
    with raises("task.label-column: 6 of the 10 rows of task.data-path " + path
                + " cannot be used",
                # the header is line 1, the two-line text lines 2-3
                "line 5: task.label-column 'label': no label",
                "line 7: task.label-column 'label': label 'meh', expected one of the label "
                "names (neg, pos)", "line 10: task.label-column 'label': no label",
                "... and 1 more", "task.skip-invalid-rows = true") as info:
        sequence_task(path).labels()
    assert "line 11" not in str(info.value)  # only the first five are listed


def test_skip_invalid_rows_drops_logs_and_counts_them(tmp_path, caplog):
    from cola_fed.tasks.tables import SKIPPED_ROWS

    path = label_csv(tmp_path / "data.csv", ["pos", "", "neg", "meh", "pos"])
    task = sequence_task(path, skip_invalid_rows=True)
    with caplog.at_level("WARNING", logger="cola_fed"):
        assert task.labels().tolist() == [1, 1, 0, 1]
    assert task.table()["text"] == ["two\nlines", "row 0", "row 2", "row 4"]
    assert [task.table().where(i) for i in range(4)] == ["line 2", "line 4", "line 6",
                                                         "line 8"]
    assert "skipped 2 of 6 rows" in caplog.text and "line 5: task.label-column" in caplog.text
    assert SKIPPED_ROWS[path] == 2


def test_a_file_with_no_usable_row_is_an_error_even_when_skipping(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\na,\nb,meh\n", encoding="utf-8")
    with raises("none of the 2 rows of task.data-path", "can be used",
                "line 2: task.label-column 'label': no label",
                "line 3: task.label-column 'label': label 'meh'"):
        sequence_task(str(bad), skip_invalid_rows=True).labels()


def test_instruction_jsonl_rows_without_a_response_name_their_lines(tmp_path):
    from cola_fed.config import TaskConfig
    from cola_fed.tasks import get_task

    rows = [{"q": "a?", "a": "yes"}, {"q": "b?"}, {"q": "c?", "a": None}, {"q": "d?", "a": "no"}]
    path = write_jsonl(tmp_path / "data.jsonl", rows, end="\n\n")  # blank lines between
    config = TaskConfig(name="causal-lm", data_path=str(path), prompt_column="q",
                        response_column="a")
    with raises("task.response-column: 2 of the 4 rows", "cannot be used",
                "line 3: task.response-column 'a': no value (null)",
                "line 5: task.response-column 'a': no value (null)"):
        get_task(config).table()
    kept = get_task(dataclasses.replace(config, skip_invalid_rows=True)).table()
    assert kept == {"q": ["a?", "d?"], "a": ["yes", "no"]}


def test_text_classification_own_file_names_lines_too(tmp_path):
    from cola_fed.config import TaskConfig
    from cola_fed.tasks import get_task

    path = tmp_path / "own.csv"
    path.write_text("text,label\ngood,1\nbad,\nfine,0\n", encoding="utf-8")
    with raises("1 of the 3 rows", "line 3: task.label-column 'label': no label"):
        get_task(TaskConfig(data_path=str(path))).labels()
    task = get_task(TaskConfig(data_path=str(path), skip_invalid_rows=True))
    assert task.labels().tolist() == [1, 0]


def test_feature_csv_lists_its_bad_rows_and_can_skip_them(tmp_path):
    from cola_fed.tasks.tables import read_feature_csv

    good, rows = "0.5,0.25", ["f0,label,f1"]
    rows += [f"0.5,{label},0.25" for label in ("1", "", "7", "x", "2", "", "", "", "1")]
    rows.insert(3, "")  # a blank line: skipped, but counted as a line
    path = tmp_path / "own.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with raises("task.data-path", "6 of its 9 rows cannot be used", "line 3: no label in column "
                "'label'", "line 5: label '7', expected an integer in [0, 3)", "line 6: label "
                "'x'", "... and 1 more"):
        read_feature_csv(path, features=2, low=0.0, high=1.0, classes=3)
    features, labels = read_feature_csv(path, features=2, low=0.0, high=1.0, classes=3,
                                        skip_invalid=True)
    assert labels.tolist() == [1, 2, 1] and features.tolist() == [[0.5, 0.25]] * 3
    assert good
