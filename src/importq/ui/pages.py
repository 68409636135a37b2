"""The web pages: sign in, import, a job, the jobs, the datasets.

Invariants:

- Pages are rendered on the server from ``templates/ui`` (Jinja2, autoescaped) in the
  reader's language: their own locale, else ``Accept-Language``. Their script and
  stylesheet come from this service (``/ui/static``), never a CDN, and the Content
  Security Policy allows nothing else: no inline script, no other origin.
- A page reads and acts through the JSON API, with the session cookie
  (:mod:`importq.api.sessions`) and the page's CSRF token: there is one set of rules for
  who may do what.
- A signed-out reader of any page is sent to ``/login``, and back after signing in.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, date
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from babel.dates import format_datetime
from babel.numbers import format_decimal
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from importq.accounts import (
    TokenRefused,
    User,
    issue_token,
    revoke_token,
    user_for_token,
    user_id_for_password,
)
from importq.api.auth import ServicesDep, session_user
from importq.api.jobs import list_for, readable_batch, utc_day
from importq.api.reading import DATE_FORMATS
from importq.api.schemas import Job
from importq.api.sessions import (
    COOKIE,
    LOGIN_COOKIE,
    SESSION_SECONDS,
    Session,
    clear_cookie,
    csrf_matches,
    csrf_token,
    login_form_token,
    seal,
    session_of,
    set_cookie,
)
from importq.errors import Refusal
from importq.i18n import (
    RTL_LOCALES,
    babel_locale,
    parse_accept_language,
    resolve_locale,
    translations,
)
from importq.ingest.text_encoding import ALLOWED_ENCODINGS
from importq.pipeline.batches import BatchFilter
from importq.resources import resource_dir
from importq.rules.dataset_json import DatasetDetail
from importq.rules.datasets import MODES, Dataset
from importq.services import Services

router = APIRouter(include_in_schema=False)

STATIC_FILES = {"ui.css": "text/css", "ui.js": "text/javascript"}
JOBS_PAGE_SIZE = 25
STATUSES = ("active", "aggregating", "completed", "failed", "cancelled", "undone")
# What a page may load and send: only this service's own script, style and API.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SignInRequired(Exception):
    """The page needs a signed-in reader; they are sent to ``/login``."""


def install(app: FastAPI) -> None:
    """Add the pages to ``app``."""

    @app.exception_handler(SignInRequired)
    async def to_sign_in(request: Request, error: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    app.include_router(router)


async def page_user(request: Request, services: ServicesDep) -> User:
    try:
        return await session_user(request, services, header=None)
    except Refusal as refused:
        if refused.status == 401:
            raise SignInRequired from None
        raise


PageUser = Annotated[User, Depends(page_user)]


@lru_cache(maxsize=32)
def _environment(locale: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(resource_dir("templates") / "ui"),
        autoescape=select_autoescape(["html.j2"]),
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(translations(locale), newstyle=True)  # type: ignore[attr-defined]
    return env


def reader_locale(request: Request, user: User | None) -> str:
    header = parse_accept_language(request.headers.get("accept-language"))
    return resolve_locale(user.locale if user else None, *header)


def render(
    request: Request,
    services: Services,
    template: str,
    user: User | None,
    *,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page in the reader's language, with the CSRF token of their session."""
    locale = reader_locale(request, user)
    where = babel_locale(locale)
    found = session_of(request, services.settings)
    html = (
        _environment(locale)
        .get_template(template)
        .render(
            locale=locale,
            direction="rtl" if locale in RTL_LOCALES else "ltr",
            user=user,
            csrf=csrf_token(services.settings, found[1]) if found else "",
            number=lambda n: format_decimal(n, locale=where),
            # In UTC, said so: the jobs' day filters are UTC days too.
            when=lambda t: (
                f"{format_datetime(t, 'medium', tzinfo=UTC, locale=where)} UTC" if t else ""
            ),
            path=request.url.path,
            statuses=STATUSES,
            **context,
        )
    )
    # Not kept by the browser: Back after signing out shows no one's jobs.
    headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-store"}
    return HTMLResponse(html, status_code=status, headers=headers)


