"""The portal's pages as HTML text: server-rendered, plain forms, no framework, nothing fetched from elsewhere. Pure.

Every value shown is escaped here (``_e``), every link and form stays under the page's own ``/portal/<token>``
path, every state-changing form is a POST carrying the session's CSRF token, and every link leaving the portal (the
platform's return URL) opens in the top window without a referrer. Accessibility: one ``h1`` per page, landmarks
(header, nav, main, footer) and a skip link, a label for every field, table headers with scope, statuses in words
(never colour alone).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from daemon.core.config import EventTypeConfig, OrganizationConfig, PortalFeature
from daemon.core.model import Outcome

ASSETS: Final = "/portal/assets"
_NONE: Final = "\u2013"  # an en dash: no value
# What the attempts filter offers (results statuses an endpoint's records carry).
OUTCOMES: Final = (
    "delivered", "failed", "dead_lettered", "blocked", "invalid_payload", "render_failed", "skipped_paused",
    "skipped_unsupported", "skipped_bulk_item",
)  # fmt: skip
NOTICES: Final = {  # what a redirect after an action says (fixed texts: nothing from the request is reflected)
    "created": "Endpoint created. Reveal its signing secret below to verify its deliveries.",
    "updated": "Endpoint saved.",
    "paused": "Endpoint paused: it receives nothing until it is resumed.",
    "resumed": "Endpoint resumed.",
    "deleted": "Endpoint deleted.",
}


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


@dataclass(frozen=True)
class Context:
    """What every page of one session knows: where it lives, whose it is, and what it may do."""

    base: str  # /portal/<token>
    title: str  # the portal's title (portal.title)
    tenant: str
    csrf: str
    features: frozenset[PortalFeature]
    expires_at: str  # RFC 3339
    return_url: str | None
    campaigns: bool  # the tenant has organisations to show

    def may(self, feature: PortalFeature) -> bool:
        return feature in self.features


def layout(ctx: Context, heading: str, body: str, *, current: str = "endpoints", notice: str | None = None) -> str:
    """A whole page: header with the tenant and the navigation, ``heading`` as its only h1, ``body``, footer."""
    nav = [("endpoints", f"{ctx.base}/", "Endpoints"), ("events", f"{ctx.base}/events", "Event types")]
    if ctx.campaigns:
        nav.append(("campaigns", f"{ctx.base}/campaigns", "Campaigns"))
    items = "".join(
        f'<li><a href="{_e(href)}"{" aria-current=page" if key == current else ""}>{_e(label)}</a></li>'
        for key, href, label in nav
    )
    back = ""
    if ctx.return_url:
        back = f'<a class="back" href="{_e(ctx.return_url)}" target="_top" rel="noopener noreferrer">Back</a>'
    shown = f'<p class="notice" role="status">{_e(notice)}</p>' if notice else ""
    return _document(
        f"{heading} · {ctx.title}",
        f"""<a class="skip" href="#main">Skip to content</a>
<header class="top">
<p class="brand">{_e(ctx.title)} <span class="tenant">for {_e(ctx.tenant)}</span></p>
<nav aria-label="Portal"><ul>{items}</ul></nav>{back}
</header>
<main id="main" tabindex="-1">
<h1>{_e(heading)}</h1>
{shown}{body}
</main>
<footer><p>This page's link works until <time datetime="{_e(ctx.expires_at)}">{_e(_when(ctx.expires_at))}</time>.</p>
</footer>""",
    )


def plain(status: int, heading: str, message: str, return_url: str | None = None) -> str:
    """A page without a session (a refused link): what happened, and the way back when the link said one."""
    back = ""
    if return_url:
        back = f'<p><a href="{_e(return_url)}" target="_top" rel="noopener noreferrer">Back</a></p>'
    return _document(
        heading,
        f"""<main id="main"><h1>{_e(heading)}</h1><p>{_e(message)}</p>{back}
<p class="muted">HTTP {status}</p></main>""",
    )


def _document(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{_e(title)}</title>
<link rel="stylesheet" href="{ASSETS}/portal.css">
<script src="{ASSETS}/portal.js" defer></script>
</head>
<body>
{body}
</body>
</html>
"""


def _post(ctx: Context, action: str, label: str, *, css: str = "", fields: Mapping[str, str] | None = None) -> str:
    """A one-button form that POSTs to ``action`` with the session's CSRF token (and ``fields``)."""
    hidden = "".join(f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in (fields or {}).items())
    return (
        f'<form method="post" action="{_e(action)}" class="inline">'
        f'<input type="hidden" name="csrf" value="{_e(ctx.csrf)}">{hidden}'
        f'<button type="submit" class="{_e(css)}">{_e(label)}</button></form>'
    )


