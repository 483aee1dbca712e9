"""docs/formats.md against the Parquet writers: every documented column exists with its
documented type, and every column a writer writes is documented.

The writers' side comes from the code: every `pyarrow.Schema` held by a module of thresher whose
source builds one (`pa.schema(`), which is how every Parquet file of a run gets its columns
(summary, features, examples, labels, curves, and each modality's inputs manifest). The doc's
side is every table whose header is `| column | type | meaning |`: its first cell names one or
more columns in backticks, its second gives one type for all of them or one type each. Each
schema is paired with the doc table sharing the most column names, so a renamed column shows
up as one missing and one undocumented.

The features table is checked line by line against the declarations of
thresher/analysis/feature_columns.py (name, type, meaning, order), so a new statistic whose line
is missing fails with its name and the line to add.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

import pyarrow as pa
import pytest

from tests.paths import ROOT
from thresher.analysis.feature_columns import (
    FEATURE_STATISTICS,
    KEY_COLUMNS,
    Column,
    FeatureStatistic,
)

DOC = ROOT / "docs" / "formats.md"
HEADER = "| column | type | meaning |"
# Doc names for the Arrow types whose str() differs (str(pa.float64()) is "double").
FEATURES_HEADING = "## stats/features.parquet"
DOC_NAMES = {pa.float64(): "float64", pa.float32(): "float32", pa.float16(): "float16",
             pa.bool_(): "bool", pa.string(): "string", pa.large_string(): "string"}


@dataclass
class DocTable:
    section: str  # the heading (and the line before the table, where it names a variant)
    columns: dict[str, str]  # column -> documented type


def doc_type(t: pa.DataType) -> str:
    """An Arrow type as docs/formats.md writes it: float64, int32, list<int32>, ..."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{doc_type(t.value_type)}>"
    return DOC_NAMES.get(t, str(t))


def doc_tables(text: str) -> list[DocTable]:
    """The column tables of the doc, in order."""
    tables: list[DocTable] = []
    heading, before = "", ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#"):
            heading, before = line.lstrip("# "), ""
        elif line == HEADER:
            section = f"{heading} / {before}" if before else heading
            columns: dict[str, str] = {}
            i += 2  # past the |---| row
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i])[1:-1]]
                names = re.findall(r"`([^`]+)`", cells[0])
                types = [t.strip() for t in cells[1].split(",")]
                assert names, f"{section}: a row names no column in backticks: {lines[i]}"
                if len(types) == 1:
                    types *= len(names)
                assert len(types) == len(names), (
                    f"{section}: {len(names)} columns but {len(types)} types: {lines[i]}")
                for name, type_ in zip(names, types, strict=True):
                    assert name not in columns, f"{section}: `{name}` documented twice"
                    columns[name] = type_
                i += 1
            tables.append(DocTable(section, columns))
            continue
        elif line:
            before = line.rstrip(":") if line.endswith(":") else ""  # "Image streams:"
        i += 1
    return tables


def writer_schemas() -> dict[str, pa.Schema]:
    """'module.NAME' -> every Arrow schema a thresher module builds and holds."""
    found: dict[str, pa.Schema] = {}
    seen: set[int] = set()
    for path in sorted((ROOT / "thresher").rglob("*.py")):
        if "pa.schema(" not in path.read_text():
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        module = importlib.import_module(".".join(parts))
        for name, value in vars(module).items():
            if isinstance(value, pa.Schema) and id(value) not in seen:
                seen.add(id(value))
                found[f"{module.__name__}.{name}"] = value
    return found


def mismatches(tables: list[DocTable], schemas: dict[str, pa.Schema]) -> list[str]:
    """What docs/formats.md gets wrong about the schemas, one line each."""
    def overlap(schema: pa.Schema, table: DocTable) -> float:
        names, documented = set(schema.names), set(table.columns)
        return len(names & documented) / len(names | documented)

    pairs = sorted(((overlap(schema, table), name, t) for name, schema in schemas.items()
                    for t, table in enumerate(tables)), reverse=True)
    paired_schema: dict[str, int] = {}
    paired_table: set[int] = set()
    for score, name, t in pairs:
        if score >= 0.3 and name not in paired_schema and t not in paired_table:
            paired_schema[name] = t
            paired_table.add(t)
    problems = [f"{name} ({', '.join(schemas[name].names)}) has no table in docs/formats.md"
                for name in sorted(set(schemas) - set(paired_schema))]
    problems += [f"docs/formats.md '{tables[t].section}' documents columns no writer writes: "
                 f"{', '.join(tables[t].columns)}"
                 for t in range(len(tables)) if t not in paired_table]
    for name, t in sorted(paired_schema.items()):
        schema, table = schemas[name], tables[t]
        where = f"'{table.section}' ({name})"
        for field in schema:
            if field.name not in table.columns:
                problems.append(f"{where}: `{field.name}` ({doc_type(field.type)}) is written "
                                "but not documented")
            elif table.columns[field.name] != doc_type(field.type):
                problems.append(f"{where}: `{field.name}` is documented as "
                                f"{table.columns[field.name]} but written as "
                                f"{doc_type(field.type)}")
        problems += [f"{where}: `{column}` is documented but not written"
                     for column in table.columns if column not in schema.names]
    return problems