@router.get("/ui/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC_FILES:
        raise Refusal(404, "not_found", "No such file.")
    return FileResponse(
        resource_dir("templates") / "ui" / "static" / name,
        media_type=STATIC_FILES[name],
        headers={"Cache-Control": "no-cache"},
    )


def _local(target: str | None) -> str:
    """Where to go after signing in: a path of this site only (never ``//host``, nor
    one with a space or a control character a browser might read around)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and target.isprintable()
        and " " not in target
    ):
        return target
    return "/import"


@router.get("/login")
async def sign_in_page(
    request: Request, services: ServicesDep, next: str | None = None
) -> Response:
    return _sign_in_form(request, services, next)


def _sign_in_form(
    request: Request, services: Services, next: str | None, error: str | None = None
) -> Response:
    token, value = login_form_token(request, services.settings)
    page = render(
        request,
        services,
        "login.html.j2",
        None,
        status=401 if error else 200,
        form_csrf=token,
        next=_local(next),
        error=error,
    )
    set_cookie(page, services.settings, LOGIN_COOKIE, value)
    return page


@router.post("/login")
async def sign_in(
    request: Request,
    services: ServicesDep,
    csrf: Annotated[str, Form()] = "",
    token: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/import",
) -> Response:
    gettext = translations(reader_locale(request, None)).gettext
    value = request.cookies.get(LOGIN_COOKIE)
    if value is None or not csrf_matches(services.settings, value, csrf):
        return _sign_in_form(request, services, next, gettext("The form expired; try again."))
    try:
        session = await _session_for(services, token.strip(), name.strip(), password)
    except TokenRefused as refused:
        why = {
            "token_revoked": gettext("This API token was revoked."),
            "token_expired": gettext("This API token has expired."),
            "user_disabled": gettext("This user is disabled."),
        }
        return _sign_in_form(request, services, next, why.get(refused.code, str(refused)))
    if session is None:
        wrong = (
            gettext("This API token is not valid.")
            if token.strip()
            else gettext("The name or the password is wrong.")
        )
        return _sign_in_form(request, services, next, wrong)
    response = RedirectResponse(_local(next), status_code=303)
    set_cookie(response, services.settings, COOKIE, seal(services.settings, session))
    clear_cookie(response, services.settings, LOGIN_COOKIE)
    return response


async def _session_for(services: Services, token: str, name: str, password: str) -> Session | None:
    """A session for a token, or for a name and a password (with a token of its own)."""
    now = int(time.time())
    async with services.auth_pool.connection() as conn, conn.transaction():
        if token:
            user = await user_for_token(conn, token)
            if user is None or user.token_id is None:
                return None
            return Session(user.token_id, now, False)
        if not name or not password:
            return None
        user_id = await user_id_for_password(conn, name, password)
        if user_id is None:
            return None
        issued = await issue_token(
            conn, user_id, name="web sign-in", expires_in=SESSION_SECONDS, for_session=True
        )
        return Session(issued.id, now, True)


@router.post("/logout")
async def sign_out(
    request: Request, services: ServicesDep, csrf: Annotated[str, Form()] = ""
) -> Response:
    found = session_of(request, services.settings)
    if found is not None and not csrf_matches(services.settings, found[1], csrf):
        # Not this site's form: another site cannot sign anyone out.
        return RedirectResponse("/jobs", status_code=303)
    if found is not None and found[0].minted:
        async with services.auth_pool.connection() as conn, conn.transaction():
            await revoke_token(conn, found[0].token_id, owner_id=None)
    response = RedirectResponse("/login", status_code=303)
    clear_cookie(response, services.settings, COOKIE)
    return response


@router.get("/")
async def home(user: PageUser) -> Response:
    return RedirectResponse("/import", status_code=303)


async def _current(services: Services) -> dict[str, Dataset]:
    """Every dataset's current version, by name."""
    async with services.pool.connection() as conn:
        return await services.datasets.current(conn)


@router.get("/import")
async def import_page(
    request: Request, services: ServicesDep, user: PageUser, dataset: str | None = None
) -> Response:
    current = await _current(services)
    return render(
        request,
        services,
        "import.html.j2",
        user,
        datasets=[
            DatasetDetail.of(d) for _, d in sorted(current.items()) if user.has_role(d.import_role)
        ],
        # Per dataset, the import modes this reader may use.
        modes={
            name: [mode for mode in MODES if user.has_role(d.mode_role(mode))]
            for name, d in current.items()
        },
        chosen=dataset,
        encodings=ALLOWED_ENCODINGS,
        date_formats=DATE_FORMATS,
    )


@router.get("/jobs/{batch_id}")
async def job_page(
    request: Request, services: ServicesDep, user: PageUser, batch_id: str
) -> Response:
    try:
        batch = await readable_batch(services, user, batch_id)
    except Refusal as refused:
        return render(
            request, services, "error.html.j2", user, status=refused.status, message=str(refused)
        )
    job = Job.from_row(batch)
    async with services.pool.connection() as conn:
        dataset = await services.datasets.version(conn, job.dataset, job.datasetVersion)
    return render(
        request,
        services,
        "job.html.j2",
        user,
        job=job,
        job_json=json.dumps(job.model_dump(mode="json")),
        dataset_label=dataset.label if dataset else job.dataset,
    )


@router.get("/jobs")
async def jobs_page(
    request: Request,
    services: ServicesDep,
    user: PageUser,
    status: Annotated[str | None, Query()] = None,
    dataset: Annotated[str | None, Query()] = None,
    initiator: Annotated[str | None, Query(max_length=100)] = None,
    since: Annotated[str | None, Query()] = None,
    until: Annotated[str | None, Query()] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    """The reader's batches (a moderator's or admin's: everyone's, or one user's), by
    status, dataset and UTC days; a filter the form cannot have sent is left out."""
    current = await _current(services)
    which = BatchFilter(
        status=status if status in STATUSES else None,
        dataset=dataset if dataset in current else None,
        since=_day(since),
        until=_day(until),
    )
    initiator = (initiator or "").strip() or None
    if not user.sees_all_batches:
        initiator = None
    found = await list_for(services, user, which, initiator, page=page, page_size=JOBS_PAGE_SIZE)
    filters = {
        key: value
        for key, value in (
            ("status", which.status),
            ("dataset", which.dataset),
            ("initiator", initiator),
            ("since", which.since),
            ("until", which.until),
        )
        if value
    }
    return render(
        request,
        services,
        "jobs.html.j2",
        user,
        jobs=found.items,
        total=found.total,
        filtered=bool(filters) or page > 1,
        page=page,
        pages=max(1, math.ceil(found.total / JOBS_PAGE_SIZE)),
        chosen=which,
        initiator=initiator,
        filters=urlencode(filters),
        datasets=[d for _, d in sorted(current.items())],
    )


def _day(text: str | None) -> date | None:
    """A filter's day, or none for what the form's date field could not have sent."""
    try:
        return utc_day(text or None)
    except Refusal:
        return None


@router.get("/datasets")
async def datasets_page(request: Request, services: ServicesDep, user: PageUser) -> Response:
    return render(
        request,
        services,
        "datasets.html.j2",
        user,
        datasets=[DatasetDetail.of(d) for _, d in sorted((await _current(services)).items())],
    )