# --- endpoints ---


def endpoints(ctx: Context, rows: Sequence[Mapping[str, Any]], next_after: str | None, notice: str | None) -> str:
    add = f'<p><a class="button" href="{_e(ctx.base)}/endpoints/new">Add endpoint</a></p>' if ctx.may("manage") else ""
    if not rows:
        return layout(ctx, "Endpoints", f"<p>No endpoints yet.</p>{add}", notice=notice)
    body = "".join(
        f"""<tr><td><a href="{_e(ctx.base)}/endpoints/{_e(row["id"])}">{_e(row["url"])}</a>
<div class="muted">{_e(row.get("description") or "")}</div></td>
<td>{_events(row["events"])}</td><td>{_status(row)}</td></tr>"""
        for row in rows
    )
    more = ""
    if next_after:
        more = f'<p><a href="{_e(ctx.base)}/?after={_e(next_after)}">Next page</a></p>'
    table = f"""<div class="scroll"><table>
<caption>Where your webhooks are sent</caption>
<thead><tr><th scope="col">Endpoint</th><th scope="col">Events</th><th scope="col">Status</th></tr></thead>
<tbody>{body}</tbody></table></div>{more}"""
    return layout(ctx, "Endpoints", add + table, notice=notice)


def endpoint_form(
    ctx: Context, catalogue: Sequence[EventTypeConfig], values: Mapping[str, Any], *, endpoint_id: str | None = None,
    header_names: Sequence[str] = (), error: str | None = None,
) -> str:  # fmt: skip
    """The create form (``endpoint_id`` None) or the edit form of an endpoint, with ``values`` filled in."""
    editing = endpoint_id is not None
    action = f"{ctx.base}/endpoints/{endpoint_id}" if editing else f"{ctx.base}/endpoints"
    chosen = set(values.get("events") or [])
    known = {entry.name for entry in catalogue}
    other = ", ".join(e for e in values.get("events") or [] if e not in known)
    groups: dict[str, list[tuple[int, EventTypeConfig]]] = {}
    for i, entry in enumerate(catalogue):
        groups.setdefault(entry.group or "Events", []).append((i, entry))
    boxes = "".join(
        f'<fieldset class="group"><legend>{_e(group)}</legend>'
        + "".join(
            f'<div class="check"><input type="checkbox" name="events" value="{_e(entry.name)}" id="ev-{i}"'
            f'{" checked" if entry.name in chosen else ""}><label for="ev-{i}"><code>{_e(entry.name)}</code>'
            f"{' <span class=muted>' + _e(entry.description) + '</span>' if entry.description else ''}</label></div>"
            for i, entry in entries
        )
        + "</fieldset>"
        for group, entries in groups.items()
    )
    pick = "Pick the event types it receives, or give others below." if catalogue else "Give the event types below."
    kept = ""
    if editing:
        names = ", ".join(header_names) if header_names else "none"
        kept = f"""<p class="hint" id="headers-kept">Set now: {_e(names)}. Values are never shown. Leave the box
empty to keep them; lines given replace them all.</p>
<div class="check"><input type="checkbox" name="clear_headers" value="1" id="clear-headers">
<label for="clear-headers">Remove every custom header</label></div>"""
    alert = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    heading = "Edit endpoint" if editing else "Add endpoint"
    described = ' aria-describedby="headers-kept"' if editing else ""
    return layout(
        ctx,
        heading,
        f"""{alert}<form method="post" action="{_e(action)}" class="stack">
<input type="hidden" name="csrf" value="{_e(ctx.csrf)}">
<div class="field"><label for="url">Endpoint URL</label>
<input type="url" id="url" name="url" required maxlength="2048" value="{_e(values.get("url") or "")}"
 aria-describedby="url-hint" autocomplete="url"><p class="hint" id="url-hint">Where each event is POSTed.</p></div>
<div class="field"><label for="description">Description <span class="muted">(optional)</span></label>
<input type="text" id="description" name="description" maxlength="500" value="{_e(values.get("description") or "")}">
</div>
<fieldset><legend>Events</legend><p class="hint">{_e(pick)}</p>{boxes}
<div class="field"><label for="events-other">Other event types or patterns <span class="muted">(comma-separated;
<code>lead.*</code> takes every <code>lead.</code> type)</span></label>
<input type="text" id="events-other" name="events_other" value="{_e(other)}"></div></fieldset>
<div class="field"><label for="headers">Custom headers <span class="muted">(optional, one <code>Name: value</code>
per line)</span></label>
<textarea id="headers" name="headers" rows="3" spellcheck="false"{described}>
{_e(values.get("headers_text") or "")}</textarea>{kept}</div>
<p><button type="submit">{"Save" if editing else "Add endpoint"}</button>
<a href="{_e(ctx.base)}/{"endpoints/" + _e(endpoint_id) if editing else ""}">Cancel</a></p>
</form>""",
    )


