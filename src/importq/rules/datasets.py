"""Dataset definitions: what a dataset's columns are, how they are checked, its dedup key.

This module is pure. It reads TOML text and builds immutable objects. Header matching
lives here, so that every upload format shares it. A header name matches a column's name
or one of its aliases, trimmed and ignoring case.

A definition that breaks a rule is refused with :class:`DatasetError`. Column names and
fields are unique. A field, and the table, must be a plain SQL identifier, and a field
must not be one of ``RESERVED_FIELDS``. The dedup key is required, and so are its
columns: a valid row must have a whole key, because the key's unique index is what
dedups. The dedup key, the report columns and ``required_if`` name columns of the
dataset. An enum column needs ``values``. Only a float column may have ``decimal =
"comma"``, and only a date column ``formats`` (each as :func:`check_date_format` allows).

A dataset is declared in TOML. The built-in ``entrances`` ships in
``importq/builtin/entrances.toml``, and ``IMPORTQ_DATASETS_FILE`` adds others or
overrides them::

    [datasets.<name>]
    label, table, import_role ("user" | "moderator" | "admin"),
    callback_url (a default webhook for its batches),
    dedup_key = [column names], report_columns = [column names],
    default_mode ("insert" | "upsert" | "update-only": what an upload does by default),
    mode_roles = {<mode> = <role>} (the role a mode needs; else the import_role)
    [[datasets.<name>.columns]]
    name, field (SQL column), type (text|int|float|bool|date|timestamp|enum), required,
    required_if (another column's name), min, max, min_length, max_length, pattern,
    pattern_description, values (enum), aliases, example (a value for the template),
    decimal ("dot" | "comma": a float's decimal mark), formats (a date's local formats,
    such as ["DD/MM/YYYY"]; YYYY-MM-DD is always accepted too)
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from importq.callback_urls import WHAT_IT_MAY_BE, is_callback_url

ROLES = ("user", "moderator", "admin")
#: What an import does with a row whose key is stored: insert makes it a duplicate
#: ("already exists"); upsert and update-only update the stored row, and a new key is
#: inserted by upsert and a failure ("not found") for update-only.
MODES = ("insert", "upsert", "update-only")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Columns every target table carries besides the dataset's own.
RESERVED_FIELDS = frozenset(
    {"target_id", "key_hash", "imported_batch", "imported_line", "imported_at"}
)
#: A float column's decimal mark. With "comma", a value may use a comma or a dot.
DECIMAL_MARKS = ("dot", "comma")
# A date format: DD, MM and YYYY once each, in any order, with one separator twice.
_DATE_TOKENS = ("DD", "MM", "YYYY")
_DATE_FORMAT = re.compile(r"(?:DD|MM|YYYY)([/. -])(?:DD|MM|YYYY)\1(?:DD|MM|YYYY)")
_DATE_FORMAT_RULE = (
    "A date format has DD, MM and YYYY once each, separated by the same one of"
    " /, ., - or a space, such as DD/MM/YYYY."
)


class ColumnType(StrEnum):
    TEXT = "text"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"
    TIMESTAMP = "timestamp"
    ENUM = "enum"

    @property
    def sql_type(self) -> str:
        return _SQL_TYPES[self]

    @property
    def copy_type(self) -> str:
        """The type name binary COPY uses for values of this type."""
        return _COPY_TYPES[self]

    @property
    def is_numeric(self) -> bool:
        return self in (ColumnType.INT, ColumnType.FLOAT)


_SQL_TYPES = {
    ColumnType.TEXT: "text",
    ColumnType.INT: "bigint",
    ColumnType.FLOAT: "double precision",
    ColumnType.BOOL: "boolean",
    ColumnType.DATE: "date",
    ColumnType.TIMESTAMP: "timestamptz",
    ColumnType.ENUM: "text",
}


_COPY_TYPES = {
    ColumnType.TEXT: "text",
    ColumnType.INT: "int8",
    ColumnType.FLOAT: "float8",
    ColumnType.BOOL: "bool",
    ColumnType.DATE: "date",
    ColumnType.TIMESTAMP: "timestamptz",
    ColumnType.ENUM: "text",
}


# A value of each type for a template, where the definition gives no example.
_TYPE_EXAMPLES = {
    ColumnType.TEXT: "text",
    ColumnType.INT: "1",
    ColumnType.FLOAT: "1.5",
    ColumnType.BOOL: "true",
    ColumnType.DATE: "2026-01-31",
    ColumnType.TIMESTAMP: "2026-01-31T12:00:00Z",
}


class DatasetError(ValueError):
    """A dataset definition is invalid."""


@dataclass(frozen=True)
class Column:
    name: str
    field: str
    type: ColumnType = ColumnType.TEXT
    required: bool = False
    required_if: str | None = None
    min: float | None = None
    max: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    pattern_description: str | None = None
    values: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    #: A value for the dataset's template (the header and one example row).
    example: str | None = None
    #: A float's decimal mark (one of ``DECIMAL_MARKS``).
    decimal: str = "dot"
    #: A date's local formats, as :func:`check_date_format` returns them, tried in order
    #: before YYYY-MM-DD.
    formats: tuple[str, ...] = ()

    @property
    def reports_as_number(self) -> bool:
        """Whether a report may write this column's valid values as they are: numbers
        with a dot. A decimal comma's need quoting, and the formula guard of text."""
        return self.type.is_numeric and self.decimal == "dot"

    def rules_in_words(self) -> list[str]:
        """What a value of this column must be, beyond its type and being mandatory, for
        people: the API's dataset description, the OpenAPI document."""
        rules = []
        if self.required_if:
            rules.append(f"mandatory when {self.required_if} is given")
        if self.type is ColumnType.ENUM:
            rules.append("one of " + ", ".join(self.values))
        if self.min is not None:
            rules.append(f"at least {self.min:g}")
        if self.max is not None:
            rules.append(f"at most {self.max:g}")
        if self.min_length is not None:
            rules.append(f"at least {self.min_length} characters")
        if self.max_length is not None:
            rules.append(f"at most {self.max_length} characters")
        if self.pattern is not None:
            rules.append(self.pattern_description or f"matches {self.pattern.pattern}")
        if self.decimal == "comma":
            rules.append("decimal comma accepted, such as 1 234,5")
        if self.formats:
            rules.append("dates as " + " or ".join(dict.fromkeys([*self.formats, "YYYY-MM-DD"])))
        return rules

    def example_value(self) -> str:
        """The template's value: the definition's ``example``, else one of its type."""
        if self.example is not None:
            return self.example
        if self.type is ColumnType.ENUM:
            return self.values[0]
        return _TYPE_EXAMPLES[self.type] if self.required else ""


