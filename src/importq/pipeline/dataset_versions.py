"""Datasets as versioned data: the published definitions in ``dataset_versions``,
publishing a new one, and the catalog every process reads them through.

Invariants:

- A version never changes once published. Versions of a dataset are numbered 1, 2, …
  in the order they were published; the latest is the *current* one, which new uploads
  are judged by.
- A batch records the version that judged it (``batches.dataset_version``), and its
  chunks, its aggregation, its reruns' comparisons and its undo read that version:
  publishing never changes how a batch already staged is judged.
- Publishing checks the new definition against the dataset's target table and alters
  the table (:mod:`importq.pipeline.target_evolution`) in the transaction that inserts
  the version, so a version is current only with a table that
  serves it.
- Publishing holds the dataset's lock exclusively and staging holds it shared
  (``share_dataset``), and a staging transaction checks that the version it read is
  still current (:func:`check_current`). So a batch is never staged under a version
  older than the current one, and a type change is refused while a batch of an older
  version runs.
- A datasets file (``builtin``: the built-in ``entrances.toml``; ``file``:
  ``IMPORTQ_DATASETS_FILE``) is one publisher among others: ``importq migrate`` (and
  ``serve``) publishes a file's definition once, when its digest differs from the last
  one that file published. So a restart never publishes an older definition over one
  published through the API, nor the built-in one over a file's that replaced it.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from importq.errors import Refusal
from importq.pipeline.target_evolution import IncompatibleChange, evolve_target_table
from importq.pipeline.target_tables import TargetTableError, ensure_target_table
from importq.rules.datasets import Dataset, DatasetError, build_dataset
from importq.sql import queries

Connection = AsyncConnection[Any]


def digest(definition: Mapping[str, Any]) -> str:
    """SHA-256 of a definition's canonical JSON: equal definitions, equal digests."""
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def definition_from_toml(name: str, text: str) -> dict[str, Any]:
    """The definition of dataset ``name`` in TOML ``text``: its ``[datasets.<name>]``
    table, or the document itself when it has no ``datasets`` table."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise DatasetError(f"the definition is not valid TOML: {error}") from None
    declared = document.get("datasets")
    if declared is None:
        return document
    if not isinstance(declared, dict) or name not in declared:
        raise DatasetError(f"the TOML declares no [datasets.{name}]")
    found: dict[str, Any] = declared[name]
    return found


def definition_from_json(document: Any) -> Any:
    """The definition in a JSON body: the ``definition`` of what ``GET
    /api/v1/datasets/{name}`` answers, or the definition itself."""
    if isinstance(document, dict) and isinstance(document.get("definition"), dict):
        return document["definition"]
    return document


@dataclass(frozen=True)
class Published:
    """What publishing did: the version now current (the same as before when nothing
    changed), and the changes made to the target table, in words."""

    dataset: Dataset
    created: bool
    changes: list[str]


def _jsonable(definition: Mapping[str, Any]) -> dict[str, Any]:
    # TOML may hold dates and times; a definition has no use for them but as text.
    loaded: dict[str, Any] = json.loads(json.dumps(definition, default=str))
    return loaded


async def publish(
    conn: Connection,
    name: str,
    definition: Mapping[str, Any],
    *,
    published_by: int | None = None,
    source: str | None = None,
) -> Published:
    """Publish ``definition`` as the next version of dataset ``name``; the first
    version creates its target table. Runs in a transaction of its own (a savepoint in
    the caller's).

    ``409 incompatible`` (or ``400 bad_definition``) says why a definition is refused.
    A definition equal to the current version's publishes nothing. From a datasets file
    (``source``), one that file published last is not published again (see the
    module's docstring).
    """
    definition = _jsonable(definition)
    try:
        dataset = build_dataset(name, definition)
    except DatasetError as error:
        raise Refusal(400, "bad_definition", str(error)) from None
    source_digest = digest(definition) if source is not None else None
    async with conn.transaction():
        try:
            await conn.execute(queries["lock_dataset"], {"dataset": name, "table": dataset.table})
        except psycopg.errors.LockNotAvailable:
            raise Refusal(
                409,
                "busy",
                f"Uploads into {name} are being staged, or another version published; "
                "publish again shortly.",
            ) from None
        cursor = await conn.execute(queries["latest_version"], {"dataset": name, "source": source})
        row = await cursor.fetchone()
        version, changes = 1, ["created"]
        cursor = await conn.execute(
            queries["other_datasets_of_table"], {"dataset": name, "table": dataset.table}
        )
        taken = [str(other) for (other,) in await cursor.fetchall()]
        if taken:
            raise _incompatible(name, f"table {dataset.table} is dataset {taken[0]}'s")
        if row is None:
            try:
                await ensure_target_table(conn, dataset)
            except TargetTableError as refused:
                raise _incompatible(name, f"{refused}: it is not a dataset's table") from None
        else:
            latest, stored, last_source_digest = row
            current = build_dataset(name, stored, latest)
            if digest(stored) == digest(definition) or (
                source is not None and source_digest == last_source_digest
            ):
                return Published(current, created=False, changes=[])
            cursor = await conn.execute(queries["unfinished_batches_of_dataset"], {"dataset": name})
            running = int((await cursor.fetchone())[0])  # type: ignore[index]
            try:
                changes = await evolve_target_table(conn, current, dataset, running=running)
            except IncompatibleChange as refused:
                raise _incompatible(name, str(refused)) from None
            version = latest + 1
        await conn.execute(
            queries["insert_dataset_version"],
            {
                "dataset": name,
                "version": version,
                "definition": Jsonb(definition),
                "source": source,
                "source_digest": source_digest,
                "published_by": published_by,
            },
        )
    return Published(build_dataset(name, definition, version), created=True, changes=changes)


def _incompatible(name: str, reason: str) -> Refusal:
    return Refusal(409, "incompatible", f"This version of {name} cannot be published: {reason}.")


async def publish_files(
    conn: Connection, sources: Mapping[str, Mapping[str, Dataset]]
) -> list[str]:
    """Publish the datasets files' definitions, by source (``builtin``, then ``file``:
    :func:`importq.rules.datasets.dataset_sources`); what was published, as ``name
    vN``."""
    published = []
    for source, datasets in sources.items():
        for name, dataset in datasets.items():
            done = await publish(conn, name, dataset.definition, source=source)
            if done.created:
                published.append(f"{name} v{done.dataset.version}")
    return published


async def ensure_target_tables(conn: Connection) -> None:
    """Create any current version's target table found missing (dropped by hand), or
    refuse one that lacks the version's columns (``TargetTableError``)."""
    for dataset in (await DatasetCatalog().current(conn)).values():
        await ensure_target_table(conn, dataset)


async def check_current(conn: Connection, dataset: Dataset, *, any_version: bool = False) -> None:
    """In a staging transaction: take the dataset's lock, shared, until it commits, and
    refuse (``409 dataset_changed``) an upload judged by a version that is no longer
    the current one, unless ``any_version``."""
    await conn.execute(queries["share_dataset"], {"dataset": dataset.name})
    if any_version:
        return
    current = await current_version(conn, dataset.name)
    if current != dataset.version:
        raise Refusal(
            409,
            "dataset_changed",
            f"Dataset {dataset.name} was published anew (version {current}) while this "
            "upload was read; send it again.",
        )


async def current_version(conn: Connection, name: str) -> int | None:
    """Dataset ``name``'s current version number; None when it was never published."""
    cursor = await conn.execute(queries["current_version"], {"dataset": name})
    row = await cursor.fetchone()
    return None if row is None or row[0] is None else int(row[0])


class DatasetCatalog:
    """The published definitions, as a process reads them.

    Versions never change, so each is read from the database once and kept. Which
    version is current is asked anew whenever it is wanted (:meth:`current`, :meth:`get`
    without a version; one small query): a version another process published is current
    here at once.
    """

    def __init__(self) -> None:
        self._versions: dict[tuple[str, int], Dataset] = {}
        self._last_seen: dict[str, Dataset] = {}

    async def version(self, conn: Connection, name: str, version: int) -> Dataset | None:
        """Version ``version`` of dataset ``name``, or None when it was never published."""
        found = self._versions.get((name, version))
        if found is None:
            cursor = await conn.execute(
                queries["dataset_definition"], {"dataset": name, "version": version}
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            found = self._versions[(name, version)] = build_dataset(name, row[0], version)
        return found

    async def current(self, conn: Connection) -> dict[str, Dataset]:
        """Every dataset's current version, by name."""
        cursor = await conn.execute(queries["current_versions"])
        latest = {}
        for name, number in await cursor.fetchall():
            found = await self.version(conn, name, number)
            if found is not None:
                latest[name] = found
        self._last_seen = latest
        return latest

    async def get(self, conn: Connection, name: str, version: int | None = None) -> Dataset | None:
        """Dataset ``name`` as version ``version`` (default: the current one)."""
        if version is None:
            version = await current_version(conn, name)
            if version is None:
                return None
        return await self.version(conn, name, version)

    async def judging(self, conn: Connection, batch: Mapping[str, Any]) -> Dataset:
        """The definition that judges ``batch`` (a batch row, or a chunk row with the
        batch's columns): its version, read as its upload was (mapping, local formats)."""
        found = await self.version(conn, batch["dataset"], batch["dataset_version"])
        if found is None:
            raise LookupError(f"{batch['dataset']} v{batch['dataset_version']} is not published")
        return found.read_as(batch["mapping"], batch["decimal_mark"], batch["date_format"])

    @property
    def last_seen(self) -> Mapping[str, Dataset]:
        """The current versions as :meth:`current` last read them (for the OpenAPI
        document, built without a database connection)."""
        return self._last_seen