def endpoint(
    ctx: Context, view: Mapping[str, Any], attempts: Sequence[Outcome], read: int | None, filters: Mapping[str, str],
    event_types: Iterable[str], notice: str | None = None, error: str | None = None, note: str | None = None,
) -> str:  # fmt: skip
    """An endpoint: its settings, its actions, its attempts (filtered: in the delivery index when ``read`` is None,
    ``note`` saying why some may be missing; else among the newest ``read``) and the replay of a time range."""
    base = f"{ctx.base}/endpoints/{view['id']}"
    rows = [
        ("URL", f"<code class=wrap>{_e(view['url'])}</code>"),
        ("Status", _status(view)),
        ("Events", _events(view["events"])),
        ("Description", _e(view.get("description") or "")),
        ("Contract", _e(view.get("profile"))),
        ("Created", _e(_when(view.get("created_at")))),
        ("Version", _e(view.get("version"))),
    ]
    settings = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    actions: list[str] = []
    if ctx.may("manage"):
        actions.append(f'<a class="button" href="{_e(base)}/edit">Edit</a>')
        paused = view.get("status") == "paused"
        actions.append(_post(ctx, f"{base}/{'resume' if paused else 'pause'}", "Resume" if paused else "Pause"))
    if ctx.may("ping"):
        actions.append(_post(ctx, f"{base}/ping", "Send test event"))
    if ctx.may("secrets"):
        actions.append(_post(ctx, f"{base}/secret", "Reveal signing secret"))
        actions.append(_post(ctx, f"{base}/rotate", "Rotate signing secret"))
    if ctx.may("manage"):
        actions.append(f'<a class="button danger" href="{_e(base)}/delete">Delete</a>')
    alert = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    parts = [
        alert,
        f'<section aria-labelledby="settings-h"><h2 id="settings-h">Settings</h2><dl class="settings">{settings}</dl>'
        f'<div class="actions">{"".join(actions)}</div></section>',
    ]
    if ctx.may("deliveries"):
        parts.append(_attempts(ctx, base, attempts, read, filters, event_types, note))
    if ctx.may("replay"):
        parts.append(f"""<section aria-labelledby="replay-h"><h2 id="replay-h">Replay a time range</h2>
<p class="hint" id="replay-hint">Every event of the range this endpoint is subscribed to is sent again, once.
Times are UTC.</p>
<form method="post" action="{_e(base)}/replay" class="row" aria-describedby="replay-hint">
<input type="hidden" name="csrf" value="{_e(ctx.csrf)}">
<div class="field"><label for="replay-from">From (UTC)</label>
<input type="datetime-local" id="replay-from" name="from" required step="1"></div>
<div class="field"><label for="replay-to">To (UTC)</label>
<input type="datetime-local" id="replay-to" name="to" step="1"></div>
<div class="field"><button type="submit">Replay</button></div></form></section>""")
    return layout(ctx, "Endpoint", "".join(parts), notice=notice)


