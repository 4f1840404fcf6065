"""The status page: what a person looks at first, served at ``/`` on the metrics port.

``/`` is one self-contained HTML page (no build step, no framework, nothing fetched from
elsewhere): this broker and its role, its replication group and leader, the brokers with
their replication lag, the queues with their length and consumers' lag, and request rates.
It is rendered on the server, so it reads the same without JavaScript (a ``<noscript>`` meta
refresh then reloads it every few seconds); a small script fetches ``/status.json`` every two
seconds and updates the tables in place. ``/status.json`` is the same data for machines.

:func:`read_status` is the one function that reads the broker; everything else formats its
result. Lists are bounded (``MAX_QUEUES`` queues, ``MAX_CONSUMERS`` consumers each, the ones
furthest behind first), so a broker with many queues answers with a page, not a dump.
"""

from __future__ import annotations

import collections
import html
import json
import time
from typing import TYPE_CHECKING, Any

import trio

from ._applied import APPLY_LAG

if TYPE_CHECKING:
    from ._broker import Broker

MAX_QUEUES = 100
MAX_CONSUMERS = 10
REFRESH_SECONDS = 2
RATE_WINDOW = 10
"""Request rates are averaged over the last RATE_WINDOW samples, one a second."""


class RequestRates:
    """Requests answered per second, by operation, from the metrics counters.

    :meth:`run` samples the totals once a second into a bounded window; :meth:`rates` is the
    average from the oldest sample to now, with the totals as of now."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._samples: collections.deque[tuple[float, dict[str, tuple[float, float]]]] = (
            collections.deque(maxlen=RATE_WINDOW + 1)
        )

    def _totals(self) -> dict[str, tuple[float, float]]:
        """(requests, errors) answered so far, by operation."""
        totals: dict[str, tuple[float, float]] = {}
        for metric in self._broker.metrics.requests.collect():
            for sample in metric.samples:
                if not sample.name.endswith("_total"):
                    continue
                operation = sample.labels["operation"]
                count, errors = totals.get(operation, (0.0, 0.0))
                failed = sample.value if sample.labels["status"] == "error" else 0.0
                totals[operation] = (count + sample.value, errors + failed)
        return totals

    def sample(self) -> None:
        self._samples.append((trio.current_time(), self._totals()))

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(1)

    def rates(self) -> list[dict[str, Any]]:
        now, last = trio.current_time(), self._totals()
        t0, first = self._samples[0] if self._samples else (now, last)
        seconds = max(now - t0, 1e-9)
        rows = []
        for operation, (count, errors) in sorted(last.items()):
            count0, errors0 = first.get(operation, (0.0, 0.0))
            rows.append(
                {
                    "operation": operation,
                    "per_second": round((count - count0) / seconds, 1),
                    "errors_per_second": round((errors - errors0) / seconds, 1),
                    "total": int(count),
                }
            )
        return rows


async def read_status(broker: Broker, rates: RequestRates) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data: the one place that reads the broker."""
    stats = broker.statistics()
    topology = broker.topology(details=True)
    rows = await broker._worker.run(
        broker._store.list_queues, None, MAX_QUEUES + 1, MAX_CONSUMERS + 1
    )
    queues = []
    for row in rows[:MAX_QUEUES]:
        read_through = row.first_retained - 1  # a position before it reads what is retained
        queues.append(
            {
                "queue_id": row.queue_id,
                "length": row.length,
                "retained": row.retained,
                "consumers": [
                    {
                        "client_id": client_id,
                        "position": position,
                        "lag": row.length - max(position, read_through),
                    }
                    for client_id, position in row.clients[:MAX_CONSUMERS]
                ],
                "more_consumers": len(row.clients) > MAX_CONSUMERS,
            }
        )
    members = [
        {
            "broker_id": b.broker_id,
            "address": f"{b.host}:{b.port}",
            "role": b.role,
            "membership": b.membership,
            "status": b.status,
            "lag": b.lag,
        }
        for b in topology.brokers
    ]
    return {
        "broker": {
            "broker_id": broker.broker_id,
            "cluster_id": broker.cluster_id,
            "role": _role(stats.role),
            "term": stats.term,
            "leader_id": topology.leader_id,
            "commit_index": stats.commit_index,
            "applied_index": stats.applied_index,
            # Committed, not applied yet: on a replica, lone appends wait until APPLY_LAG of
            # them do, or the leader goes idle (_runtime._applied), so up to APPLY_LAG - 1.
            "applies_waiting": max(0, stats.commit_index - stats.applied_index),
            "connections": stats.connections,
            "disk": stats.disk_state,
            "disk_free_mb": None
            if stats.disk_free_bytes is None
            else round(stats.disk_free_bytes / 2**20, 1),
            # Its log lost entries it acknowledged: the index a leader must bring it back to
            # (None: it is not recovering). docs/reliability.md, "Damaged and shortened logs".
            "recovering_until": broker.driver.node.recovering_until,
            # Damaged stored values found and not repaired yet from another broker (never
            # served meanwhile). docs/reliability.md, "Repairing damaged values".
            "values_awaiting_repair": broker.driver.repair.statistics().waiting,
            # Rebooted, it votes once it knows what it acknowledged before: docs/reliability.md,
            # "A reboot votes only once it knows".
            "unverified": stats.unverified,
        },
        "groups": [
            {
                "group_id": topology.cluster_id,
                "leader_id": topology.leader_id,
                "term": stats.term,
                "version": topology.cluster_version,
                "voters": sum(m["membership"] == "voter" for m in members),
                "learners": sum(m["membership"] == "learner" for m in members),
                "hosted": True,
            },
            *_other_groups(broker),
        ],
        "brokers": members,
        "queues": queues,
        "more_queues": len(rows) > MAX_QUEUES,
        "requests": rates.rates(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def _other_groups(broker: Broker) -> list[dict[str, Any]]:
    """The other replication groups (docs/replication.md, "Several leaders"), in id order, as
    the ``groups`` rows: those this broker hosts from their cores, and with a cluster map the
    others from the map (their term unknown here, their leader as brokers hosting them said)."""
    host = broker.host
    if host is None or not host.several:
        return []
    cmap = host.meta.map
    leaders = host.meta.observed_leaders()
    rows = []
    for group_id in sorted(set(host.groups) | set(() if cmap is None else cmap.groups)):
        replica = host.groups.get(group_id)
        if replica is broker:
            continue
        if replica is None:
            record = cmap.groups[group_id]  # type: ignore[union-attr]
            rows.append(
                {
                    "group_id": group_id,
                    "leader_id": leaders.get(group_id),
                    "term": None,
                    "version": record.config_version,
                    "voters": len(record.voters),
                    "learners": len(record.learners),
                    "hosted": False,
                }
            )
            continue
        node = replica.driver.node
        rows.append(
            {
                "group_id": group_id,
                "leader_id": node.leader_id,
                "term": node.term,
                "version": node.cluster_version,
                "voters": len(node.config.voters),
                "learners": len(node.config.learners),
                "hosted": True,
            }
        )
    return rows


def _role(core_role: str) -> str:
    return {"leader": "leader", "follower": "replica"}.get(core_role, "candidate")


# -- rendering ---------------------------------------------------------------------------------
# The tables are described once, as (column title, key) lists, and rendered twice: here for the
# first load and without JavaScript, and by the page's script from /status.json. A cell's key
# is a field of the row, or "a.b" for a nested one.

TABLES: dict[str, list[tuple[str, str]]] = {
    "brokers": [
        ("Broker", "broker_id"),
        ("Address", "address"),
        ("Role", "role"),
        ("Membership", "membership"),
        ("Status", "status"),
        ("Replication lag", "lag"),
    ],
    "groups": [
        ("Group", "group_id"),
        ("Leader", "leader_id"),
        ("Term", "term"),
        ("Config version", "version"),
        ("Voters", "voters"),
        ("Learners", "learners"),
        ("Hosted here", "hosted"),
    ],
    "queues": [
        ("Queue", "queue_id"),
        ("Length", "length"),
        ("Retained", "retained"),
        ("Consumer", "client_id"),
        ("Position", "position"),
        ("Lag", "lag"),
    ],
    "requests": [
        ("Operation", "operation"),
        ("Requests/s", "per_second"),
        ("Errors/s", "errors_per_second"),
        ("Total", "total"),
    ],
}
TITLES = {
    "brokers": "Brokers",
    "groups": "Replication groups",
    "queues": "Queues and consumers",
    "requests": "Requests (last 10 s)",
}


def table_rows(status: dict[str, Any], table: str) -> list[dict[str, Any]]:
    """The rows of one table; a queue is one row per consumer (or one row with none)."""
    if table != "queues":
        return list(status[table])
    rows = []
    for queue in status["queues"]:
        base = {k: queue[k] for k in ("queue_id", "length", "retained")}
        consumers = queue["consumers"] or [{"client_id": "", "position": "", "lag": ""}]
        for i, consumer in enumerate(consumers):
            rows.append(
                (base if i == 0 else {"queue_id": "", "length": "", "retained": ""}) | consumer
            )
    return rows


def _cell(value: Any) -> str:
    return "-" if value is None else html.escape(str(value))


def _summary(status: dict[str, Any]) -> str:
    b = status["broker"]
    leader = b["leader_id"] or "none (election in progress?)"
    return (
        f'Broker <b data-field="broker_id">{_cell(b["broker_id"])}</b> is '
        f'<b data-field="role">{_cell(b["role"])}</b> of group '
        f'<b data-field="cluster_id">{_cell(b["cluster_id"])}</b>, term '
        f'<span data-field="term">{_cell(b["term"])}</span>; leader '
        f'<span data-field="leader_id">{_cell(leader)}</span>; commit index '
        f'<span data-field="commit_index">{_cell(b["commit_index"])}</span>, applied '
        f'<span data-field="applied_index">{_cell(b["applied_index"])}</span> ('
        f'<span data-field="applies_waiting">{_cell(b["applies_waiting"])}</span> committed '
        f"waiting: a replica applies lone appends {APPLY_LAG} at a time); "
        f'<span data-field="connections">{_cell(b["connections"])}</span> connections; disk '
        f'<b data-field="disk">{_cell(b["disk"])}</b> ('
        f'<span data-field="disk_free_mb">{_cell(b["disk_free_mb"])}</span> MiB free).'
    )


def render_page(status: dict[str, Any]) -> str:
    sections = []
    for table, columns in TABLES.items():
        head = "".join(f"<th>{html.escape(title)}</th>" for title, _ in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(row.get(key))}</td>" for _, key in columns) + "</tr>"
            for row in table_rows(status, table)
        )
        sections.append(
            f'<section><h2>{TITLES[table]}</h2><table id="{table}"><thead><tr>{head}</tr>'
            f"</thead><tbody>{body}</tbody></table></section>"
        )
    more = "" if not status["more_queues"] else f"<p>Only the first {MAX_QUEUES} queues.</p>"
    return _PAGE.format(
        refresh=REFRESH_SECONDS,
        summary=_summary(status),
        sections="\n".join(sections) + more,
        time=_cell(status["time"]),
        tables=json.dumps({t: [key for _, key in cols] for t, cols in TABLES.items()}),
    )


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>trio_broker status</title>
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; background: #fff; }}
h1 {{ font-size: 1.4em; margin: 0 0 .3em; }}
h2 {{ font-size: 1.1em; margin: 1.4em 0 .4em; }}
table {{ border-collapse: collapse; min-width: 40em; }}
th, td {{ text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }}
th {{ background: #f2f2f2; }}
td {{ font-variant-numeric: tabular-nums; }}
#updated {{ color: #666; font-size: .9em; }}
</style>
</head>
<body>
<h1>trio_broker status</h1>
<p id="summary">{summary}</p>
<p id="updated">Updated <span id="time">{time}</span><span id="stale"></span>
<noscript>(scripts are off: the page reloads itself every 5 s)</noscript></p>
{sections}
<script>
"use strict";
const TABLES = {tables};
function rowsOf(status, table) {{
  if (table !== "queues") return status[table];
  const rows = [];
  for (const q of status.queues) {{
    const consumers = q.consumers.length ? q.consumers : [{{client_id: "", position: "", lag: ""}}];
    consumers.forEach((c, i) => rows.push(Object.assign(
      i === 0 ? {{queue_id: q.queue_id, length: q.length, retained: q.retained}}
              : {{queue_id: "", length: "", retained: ""}}, c)));
  }}
  return rows;
}}
function text(value) {{ return value === null || value === undefined ? "-" : String(value); }}
function render(status) {{
  for (const [table, keys] of Object.entries(TABLES)) {{
    const body = document.querySelector("#" + table + " tbody");
    const rows = rowsOf(status, table).map(row => {{
      const tr = document.createElement("tr");
      for (const key of keys) {{
        const td = document.createElement("td");
        td.textContent = text(row[key]);
        tr.appendChild(td);
      }}
      return tr;
    }});
    body.replaceChildren(...rows);
  }}
  const b = status.broker;
  for (const el of document.querySelectorAll("[data-field]")) {{
    const value = b[el.dataset.field];
    el.textContent = el.dataset.field === "leader_id" && !value
      ? "none (election in progress?)" : text(value);
  }}
  document.getElementById("time").textContent = status.time;
}}
async function refresh() {{
  try {{
    const answer = await fetch("/status.json", {{cache: "no-store"}});
    if (!answer.ok) throw new Error(answer.status);
    render(await answer.json());
    document.getElementById("stale").textContent = "";
  }} catch (e) {{
    document.getElementById("stale").textContent = " (the broker is not answering)";
  }}
}}
setInterval(refresh, {refresh} * 1000);
</script>
</body>
</html>
"""