@dataclass(frozen=True)
class HeaderMatch:
    """How an uploaded header lines up with a dataset's columns.

    ``positions`` maps each matched column name to its index in the uploaded header.
    """

    positions: Mapping[str, int]
    missing: tuple[str, ...]
    unknown: tuple[str, ...]
    duplicated: tuple[str, ...]


def normalise_header_name(name: str) -> str:
    """The form header names are compared in: trimmed, without a BOM, and case-folded."""
    return name.strip().lstrip("\ufeff").strip().casefold()


@dataclass(frozen=True)
class Dataset:
    name: str
    label: str
    table: str
    columns: tuple[Column, ...]
    dedup_key: tuple[str, ...]
    report_columns: tuple[str, ...] = ()
    import_role: str = "user"
    callback_url: str | None = None
    default_mode: str = "insert"
    #: (mode, role): the role a mode needs (at least the import role); a mode not listed
    #: needs the import role. Pairs, so that a dataset stays hashable.
    mode_roles: tuple[tuple[str, str], ...] = ()
    #: The published version this definition is (``dataset_versions``).
    version: int = 1
    #: (normalised upload header, column name): one upload's header mapping
    #: (:meth:`read_as`), which wins over the columns' names and aliases.
    header_mapping: tuple[tuple[str, str], ...] = ()
    #: The definition as TOML gives it (keys and values as in ``[datasets.<name>]``):
    #: what is stored and shown, so that it can be published again.
    definition: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _by_name: Mapping[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {c.name: c for c in self.columns})

    def column(self, name: str) -> Column:
        return self._by_name[name]

    @property
    def key_columns(self) -> tuple[Column, ...]:
        return tuple(self._by_name[n] for n in self.dedup_key)

    def mode_role(self, mode: str) -> str:
        """The role importing in ``mode`` needs."""
        return dict(self.mode_roles).get(mode, self.import_role)

    @property
    def mandatory_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    def _header_lookup(self) -> dict[str, str]:
        """Column names by the normalised header names that name them: names, aliases."""
        lookup: dict[str, str] = {}
        for column in self.columns:
            for alias in (column.name, *column.aliases):
                lookup[normalise_header_name(alias)] = column.name
        return lookup

    def known_mapping(self, mapping: Mapping[str, str]) -> dict[str, str]:
        """The entries of ``mapping`` whose column (name or alias) this version has: a
        saved or earlier batch's mapping, read by a version that dropped a column, keeps
        the rest (the header it named is then unknown, as any other)."""
        lookup = self._header_lookup()
        return {h: t for h, t in mapping.items() if normalise_header_name(t) in lookup}

    def read_as(
        self,
        mapping: Mapping[str, str] | None = None,
        decimal: str | None = None,
        date_format: str | None = None,
    ) -> Dataset:
        """This definition as one upload is read: ``mapping`` (upload header -> column
        name or alias) decides which column a header names before the columns' own
        names do; ``decimal`` (``comma``/``dot``) replaces every float column's decimal
        mark, ``date_format`` every date column's formats, the dedup key's aside (a key
        is deduplicated by its text, so it is read in one form only). Raises :class:`DatasetError`
        for a mapping to a column the dataset does not have, or a bad date format.
        """
        lookup = self._header_lookup()
        pairs: dict[str, str] = {}
        for header, target in (mapping or {}).items():
            column = lookup.get(normalise_header_name(target))
            if column is None:
                raise DatasetError(
                    f"the mapping sends {header!r} to {target!r}, which is not a column "
                    f"of dataset {self.name}"
                )
            pairs[normalise_header_name(header)] = column
        formats = (check_date_format(date_format),) if date_format is not None else None
        keys = set(self.dedup_key)  # read in one form only, as their definition says
        columns = tuple(
            c
            if c.name in keys
            else replace(
                c,
                decimal=decimal
                if decimal is not None and c.type is ColumnType.FLOAT
                else c.decimal,
                formats=formats if formats is not None and c.type is ColumnType.DATE else c.formats,
            )
            for c in self.columns
        )
        return replace(self, columns=columns, header_mapping=tuple(sorted(pairs.items())))

    def match_header(self, header: Sequence[str]) -> HeaderMatch:
        """Line up an uploaded header with the columns, by the header mapping, then
        their names and aliases.

        A name is a duplicate when it names a column already matched: which of the two
        values to take would be a guess. Other names are unknown (each listed once) and
        their values ignored; a blank one (a spreadsheet's trailing empty column) is not
        even listed.
        """
        lookup = self._header_lookup()
        lookup.update(self.header_mapping)
        positions: dict[str, int] = {}
        unknown: dict[str, None] = {}
        duplicated: list[str] = []
        for index, raw in enumerate(header):
            normalised = normalise_header_name(raw)
            name = lookup.get(normalised)
            if name is None:
                if normalised:
                    unknown.setdefault(raw.strip())
            elif name in positions:
                duplicated.append(raw.strip())
            else:
                positions[name] = index
        missing = tuple(n for n in self.mandatory_columns if n not in positions)
        return HeaderMatch(positions, missing, tuple(unknown), tuple(duplicated))