def _attempts(
    ctx: Context, base: str, attempts: Sequence[Outcome], read: int | None, filters: Mapping[str, str],
    event_types: Iterable[str], note: str | None,
) -> str:  # fmt: skip
    outcome = filters.get("status", "")
    options = '<option value="">Any</option>' + "".join(
        f'<option value="{o}"{" selected" if o == outcome else ""}>{o.replace("_", " ")}</option>' for o in OUTCOMES
    )
    chosen_type = filters.get("event_type", "")
    type_options = '<option value="">Any</option>' + "".join(
        f'<option value="{_e(t)}"{" selected" if t == chosen_type else ""}>{_e(t)}</option>' for t in event_types
    )
    rows = "".join(
        f"""<tr><td><time datetime="{_e(a.timestamp)}">{_e(_when(a.timestamp))}</time></td>
<td><code>{_e(a.event_type)}</code></td><td>{_badge(a.status)}</td><td>{_e(a.http_status or _NONE)}</td>
<td>{_e(_ms(a.duration_ms))}</td><td>{_e(a.trigger)} #{_e(a.attempt)}</td>
<td>{_delivery_link(ctx, base, a)}</td><td>{_response(a) if read is not None else _on_its_page(a)}</td>
</tr>"""
        for a in attempts
    )
    source = (f"of the newest {read} read" if read is not None
              else "found in the delivery index, whatever their age" + (f"; {note}" if note else ""))  # fmt: skip
    table = (
        f"""<div class="scroll"><table>
<caption>Attempts, newest first ({len(attempts)} shown, {_e(source)})</caption>
<thead><tr><th scope="col">Time (UTC)</th><th scope="col">Event type</th><th scope="col">Outcome</th>
<th scope="col">HTTP</th><th scope="col">Duration</th><th scope="col">Trigger</th><th scope="col">Delivery</th>
<th scope="col">Response</th></tr></thead><tbody>{rows}</tbody></table></div>"""
        if attempts
        else "<p>No attempts match.</p>"
    )
    return f"""<section aria-labelledby="attempts-h"><h2 id="attempts-h">Deliveries</h2>
<form method="get" action="{_e(base)}" class="row filters">
<div class="field"><label for="f-status">Outcome</label><select id="f-status" name="status">{options}</select></div>
<div class="field"><label for="f-type">Event type</label><select id="f-type" name="event_type">{type_options}</select>
</div>
<div class="field"><label for="f-since">Since (UTC)</label><input type="datetime-local" id="f-since" name="since"
 step="1" value="{_e(filters.get("since", ""))}"></div>
<div class="field"><label for="f-until">Until (UTC)</label><input type="datetime-local" id="f-until" name="until"
 step="1" value="{_e(filters.get("until", ""))}"></div>
<div class="field"><button type="submit">Filter</button></div></form>{table}</section>"""


def delivery(
    ctx: Context, view: Mapping[str, Any], delivery_id: str, attempts: Sequence[Outcome], note: str | None
) -> str:
    """One delivery's attempts side by side, oldest first (given newest first), and its redeliver button; ``note``:
    how they were looked for, when not by the delivery index alone (or why none was found)."""
    base = f"{ctx.base}/endpoints/{view['id']}"
    redeliver = ""
    if ctx.may("redeliver"):
        redeliver = (
            '<p class="hint">Redeliver sends this delivery\'s event once more, one attempt, never retried.</p>'
            + _post(ctx, f"{base}/deliveries/{delivery_id}/redeliver", "Redeliver")
        )
    hint = f'<p class="hint">{_e(note)}</p>' if note else ""
    if not attempts:
        table = f"<p>No attempt of this delivery to this endpoint was found.</p>{hint}"
    else:
        ordered = list(reversed(attempts))
        fields: list[tuple[str, Any]] = [
            ("Time (UTC)", lambda a: f'<time datetime="{_e(a.timestamp)}">{_e(_when(a.timestamp))}</time>'),
            ("Trigger", lambda a: _e(a.trigger)),
            ("Attempt", lambda a: _e(a.attempt)),
            ("Outcome", lambda a: _badge(a.status)),
            ("HTTP", lambda a: _e(a.http_status or _NONE)),
            ("Duration", lambda a: _e(_ms(a.duration_ms))),
            ("Error", lambda a: _e(a.error or "")),
            ("Response", lambda a: f"<pre>{_e(a.response_body or '')}</pre>"),
            ("Attempt id", lambda a: f"<code>{_e(a.attempt_id or '')}</code>"),
        ]
        head = "".join(f'<th scope="col">Attempt {i}</th>' for i in range(1, len(ordered) + 1))
        body = "".join(
            f'<tr><th scope="row">{label}</th>{"".join(f"<td>{cell(a)}</td>" for a in ordered)}</tr>'
            for label, cell in fields
        )
        table = f"""<div class="scroll"><table class="side">
<caption>The delivery's attempts, oldest first</caption>
<thead><tr><td></td>{head}</tr></thead><tbody>{body}</tbody></table></div>{hint}"""
    return layout(
        ctx,
        "Delivery",
        f"""<p>Delivery <code class="wrap">{_e(delivery_id)}</code> to <a href="{_e(base)}">{_e(view["url"])}</a></p>
{redeliver}{table}""",
    )


