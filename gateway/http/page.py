"""The status page at `/`: one server-rendered HTML page, French or English, readable on a phone.

No build chain and nothing fetched from elsewhere: the style and the few lines of script are inline.
The script asks for the same page again every few seconds and swaps the live part in place, so the
page is rendered in one place only (here, on the server).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from gateway.http.models import Device, Event, Label, Order
from gateway.timeutil import human_duration, parse_rfc3339

LANGUAGES = ("en", "fr")
REFRESH_S = 5

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Store gateway",
        "store": "Store",
        "gateway": "Gateway",
        "uplink": "Head office link",
        "last_connected": "last connected",
        "outbox": "Outbox",
        "waiting": "events waiting",
        "oldest": "oldest",
        "devices": "Devices",
        "device": "Device",
        "kind": "Kind",
        "status": "Status",
        "since": "Since",
        "detail": "Detail",
        "labels": "Shelf labels",
        "oldest_unconfirmed": "oldest unconfirmed",
        "not_confirmed": "Not confirmed",
        "label": "Label",
        "price": "Price",
        "orders": "Open orders",
        "order": "Order",
        "lines": "Lines",
        "deadline": "Deadline",
        "events": "Last events",
        "at": "At",
        "type": "Type",
        "data": "Data",
        "none": "none",
        "never": "never",
        "updated": "updated",
        "online": "online",
        "offline": "offline",
        "error": "error",
        "unknown": "unknown",
        "connecting": "connecting",
        "running": "running",
        "stopped": "stopped",
        "pending": "pending",
        "sent": "sent",
        "confirmed": "confirmed",
        "failed": "failed",
        "reserved": "reserved",
        "ready": "ready",
        "printer": "printer",
        "scanner": "scanner",
        "label_station": "label station",
        "sensor": "sensor",
    },
    "fr": {
        "title": "Passerelle magasin",
        "store": "Magasin",
        "gateway": "Passerelle",
        "uplink": "Liaison siège",
        "last_connected": "dernière connexion",
        "outbox": "File d'envoi",
        "waiting": "événements en attente",
        "oldest": "le plus ancien",
        "devices": "Appareils",
        "device": "Appareil",
        "kind": "Type",
        "status": "État",
        "since": "Depuis",
        "detail": "Détail",
        "labels": "Étiquettes",
        "oldest_unconfirmed": "plus ancienne non confirmée",
        "not_confirmed": "Non confirmées",
        "label": "Étiquette",
        "price": "Prix",
        "orders": "Commandes en cours",
        "order": "Commande",
        "lines": "Lignes",
        "deadline": "Échéance",
        "events": "Derniers événements",
        "at": "Heure",
        "type": "Type",
        "data": "Données",
        "none": "aucun",
        "never": "jamais",
        "updated": "mis à jour",
        "online": "en ligne",
        "offline": "hors ligne",
        "error": "erreur",
        "unknown": "inconnu",
        "connecting": "connexion",
        "running": "en marche",
        "stopped": "arrêtée",
        "pending": "à envoyer",
        "sent": "envoyée",
        "confirmed": "confirmée",
        "failed": "en échec",
        "reserved": "réservée",
        "ready": "prête",
        "printer": "imprimante",
        "scanner": "scanner",
        "label_station": "station d'étiquettes",
        "sensor": "capteur",
    },
}


def pick_language(query: str | None, accept_language: str | None) -> str:
    """`?lang=` first, then the browser's Accept-Language (by q-value), else English."""
    if query in LANGUAGES:
        return query
    best, best_q = "en", -1.0
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if primary in LANGUAGES and q > best_q:
            best, best_q = primary, q
    return best


@dataclass
class PageData:
    """Everything the page shows, read in one go."""

    status: dict[str, Any]
    devices: Sequence[Device]
    unconfirmed: Sequence[Label]
    orders: Sequence[Order]
    events: Sequence[Event]


class _Words:
    def __init__(self, lang: str) -> None:
        self.table = TEXT[lang]

    def __call__(self, key: str) -> str:
        return escape(self.table.get(key, key))