def check_date_format(text: str) -> str:
    """``text`` as a date format, upper-case and trimmed, such as ``DD/MM/YYYY``.

    Raises :class:`DatasetError` saying what is wrong and what a format may be. The
    message stands on its own, for a definition's author and an API user alike.
    """
    form = text.strip().upper()
    problem = _date_format_problem(form)
    if problem is not None:
        raise DatasetError(f'"{text}" is not a date format: {problem}. {_DATE_FORMAT_RULE}')
    return form


def _date_format_problem(form: str) -> str | None:
    words = re.findall(r"[A-Z]+", form)
    unknown = [word for word in words if word not in _DATE_TOKENS]
    if unknown:
        return f"{unknown[0]} is not DD, MM or YYYY"
    for token in _DATE_TOKENS:
        if words.count(token) != 1:
            return f"it lacks {token}" if token not in words else f"it has {token} twice"
    if not _DATE_FORMAT.fullmatch(form):
        return "its separators are wrong"
    if form == "YYYY-DD-MM":  # the one format whose texts are ISO dates too
        return "it would misread YYYY-MM-DD dates, which are always accepted"
    return None


def _decimal(raw: Mapping[str, Any], column_type: ColumnType, where: str) -> str:
    decimal = raw.get("decimal", "dot")
    if decimal not in DECIMAL_MARKS:
        raise DatasetError(f'{where}: decimal must be "dot" or "comma", not {decimal!r}')
    if decimal == "comma" and column_type is not ColumnType.FLOAT:
        raise DatasetError(f'{where}: decimal = "comma" is only for a float column')
    return str(decimal)


