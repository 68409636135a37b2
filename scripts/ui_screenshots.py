"""Screenshots of every web page into docs/ui/, and docs/ui.md that shows them.

    python scripts/ui_screenshots.py [--database-url URL]

Starts ``importq serve`` on a fresh data dir (its embedded PostgreSQL unless
``--database-url`` names an empty database), signs in as its admin in Debian's Chromium
(Playwright, no browser download), previews a file with a missing column, runs a dry
run and an import of a small generated file, cancels a slow one, and photographs each
page on the way, the last one in Arabic (right to left).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from bench import serving
from gen_data import HEADER, entrance_rows

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "ui"
WORK_MS = 120_000
PAGES = [
    ("login", "Sign in: an API token, or a name and a password."),
    ("import-preview", "Import: the preview names a missing mandatory column."),
    ("import-refused-cells", "Import: the preview marks the cells the rules would refuse."),
    ("job-dry-run", "A dry run's page when it has ended: nothing was written."),
    ("job-running", "A running import's page, fed live by the job's events."),
    ("job-completed", "A finished import: counts, and its three reports."),
    ("job-cancelled", "An import cancelled from its page."),
    ("jobs", "Jobs: the reader's batches, filtered by status and dataset."),
    ("datasets", "Datasets: columns, rules in words, aliases, templates."),
    ("notifications", "The notifications control, open."),
    ("jobs-arabic", "The jobs page in Arabic: right to left."),
]


def _csv(rows: list[list[object]], header: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def _shoot(page: Page, name: str) -> None:
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


def _import(page: Page, base: str, upload: Path, button: str) -> None:
    page.goto(f"{base}/import")
    page.get_by_label("File").set_input_files(upload)
    page.get_by_role("button", name=button, exact=True).click()
    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))


def _final(page: Page) -> None:
    expect(page.get_by_role("progressbar")).to_have_attribute(
        "aria-valuenow", "100", timeout=WORK_MS
    )


def take(base: str, token: str, chromium: str, files: Path) -> None:
    rows = [list(row) for row in entrance_rows(2_000, seed=7)]
    good = files / "entrances.csv"
    good.write_bytes(_csv(rows, HEADER))
    lacking = _csv([row[:6] + row[7:] for row in rows[:30]], HEADER[:6] + HEADER[7:])
    bad = [list(row) for row in rows[:30]]
    bad[2][5] = "north"
    bad[4][4] = "France"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="en")
        page.goto(f"{base}/login")
        _shoot(page, "login")
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(f"{base}/import")
        page.get_by_label("File").set_input_files(
            {"name": "lacking.csv", "mimeType": "text/csv", "buffer": lacking}
        )
        expect(page.locator("#preview")).to_contain_text("Mandatory columns missing")
        _shoot(page, "import-preview")
        page.get_by_label("File").set_input_files(
            {"name": "entrances.csv", "mimeType": "text/csv", "buffer": _csv(bad, HEADER)}
        )
        expect(page.locator("#preview td.refused").first).to_be_visible()
        _shoot(page, "import-refused-cells")

        _import(page, base, good, "Dry run")
        _final(page)
        _shoot(page, "job-dry-run")
        _import(page, base, good, "Import")
        _shoot(page, "job-running")
        _final(page)
        _shoot(page, "job-completed")

        big = files / "a-big-file.csv"
        big.write_bytes(_csv([list(row) for row in entrance_rows(300_000, seed=8)], HEADER))
        _import(page, base, big, "Import")
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Cancel").click()
        _final(page)
        _shoot(page, "job-cancelled")

        page.goto(f"{base}/jobs")
        _shoot(page, "jobs")
        page.goto(f"{base}/datasets")
        _shoot(page, "datasets")
        page.goto(f"{base}/jobs")
        page.get_by_role("button", name="Notifications").click()
        expect(page.locator("#notifications-list li").first).to_be_visible()
        _shoot(page, "notifications")

        arabic = browser.new_page(viewport={"width": 1280, "height": 900}, locale="ar")
        arabic.context.add_cookies(page.context.cookies())
        arabic.goto(f"{base}/jobs")
        _shoot(arabic, "jobs-arabic")
        browser.close()


def write_page(command: str) -> None:
    lines = [
        "# The web pages",
        "",
        "Screenshots of every page, taken by a script in Debian's Chromium against a fresh",
        "`importq serve`, in English unless the caption says otherwise.",
        "",
        f"Taken {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}`.",
        "",
    ]
    for name, caption in PAGES:
        lines += [f"## {caption}", "", f"![{caption}](ui/{name}.png)", ""]
    (ROOT / "docs" / "ui.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=None, help="an empty database to use")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Debian's Chromium is needed: apt-get install chromium")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="importq-ui-") as data_dir:
        env = {**os.environ, "IMPORTQ_DATA_DIR": data_dir}
        if args.database_url:
            env["IMPORTQ_DATABASE_URL"] = args.database_url
        with serving(env) as service:
            take(service.base, service.token, chromium, Path(data_dir))
    command = "python scripts/ui_screenshots.py"
    write_page(command)
    print(f"{len(PAGES)} screenshots in {SHOTS.relative_to(ROOT)}, shown by docs/ui.md")


if __name__ == "__main__":
    main()