def test_formats_doc_matches_every_parquet_schema() -> None:
    schemas = writer_schemas()
    # The discovery finds the run's files (a check that it still sees what it should).
    names = {name.rsplit(".", 1)[-1] for name in schemas}
    assert {"SUMMARY_SCHEMA", "FEATURES_SCHEMA", "CURVES_SCHEMA", "TEXT_MANIFEST_SCHEMA",
            "IMAGE_MANIFEST_SCHEMA", "EEG_MANIFEST_SCHEMA"} <= names, names
    assert len(schemas) >= 8, sorted(schemas)
    problems = mismatches(doc_tables(DOC.read_text()), schemas)
    assert not problems, "\n".join(problems)


def test_the_check_names_each_kind_of_mismatch() -> None:
    text = DOC.read_text()
    assert "| `fve` | float64 |" in text and "| `gt_l0` | float64 |" in text
    wrong = (text.replace("| `fve` | float64 |", "| `fve` | float32 |")
             .replace("| `gt_l0` | float64 |", "| `gt_lzero` | float64 |"))
    schemas = writer_schemas()
    summary = next(n for n in schemas if n.endswith(".SUMMARY_SCHEMA"))
    schemas[summary] = schemas[summary].append(pa.field("new_metric", pa.int16()))
    problems = "\n".join(mismatches(doc_tables(wrong), schemas))
    assert "`fve` is documented as float32 but written as float64" in problems, problems
    assert "`gt_l0` (float64) is written but not documented" in problems, problems
    assert "`gt_lzero` is documented but not written" in problems, problems
    assert "`new_metric` (int16) is written but not documented" in problems, problems
    schemas["thresher.somewhere.NEW_SCHEMA"] = pa.schema([("alpha", pa.int8())])
    assert ("thresher.somewhere.NEW_SCHEMA (alpha) has no table in docs/formats.md"
            in mismatches(doc_tables(text), schemas))


@pytest.mark.parametrize(("row", "expected"), [
    ("| `lr`, `seed` | float64, int64 | x |", {"lr": "float64", "seed": "int64"}),
    ("| `a`, `b` | string | x |", {"a": "string", "b": "string"}),
    ("| `ids` | list<int32> | a \\| b |", {"ids": "list<int32>"}),
])
def test_table_rows_parse(row: str, expected: dict[str, str]) -> None:
    tables = doc_tables(f"## f\n\n{HEADER}\n|---|---|---|\n{row}\n")
    assert [t.columns for t in tables] == [expected]


def doc_line(column: Column) -> str:
    """A declared column's line in docs/formats.md's features table."""
    return f"| `{column.name}` | {doc_type(column.type)} | {column.meaning} |".replace(
        "|  |", "| |")


def features_table_lines(text: str) -> list[str]:
    """The rows of the first column table after the features heading."""
    lines = text[text.index(FEATURES_HEADING):].splitlines()
    start = lines.index(HEADER) + 2  # past the |---| row
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line.rstrip())
    return rows


def features_table_problems(text: str,
                            statistics: list[type[FeatureStatistic]]) -> list[str]:
    """What docs/formats.md's features table gets wrong about the declared columns."""
    declared = [("the key", c) for c in KEY_COLUMNS]
    declared += [(stat.__name__, c) for stat in statistics for c in stat.COLUMNS]
    rows = features_table_lines(text)
    by_name = {m.group(1): row for row in rows if (m := re.match(r"\| `([^`]+)` \|", row))}
    problems = []
    for owner, column in declared:
        want = doc_line(column)
        if column.name not in by_name:
            problems.append(f"statistic {owner}: `{column.name}` has no line in "
                            f"docs/formats.md's features table; add\n  {want}")
        elif by_name[column.name] != want:
            problems.append(f"statistic {owner}: the line for `{column.name}` in "
                            f"docs/formats.md reads\n  {by_name[column.name]}\nbut the "
                            f"declaration gives\n  {want}")
    names = [c.name for _, c in declared]
    problems += [f"docs/formats.md's features table documents a column no statistic declares "
                 f"(thresher/analysis/feature_columns.py): {row}"
                 for name, row in by_name.items() if name not in names]
    if not problems and list(by_name) != names:
        problems.append("docs/formats.md's features table is not in the declared column order: "
                        f"{', '.join(names)}")
    return problems


def test_features_table_is_the_declared_columns() -> None:
    problems = features_table_problems(DOC.read_text(), FEATURE_STATISTICS)
    assert not problems, "\n".join(problems)


class Sparkle(FeatureStatistic):
    """A statistic the doc does not know (never registered)."""

    COLUMNS = (Column("sparkle", pa.float64(), "how much it sparkles"),)


def test_a_statistic_without_its_doc_line_is_named() -> None:
    text = DOC.read_text()
    problems = "\n".join(features_table_problems(text, [*FEATURE_STATISTICS, Sparkle]))
    assert ("statistic Sparkle: `sparkle` has no line in docs/formats.md's features table; "
            "add\n  | `sparkle` | float64 | how much it sparkles |") in problems, problems
    reworded = text.replace("| largest activation |", "| the largest activation |")
    problems = "\n".join(features_table_problems(reworded, FEATURE_STATISTICS))
    assert "statistic Activation: the line for `max_act` in docs/formats.md reads" in problems
    lines = text.splitlines(keepends=True)
    i = lines.index("| `is_dead` | bool | never fired |\n")
    lines[i], lines[i + 1] = lines[i + 1], lines[i]  # is_dense before is_dead
    swapped = "".join(lines)
    problems = "\n".join(features_table_problems(swapped, FEATURE_STATISTICS))
    assert "is not in the declared column order" in problems, problems