def _formats(raw: Mapping[str, Any], column_type: ColumnType, where: str) -> tuple[str, ...]:
    formats = raw.get("formats", [])  # a list of strings (_checked)
    if formats and column_type is not ColumnType.DATE:
        raise DatasetError(f"{where}: formats are only for a date column")
    try:
        # A format listed twice would only be tried twice.
        return tuple(dict.fromkeys(check_date_format(f) for f in formats))
    except DatasetError as error:
        raise DatasetError(f"{where}: {error}") from None


# What each key of a definition holds: a check of its value and the words for it. A
# definition may come from any JSON body, so every value is checked before it is used.
_Kind = tuple[Callable[[Any], bool], str]
_TEXT: _Kind = (lambda v: isinstance(v, str), "a string")
_FLAG: _Kind = (lambda v: isinstance(v, bool), "true or false")
_NUMBER: _Kind = (
    lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    "a number",
)
_COUNT: _Kind = (
    lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "a whole number, 0 or more",
)
_SCALAR: _Kind = (
    lambda v: isinstance(v, str | int | float) and not isinstance(v, bool),
    "a string or a number",
)
_TEXTS: _Kind = (
    lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "a list of strings",
)
_SCALARS: _Kind = (
    lambda v: isinstance(v, list) and all(_SCALAR[0](x) for x in v),
    "a list of strings or numbers",
)
_COLUMN_KINDS: dict[str, _Kind] = {
    "name": _TEXT,
    "field": _TEXT,
    "type": _TEXT,
    "required": _FLAG,
    "required_if": _TEXT,
    "min": _NUMBER,
    "max": _NUMBER,
    "min_length": _COUNT,
    "max_length": _COUNT,
    "pattern": _TEXT,
    "pattern_description": _TEXT,
    "values": _SCALARS,
    "aliases": _SCALARS,
    "example": _SCALAR,
    "decimal": _TEXT,
    "formats": (_TEXTS[0], 'a list of strings, such as ["DD/MM/YYYY"]'),
}
_DATASET_KINDS: dict[str, _Kind] = {
    "label": _TEXT,
    "table": _TEXT,
    "import_role": _TEXT,
    "callback_url": _TEXT,
    "dedup_key": _TEXTS,
    "report_columns": _TEXTS,
    "default_mode": _TEXT,
    "mode_roles": (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "a table of strings",
    ),
    "columns": (
        lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
        "a list of tables",
    ),
}


