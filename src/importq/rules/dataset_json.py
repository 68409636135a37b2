"""What the API and ``importq datasets`` say of a dataset: pure pydantic, from the
definition (:class:`~importq.rules.datasets.Dataset`).

``version`` is the published version described (the current one, unless asked for
another). ``modes`` lists the import modes with the role each needs. ``definition`` is
the definition itself, as TOML gives it: publishing it again (edited) makes a new
version.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from importq.rules.datasets import MODES, ColumnType, Dataset

Role = Literal["user", "moderator", "admin"]
Mode = Literal["insert", "upsert", "update-only"]


class DatasetSummary(BaseModel):
    name: str
    version: int
    title: str
    importRole: Role
    #: Each import mode and the role it needs.
    modes: dict[Mode, Role]
    defaultMode: Mode

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetSummary:
        return cls.model_validate(_summary(dataset))


class ColumnInfo(BaseModel):
    name: str
    type: ColumnType
    required: bool
    requiredIf: str | None
    aliases: list[str]
    rules: list[str]
    example: str


class DatasetDetail(DatasetSummary):
    columns: list[ColumnInfo]
    dedupKey: list[str]
    #: The definition, with the keys of a ``[datasets.<name>]`` TOML table.
    definition: dict[str, Any]

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetDetail:
        columns = [
            ColumnInfo(
                name=c.name,
                type=c.type,
                required=c.required,
                requiredIf=c.required_if,
                aliases=list(c.aliases),
                rules=c.rules_in_words(),
                example=c.example_value(),
            )
            for c in dataset.columns
        ]
        return cls.model_validate(
            {
                **_summary(dataset),
                "columns": columns,
                "dedupKey": list(dataset.dedup_key),
                "definition": dict(dataset.definition),
            }
        )


def _summary(dataset: Dataset) -> dict[str, object]:
    return {
        "name": dataset.name,
        "version": dataset.version,
        "title": dataset.label,
        "importRole": dataset.import_role,
        "modes": {mode: dataset.mode_role(mode) for mode in MODES},
        "defaultMode": dataset.default_mode,
    }
