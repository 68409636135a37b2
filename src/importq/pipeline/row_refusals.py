"""Why the target table refused a row, said in the dataset's terms.

A row that passes the dataset's rules can still be refused by the table: a constraint
or trigger the operator added, a value past a column's type. The failures report tells
the uploader why without PostgreSQL's own wording, which names tables and internal
identifiers: the column by its header name, the operator's rule by its constraint's
name when they chose it. The database's reason goes to the log, without the row's
values (:func:`for_the_log`).
"""

from __future__ import annotations

import psycopg
from psycopg import errors

from importq.rules.datasets import Dataset

PREFIX = "the table refused the row: "


def refusal_message(error: psycopg.DataError | psycopg.IntegrityError, dataset: Dataset) -> str:
    """The failures report's message for a row the table refused with ``error``."""
    diag = error.diag
    column = _column_name(dataset, diag.column_name)
    rule = _rule_name(dataset, diag.constraint_name)
    if isinstance(error, errors.NotNullViolation):
        reason = f"{column or 'a column'} needs a value"
    elif isinstance(error, errors.UniqueViolation):
        reason = f"a stored row has the same value{rule}"
    elif isinstance(error, errors.CheckViolation):
        reason = f"it breaks a rule of the table{rule}"
    elif isinstance(error, errors.ForeignKeyViolation):
        reason = f"it refers to something that does not exist{rule}"
    elif isinstance(error, errors.StringDataRightTruncation):
        reason = "a value is longer than its column allows"
    elif isinstance(error, errors.NumericValueOutOfRange):
        reason = "a number is out of its column's range"
    elif isinstance(error, psycopg.DataError):
        reason = "a value does not fit its column"
    else:
        reason = f"a rule of the table (SQLSTATE {diag.sqlstate}){rule}"
    return PREFIX + reason


def _rule_name(dataset: Dataset, constraint: str | None) -> str:
    """`` (<name>)`` for a constraint the operator named; PostgreSQL's own names
    (``<table>_<column>_check``, ``<table>_pkey``) would show the table's."""
    if not constraint or constraint.startswith(f"{dataset.table}_"):
        return ""
    return f" ({constraint})"


def for_the_log(error: psycopg.Error) -> str:
    """The database's reason without its DETAIL, which quotes the row's values."""
    return f"{error.diag.message_primary} (SQLSTATE {error.diag.sqlstate})"


def _column_name(dataset: Dataset, field: str | None) -> str | None:
    """The header name of the dataset column stored in ``field``."""
    for column in dataset.columns:
        if column.field == field:
            return column.name
    return None