def _local(text: str | None, zone: ZoneInfo, t: _Words, today: str = "") -> str:
    """A time in the store's zone; today's without the date (narrow phone screens)."""
    if not text:
        return t("never")
    try:
        moment = parse_rfc3339(text).astimezone(zone)
    except ValueError:
        return escape(text)
    day = moment.strftime("%Y-%m-%d")
    return moment.strftime("%H:%M:%S" if day == today else "%Y-%m-%d %H:%M")


def _badge(state: str, t: _Words) -> str:
    css = {"online": "ok", "confirmed": "ok", "running": "ok", "ready": "ok"}.get(state, "")
    css = css or {"offline": "bad", "error": "bad", "failed": "bad", "stopped": "bad"}.get(state, "mid")
    return f'<span class="badge {css}">{t(state)}</span>'


def _event_summary(event: Event) -> str:
    data = event.data
    keys = ("device", "status", "label", "sku", "printer", "job", "order", "code", "command_id", "level", "units")
    parts = [f"{key}={data[key]}" for key in keys if key in data and data[key] is not None]
    return escape(", ".join(parts)[:160])


def render(data: PageData, lang: str, zone: ZoneInfo, now: datetime) -> str:
    """The whole page."""
    t = _Words(lang)
    today = now.astimezone(zone).strftime("%Y-%m-%d")
    report = data.status
    gateway, uplink, box = report["gateway"], report["uplink"], report["outbox"]
    oldest = box.get("oldest_age_s")
    labels = report.get("labels") or {}
    by_state: dict[str, int] = labels.get("by_state") or {}
    unconfirmed_age = labels.get("oldest_unconfirmed_s")

    device_rows = (
        "".join(
            f'<tr data-device="{escape(d.id)}" data-status="{escape(d.status)}"><td>{escape(d.id)}</td>'
            f"<td>{t(d.kind)}</td><td>{_badge(d.status, t)}</td><td>{_local(d.since, zone, t, today)}</td>"
            f"<td>{escape(d.detail or '')}</td></tr>"
            for d in data.devices
        )
        or f'<tr><td colspan="5">{t("none")}</td></tr>'
    )
    label_counts = " · ".join(
        f'<span data-label-state="{state}">{t(state)} <b>{by_state.get(state, 0)}</b></span>'
        for state in ("pending", "sent", "confirmed", "failed")
    )
    label_rows = "".join(
        f"<tr><td>{escape(item.label)}</td><td>{escape(item.sku)}</td><td>{escape(item.price or '')}</td>"
        f"<td>{_badge(item.state, t)}</td><td>{_local(item.since, zone, t, today)}</td></tr>"
        for item in data.unconfirmed
    )
    order_rows = (
        "".join(
            f'<tr data-order="{escape(o.order)}"><td>{escape(o.order)}</td><td>{_badge(o.status, t)}</td>'
            f"<td>{sum(line.qty for line in o.lines)} ({len(o.lines)})</td>"
            f"<td>{_local(due, zone, t, today) if (due := o.deadline or o.expires_at) else '-'}</td></tr>"
            for o in data.orders
        )
        or f'<tr><td colspan="4">{t("none")}</td></tr>'
    )
    event_rows = (
        "".join(
            f'<tr data-seq="{e.seq}"><td>{e.seq}</td><td>{_local(e.at, zone, t, today)}</td><td>{escape(e.type)}</td>'
            f"<td>{_event_summary(e)}</td></tr>"
            for e in data.events
        )
        or f'<tr><td colspan="4">{t("none")}</td></tr>'
    )
    labels_table = ""
    if label_rows:
        labels_table = (
            f'<h2>{t("not_confirmed")}</h2>\n<div class="scroll"><table id="labels"><thead><tr><th>{t("label")}</th>'
            f"<th>SKU</th><th>{t('price')}</th><th>{t('status')}</th><th>{t('since')}</th></tr></thead>"
            f"<tbody>{label_rows}</tbody></table></div>"
        )
    oldest_text = human_duration(oldest) if oldest is not None else "-"
    unconfirmed_text = human_duration(unconfirmed_age) if unconfirmed_age is not None else "-"
    switch = " ".join(
        f'<a href="?lang={code}"{" aria-current=true" if code == lang else ""}>{code.upper()}</a>' for code in LANGUAGES
    )
    store = escape(str(report.get("store") or ""))
    return f"""<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{t("title")} {store}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0; padding: 0.8rem; background: #f6f6f4; color: #222; }}
header {{ display: flex; justify-content: space-between; align-items: baseline; flex-wrap: wrap; }}
h1 {{ font-size: 1.3rem; margin: 0.2rem 0; }}
h2 {{ font-size: 1.05rem; margin: 1.2rem 0 0.4rem; }}
nav a {{ margin-left: 0.5rem; }}
nav a[aria-current] {{ font-weight: bold; text-decoration: none; color: #222; }}
.cards {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(9.5rem, 1fr)); gap: 0.5rem; }}
.card {{ background: #fff; border-radius: 6px; padding: 0.6rem; box-shadow: 0 1px 2px #0002; }}
.card .big {{ font-size: 1.6rem; font-weight: bold; }}
.card small {{ color: #666; display: block; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; width: 100%; background: #fff; font-size: 0.9rem; }}
th, td {{ text-align: left; padding: 0.3rem 0.4rem; border-bottom: 1px solid #e4e4e0; white-space: nowrap; }}
td:last-child {{ white-space: normal; }}
.badge {{ padding: 0.05rem 0.4rem; border-radius: 3px; font-size: 0.85rem; }}
.ok {{ background: #d8f0d8; color: #175d17; }}
.bad {{ background: #f8d8d6; color: #8a1a12; }}
.mid {{ background: #f3ead0; color: #6b5410; }}
footer {{ color: #777; font-size: 0.8rem; margin-top: 1rem; }}
</style>
</head>
<body>
<header><h1>{t("title")} · {t("store")} {store}</h1><nav>{switch}</nav></header>
<div id="live">
<section class="cards">
<div class="card" id="gateway-card"><small>{t("gateway")}</small>{_badge(gateway["state"], t)}
<small>{escape(str(gateway.get("version") or ""))}</small></div>
<div class="card" id="uplink-card"><small>{t("uplink")}</small>
<span id="uplink-state">{_badge(uplink["state"], t)}</span>
<small>{t("last_connected")} {_local(uplink.get("last_connected_at"), zone, t, today)}</small></div>
<div class="card"><small>{t("outbox")}</small><span class="big" id="outbox-depth">{box["depth"]}</span>
<small>{t("waiting")}; {t("oldest")} <span id="outbox-oldest">{oldest_text}</span></small></div>
<div class="card" id="labels-card"><small>{t("labels")}</small>{label_counts}
<small>{t("oldest_unconfirmed")}: {unconfirmed_text}</small></div>
</section>
<h2>{t("devices")}</h2>
<div class="scroll"><table id="devices"><thead><tr><th>{t("device")}</th><th>{t("kind")}</th><th>{t("status")}</th>
<th>{t("since")}</th><th>{t("detail")}</th></tr></thead><tbody>{device_rows}</tbody></table></div>
{labels_table}
<h2>{t("orders")}</h2>
<div class="scroll"><table id="orders"><thead><tr><th>{t("order")}</th><th>{t("status")}</th><th>{t("lines")}</th>
<th>{t("deadline")}</th></tr></thead><tbody>{order_rows}</tbody></table></div>
<h2>{t("events")}</h2>
<div class="scroll"><table id="events"><thead><tr><th>seq</th><th>{t("at")}</th><th>{t("type")}</th>
<th>{t("data")}</th></tr></thead><tbody>{event_rows}</tbody></table></div>
<footer>{t("updated")} <span id="updated">{now.astimezone(zone).strftime("%H:%M:%S")}</span></footer>
</div>
<script>
// Every few seconds: fetch this same page and swap its live part in place (nothing else is fetched).
setInterval(async () => {{
  try {{
    const answer = await fetch(location.href, {{cache: "no-store"}});
    if (!answer.ok) return;
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    const live = page.getElementById("live");
    if (live) document.getElementById("live").replaceWith(live);
  }} catch (e) {{ /* the gateway restarting: try again next time */ }}
}}, {REFRESH_S * 1000});
</script>
</body>
</html>
"""