def outcome(ctx: Context, heading: str, back: str, result: Outcome) -> str:
    """What one attempt made by hand (a test event, a redelivery) came to."""
    rows = [
        ("Outcome", _badge(result.status)),
        ("HTTP", _e(result.http_status or _NONE)),
        ("Duration", _e(_ms(result.duration_ms))),
        ("Error", _e(result.error or "")),
        ("Response", f"<pre>{_e(result.response_body or '')}</pre>"),
        ("Delivery", f"<code class=wrap>{_e(result.delivery_id)}</code>"),
    ]
    body = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in rows)
    return layout(ctx, heading, f'<dl class="settings">{body}</dl><p><a href="{_e(back)}">Back to the endpoint</a></p>')


def secrets(ctx: Context, endpoint_id: str, shown: Sequence[tuple[str, str]], rotated: bool) -> str:
    """An endpoint's signing secrets (each with until when it signs): the page is never cached."""
    base = f"{ctx.base}/endpoints/{endpoint_id}"
    items = "".join(
        f"""<li><div class="secret"><code id="secret-{i}" class="wrap">{_e(value)}</code>
<button type="button" class="copy" data-copy="secret-{i}" hidden>Copy</button></div>
<span class="muted">{_e(until)}</span></li>"""
        for i, (value, until) in enumerate(shown)
    )
    lead = (
        "A new secret signs every delivery from now on; the old one keeps signing beside it until it expires."
        if rotated
        else "Each delivery is signed with every secret listed."
    )
    return layout(
        ctx,
        "Signing secret",
        f"""<p>{lead} Keep it secret: whoever has it can sign deliveries as this service.</p>
<ul class="plain">{items}</ul><p><a href="{_e(base)}">Back to the endpoint</a></p>""",
    )


def confirm_delete(ctx: Context, view: Mapping[str, Any]) -> str:
    base = f"{ctx.base}/endpoints/{view['id']}"
    return layout(
        ctx,
        "Delete endpoint",
        f"""<p>Delete <code class="wrap">{_e(view["url"])}</code>? It receives nothing from now on; this cannot be
undone.</p><div class="actions">{_post(ctx, f"{base}/delete", "Delete endpoint", css="danger")}
<a href="{_e(base)}">Cancel</a></div>""",
    )


def replayed(ctx: Context, endpoint_id: str, counts: Mapping[str, Any]) -> str:
    base = f"{ctx.base}/endpoints/{endpoint_id}"
    gone = "".join(
        f"<p>Events of {_e(d['topic'])} [{_e(d['partition'])}] before offset {_e(d['log_start'])} were deleted "
        "before the replay (Kafka keeps them only so long): what was left was replayed.</p>"
        for d in counts.get("deleted", ())
    )
    return layout(
        ctx,
        "Replay",
        f"""<p>{_e(counts.get("matched", 0))} event(s) of the range are on their way again
({_e(counts.get("scanned", 0))} read; {_e(counts.get("invalid_payload", 0))} refused by their schema).</p>{gone}
<p><a href="{_e(base)}">Back to the endpoint</a></p>""",
    )


# --- the catalogue and the campaigns ---


def event_types(ctx: Context, catalogue: Sequence[EventTypeConfig]) -> str:
    if not catalogue:
        return layout(ctx, "Event types", "<p>No event types are described here.</p>", current="events")
    parts = []
    for entry in catalogue:
        schema = ""
        if entry.schema is not None:
            enforced = " Events that do not match it are never delivered." if entry.validate else ""
            schema = (
                f"<details><summary>Schema</summary><p class=hint>JSON Schema.{enforced}</p>"
                f"<pre>{_e(json.dumps(entry.schema, indent=2))}</pre></details>"
            )
        example = ""
        if entry.example is not None:
            example = (
                f"<details><summary>Example</summary><pre>{_e(json.dumps(entry.example, indent=2))}</pre></details>"
            )
        group = f'<p class="muted">{_e(entry.group)}</p>' if entry.group else ""
        parts.append(
            f'<article class="card"><h2><code>{_e(entry.name)}</code></h2>{group}<p>{_e(entry.description)}</p>'
            f"{schema}{example}</article>"
        )
    return layout(ctx, "Event types", "".join(parts), current="events")