def _checked(raw: Mapping[str, Any], kinds: Mapping[str, _Kind], where: str) -> None:
    """Refuse keys ``kinds`` does not name, and values not of their key's kind."""
    extra = set(raw) - set(kinds)
    if extra:
        raise DatasetError(f"{where}: unknown keys {sorted(extra)}")
    for key, value in raw.items():
        fits, words = kinds[key]
        if not fits(value):
            raise DatasetError(f"{where}: {key} must be {words}")


def _column(raw: Mapping[str, Any], where: str) -> Column:
    _checked(raw, _COLUMN_KINDS, where)
    try:
        name = str(raw["name"])
        field_name = str(raw["field"])
    except KeyError as missing:
        raise DatasetError(f"{where}: {missing} is required") from None
    if not _IDENTIFIER.fullmatch(field_name) or field_name in RESERVED_FIELDS:
        raise DatasetError(f"{where}: field {field_name!r} is not a usable SQL column name")
    try:
        column_type = ColumnType(raw.get("type", "text"))
    except ValueError:
        raise DatasetError(f"{where}: unknown type {raw.get('type')!r}") from None
    pattern = raw.get("pattern")
    values = tuple(str(v) for v in raw.get("values", ()))
    if column_type is ColumnType.ENUM and not values:
        raise DatasetError(f"{where}: an enum column needs `values`")
    return Column(
        name=name,
        field=field_name,
        type=column_type,
        required=bool(raw.get("required", False)),
        required_if=raw.get("required_if"),
        min=raw.get("min"),
        max=raw.get("max"),
        min_length=raw.get("min_length"),
        max_length=raw.get("max_length"),
        pattern=re.compile(pattern) if pattern else None,
        pattern_description=raw.get("pattern_description"),
        values=values,
        aliases=tuple(str(a) for a in raw.get("aliases", ())),
        example=None if raw.get("example") is None else str(raw["example"]),
        decimal=_decimal(raw, column_type, where),
        formats=_formats(raw, column_type, where),
    )


def build_dataset(name: str, raw: Mapping[str, Any], version: int = 1) -> Dataset:
    """The dataset that the definition ``raw`` (a ``[datasets.<name>]`` table, as TOML
    or JSON gives it) declares, as ``version``; :class:`DatasetError` says what is wrong
    with one that breaks a rule, whatever its shape."""
    if not isinstance(raw, Mapping):
        raise DatasetError(f"dataset {name!r}: a definition is a table of keys")
    try:
        return replace(_dataset(name, raw), version=version, definition=dict(raw))
    except DatasetError:
        raise
    except re.error as error:
        raise DatasetError(
            f"dataset {name!r}: a pattern is not a regular expression: {error}"
        ) from None
    except (TypeError, AttributeError, ValueError) as error:
        raise DatasetError(
            f"dataset {name!r}: a key has a value of the wrong kind ({error})"
        ) from None