def campaigns(ctx: Context, organizations: Sequence[OrganizationConfig], safe_url: Any) -> str:
    """Each organisation's settings, read-only, beside each campaign's: its override or "inherited"."""
    if not organizations:
        return layout(ctx, "Campaigns", "<p>No organisation settings here.</p>", current="campaigns")
    parts = []
    for org in organizations:
        org_values = {
            "Webhooks": "on" if org.enabled else "off",
            "URL": safe_url(org.url),
            "Events": ", ".join(org.events),
            "Custom headers": ", ".join(sorted(org.headers)) or "none",
            "Retry attempts": str(org.retry_attempts),
            "Timeout": f"{org.timeout_s:g} s",
        }
        rows = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in org_values.items())
        camps = []
        for camp in org.campaigns:
            overrides = {
                "Webhooks": None if camp.enabled is None else ("on" if camp.enabled else "off"),
                "URL": None if camp.url is None else safe_url(camp.url),
                "Events": None if camp.events is None else ", ".join(camp.events),
                "Custom headers": None if camp.headers is None else (", ".join(sorted(camp.headers)) or "none"),
                "Retry attempts": None if camp.retry_attempts is None else str(camp.retry_attempts),
                "Timeout": None if camp.timeout_s is None else f"{camp.timeout_s:g} s",
            }
            cells = "".join(
                f'<tr><th scope="row">{_e(k)}</th><td class="ro">{_e(org_values[k])}</td>'
                + (
                    f'<td><strong>{_e(v)}</strong> <span class="badge">override</span></td>'
                    if v is not None
                    else '<td class="muted">inherited</td>'
                )
                + "</tr>"
                for k, v in overrides.items()
            )
            camps.append(f"""<section class="card" aria-labelledby="c-{_e(org.id)}-{_e(camp.id)}">
<h3 id="c-{_e(org.id)}-{_e(camp.id)}">Campaign {_e(camp.id)}</h3><div class="scroll"><table class="compare">
<caption>Campaign {_e(camp.id)}: the organisation's settings (read-only) beside the campaign's overrides</caption>
<thead><tr><th scope="col">Setting</th><th scope="col">Organisation (read-only)</th><th scope="col">This campaign</th>
</tr></thead><tbody>{cells}</tbody></table></div></section>""")
        parts.append(f"""<section aria-labelledby="o-{_e(org.id)}"><h2 id="o-{_e(org.id)}">Organisation
{_e(org.id)}</h2><p class="hint">Inherited by every campaign unless the campaign overrides it; for an event both
configure, the campaign's URL and headers are used. Set by the platform: read-only here.</p>
<div class="scroll"><table class="compare"><caption>Organisation settings (read-only)</caption><tbody>{rows}</tbody>
</table></div>{"".join(camps)}</section>""")
    return layout(ctx, "Campaigns", "".join(parts), current="campaigns")


# --- pieces ---


def _events(events: Iterable[str]) -> str:
    return " ".join(f"<code>{_e(e)}</code>" for e in events)


def _status(view: Mapping[str, Any]) -> str:
    if view.get("status") == "paused":
        reason = view.get("paused_reason")
        return (
            f'<span class="badge bad">paused</span>{" <span class=muted>(" + _e(reason) + ")</span>" if reason else ""}'
        )
    return '<span class="badge ok">active</span>'


def _badge(status: str) -> str:
    kind = "ok" if status == "delivered" else "bad" if status in ("failed", "dead_lettered", "blocked") else "other"
    return f'<span class="badge {kind}">{_e(status.replace("_", " "))}</span>'


def _delivery_link(ctx: Context, base: str, attempt: Outcome) -> str:
    if not attempt.delivery_id:
        return ""
    short = attempt.delivery_id[:12] + "…" if len(attempt.delivery_id) > 13 else attempt.delivery_id
    if not ctx.may("deliveries"):
        return f"<code>{_e(short)}</code>"
    return (
        f'<a href="{_e(base)}/deliveries/{_e(attempt.delivery_id)}" aria-label="Delivery {_e(attempt.delivery_id)}">'
        f"<code>{_e(short)}</code></a>"
    )


def _on_its_page(attempt: Outcome) -> str:
    """Where an attempt found in the index shows its stored response: its delivery's page (the row's link)."""
    return '<span class="hint">on its delivery\'s page</span>' if attempt.delivery_id else ""


def _response(attempt: Outcome) -> str:
    text = attempt.response_body or attempt.error or ""
    if not text:
        return ""
    return f"<details><summary>Show</summary><pre>{_e(text)}</pre></details>"


def _ms(duration: float | None) -> str:
    return _NONE if duration is None else f"{duration:.0f} ms"


def _when(iso: object) -> str:
    """An RFC 3339 UTC time as ``2026-11-23 11:30:00`` (the page says UTC)."""
    text = str(iso or "")
    return text[:19].replace("T", " ") if len(text) >= 19 else text