def _dataset(name: str, raw: Mapping[str, Any]) -> Dataset:
    where = f"dataset {name!r}"
    if not _IDENTIFIER.fullmatch(name):
        raise DatasetError(f"{where}: a name is lower-case letters, digits and _")
    _checked(raw, _DATASET_KINDS, where)
    columns = tuple(
        _column(c, f"{where} column {i + 1}") for i, c in enumerate(raw.get("columns", ()))
    )
    if not columns:
        raise DatasetError(f"{where}: no columns")
    names = [c.name for c in columns]
    fields = [c.field for c in columns]
    for label, items in (("column name", names), ("field", fields)):
        twice = sorted({x for x in items if items.count(x) > 1})
        if twice:
            raise DatasetError(f"{where}: {label}s used twice: {twice}")
    dedup_key = tuple(raw.get("dedup_key", ()))
    report_columns = tuple(raw.get("report_columns", ()))
    for listed in (*dedup_key, *report_columns, *(c.required_if for c in columns)):
        if listed is not None and listed not in names:
            raise DatasetError(f"{where}: {listed!r} is not one of its columns")
    if not dedup_key:
        raise DatasetError(f"{where}: dedup_key is required")
    by_name = {c.name: c for c in columns}
    optional_key = [name for name in dedup_key if not by_name[name].required]
    if optional_key:
        # A valid row must have a whole key: the key's unique index is what dedups.
        raise DatasetError(f"{where}: dedup_key columns must be required: {optional_key}")
    local = [n for n in dedup_key if by_name[n].decimal != "dot" or by_name[n].formats]
    if local:
        # A key is deduplicated by its text: 1,5 and 1.5, or two spellings of a date,
        # would be two keys of one value.
        raise DatasetError(f"{where}: dedup_key columns are read in one form only: {local}")
    table = str(raw.get("table", name))
    if not _IDENTIFIER.fullmatch(table):
        raise DatasetError(f"{where}: table {table!r} is not a usable SQL name")
    role = str(raw.get("import_role", "user"))
    if role not in ROLES:
        raise DatasetError(f"{where}: import_role must be one of {ROLES}")
    callback_url = raw.get("callback_url")
    if callback_url is not None and not is_callback_url(str(callback_url)):
        raise DatasetError(f"{where}: callback_url must be {WHAT_IT_MAY_BE}")
    default_mode = str(raw.get("default_mode", "insert"))
    mode_roles = {str(mode): str(needs) for mode, needs in raw.get("mode_roles", {}).items()}
    for mode in (default_mode, *mode_roles):
        if mode not in MODES:
            raise DatasetError(f"{where}: {mode!r} is not a mode; the modes are {MODES}")
    for mode, needs in mode_roles.items():
        if needs not in ROLES or ROLES.index(needs) < ROLES.index(role):
            raise DatasetError(
                f"{where}: mode_roles.{mode} must be one of {ROLES[ROLES.index(role) :]}"
            )
    return Dataset(
        name=name,
        label=str(raw.get("label", name)),
        table=table,
        columns=columns,
        dedup_key=dedup_key,
        report_columns=report_columns,
        import_role=role,
        callback_url=callback_url,
        default_mode=default_mode,
        mode_roles=tuple(mode_roles.items()),
    )


def parse_datasets(toml_text: str) -> dict[str, Dataset]:
    """Build the datasets declared in one TOML document."""
    try:
        document = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as error:
        raise DatasetError(f"datasets file is not valid TOML: {error}") from None
    declared = document.get("datasets", {})
    return {name: build_dataset(name, raw) for name, raw in declared.items()}


def dataset_sources(extra_file: Path | None = None) -> dict[str, dict[str, Dataset]]:
    """The datasets each file declares: ``builtin`` (the built-in ones), then ``file``
    (``extra_file``'s, which may replace them), as ``importq migrate`` publishes them."""
    builtin = resources.files("importq.builtin").joinpath("entrances.toml")
    sources = {"builtin": parse_datasets(builtin.read_text(encoding="utf-8"))}
    if extra_file is not None:
        sources["file"] = parse_datasets(extra_file.read_text(encoding="utf-8"))
    return sources


def load_datasets(extra_file: Path | None = None) -> dict[str, Dataset]:
    """The built-in datasets, then those of ``extra_file``, which may replace them: the
    definitions the files give (the database holds the published ones)."""
    merged: dict[str, Dataset] = {}
    for datasets in dataset_sources(extra_file).values():
        merged.update(datasets)
    return merged
