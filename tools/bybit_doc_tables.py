"""Extract the "Response Parameters" tables of the Bybit V5 docs pages GrTr uses into test fixtures.

    python tools/bybit_doc_tables.py DOCS     # DOCS: a bybit-docs checkout's docs/ folder (it holds v5/)

Writes tests/fixtures/bybit/tables/<name>.json, one per REST endpoint and WebSocket topic in
:data:`PAGES` (the names of tests/test_bybit_conformance.py's answers), each with the docs file it
came from and ``fields``: the documented path of every row (``result.list[].symbol``;
``result.list[][0]`` for kline's ``list[0]: startTime``) -> its documented type. A REST page's table
describes ``result``; the envelope around it is guide.mdx's "Common response parameters"
(``rest_common``). A WebSocket page's table describes the whole message.

The rules (tests/test_bybit_conformance.py holds every sim answer to the fixtures):

* Types: string, String, datetime -> string; number, integer, long -> number; boolean; array,
  List, array<object> -> array; Object, object, json -> object.
* A page with tabs per category: only the Linear/Inverse tab (GrTr trades linear USDT perpetuals).
* Every row is required except (``optional``, the reason and the docs' words kept) a row the docs mark
  deprecated, or whose comment says the key is sent only for other kinds of contract (:data:`ABSENT_FOR_US`).
  "Valid for option" and the like are not exemptions: the docs' linear examples carry such keys as "".
  An optional field, when sent, still has its documented type.
* A value the comment itself names is accepted beside the type (``also``): "" where it says an empty
  string is returned, null where it says the field is null.
* Where a table contradicts its own page's example and the client library, :data:`ERRATA` says which
  type is kept and why.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bybit" / "tables"

# answer name -> (docs file, heading of the table, tab label or None, path prefix of the rows)
PAGES: dict[str, tuple[str, str, str | None, str]] = {
    "rest_common": ("v5/guide.mdx", "Common response parameters", None, ""),
    "rest_market_time": ("v5/market/time.mdx", "Response Parameters", None, "result."),
    "rest_market_kline": ("v5/market/kline.mdx", "Response Parameters", None, "result."),
    "rest_market_tickers": ("v5/market/tickers.mdx", "Response Parameters", "Linear/Inverse", "result."),
    "rest_market_instruments_info": ("v5/market/instrument.mdx", "Response Parameters", "Linear/Inverse",
                                     "result."),
    "rest_market_funding_history": ("v5/market/history-fund-rate.mdx", "Response Parameters", None, "result."),
    "rest_account_wallet_balance": ("v5/account/wallet-balance.mdx", "Response Parameters", None, "result."),
    "rest_account_info": ("v5/account/account-info.mdx", "Response Parameters", None, "result."),
    "rest_position_list": ("v5/position/position.mdx", "Response Parameters", None, "result."),
    "rest_position_set_leverage": ("v5/position/leverage.mdx", "Response Parameters", None, "result."),
    "rest_position_switch_mode": ("v5/position/position-mode.mdx", "Response Parameters", None, "result."),
    "rest_position_trading_stop": ("v5/position/trading-stop.mdx", "Response Parameters", None, "result."),
    "rest_order_create": ("v5/order/create-order.mdx", "Response Parameters", None, "result."),
    "rest_order_cancel": ("v5/order/cancel-order.mdx", "Response Parameters", None, "result."),
    "rest_order_cancel_all": ("v5/order/cancel-all.mdx", "Response Parameters", None, "result."),
    "rest_order_realtime": ("v5/order/open-order.mdx", "Response Parameters", None, "result."),
    "rest_order_history": ("v5/order/order-list.mdx", "Response Parameters", None, "result."),
    "rest_execution_list": ("v5/order/execution.mdx", "Response Parameters", None, "result."),
    "rest_user_query_api": ("v5/user/apikey-info.mdx", "Response Parameters", None, "result."),
    "ws_public_kline": ("v5/websocket/public/kline.mdx", "Response Parameters", None, ""),
    "ws_public_ticker": ("v5/websocket/public/ticker.mdx", "Response Parameters", "Linear/Inverse", ""),
    "ws_private_execution": ("v5/websocket/private/execution.mdx", "Response Parameters", None, ""),
    "ws_private_order": ("v5/websocket/private/order.mdx", "Response Parameters", None, ""),
    "ws_private_position": ("v5/websocket/private/position.mdx", "Response Parameters", None, ""),
    "ws_private_wallet": ("v5/websocket/private/wallet.mdx", "Response Parameters", None, ""),
}

TYPES = {"string": "string", "datetime": "string", "number": "number", "integer": "number", "long": "number",
         "boolean": "boolean", "array": "array", "list": "array", "array<object>": "array", "object": "object",
         "json": "object"}

# comment phrases saying the key is not sent for a linear USDT perpetual (lower case, tags stripped)
ABSENT_FOR_US = {
    "deprecated": "deprecated",
    "only pushed when you subscribe to the option position": "option positions only",
    "spot has this field only": "spot only",
    "unique field for inverse futures & usdt/usdc futures": "expiring futures only",
    "for perpetual,this field will not return": "expiring futures only",
    "applicable to expired futures only": "expiring futures only",
}
EMPTY_STRING = ("an empty string is returned", 'returns ""', 'always return ""', 'always ""')
NULL = ("=null",)

# (docs file, path) -> (type kept, why)
ERRATA = {
    ("v5/websocket/public/ticker.mdx", "data"): (
        "object", "the table says array; the page's examples (LinearPerpetual, LinearFutures) send one object, "
                  "and pybit merges ticker deltas into a dict"),
}


class DocsError(ValueError):
    """The docs page does not hold the table where PAGES says it is."""


def section(text: str, heading: str, tab: str | None, where: str) -> str:
    """The text of ``heading``'s section (to the next heading of its level or above), or of its ``tab``."""
    found = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.MULTILINE)
    if not found:
        raise DocsError(f"{where}: no heading {heading!r}")
    level = len(found.group(1))
    rest = text[found.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    body = rest[:end.start()] if end else rest
    if tab is None:
        return body
    item = re.search(rf'<TabItem [^>]*label="{re.escape(tab)}"[^>]*>(.*?)</TabItem>', body, re.DOTALL)
    if not item:
        raise DocsError(f"{where}: no tab {tab!r} under {heading!r}")
    return item.group(1)


def plain(cell: str) -> str:
    """A cell's text: links and tags dropped, entities decoded, spaces collapsed."""
    cell = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell)
    cell = re.sub(r"<[^>]+>", " ", cell)
    cell = html.unescape(cell).replace("`", "").replace("**", "").replace("_", " ")
    return re.sub(r"\s+", " ", cell).strip()


def rows(body: str) -> list[tuple[str, str, str]]:
    """(name cell, type cell, comment cell) of each row of the section's first table, markdown or HTML."""
    found = [(m.group(1), m.group(2), m.group(3)) for m in
             re.finditer(r"<tr>\s*<td>(.*?)</td>\s*<td>(.*?)</td>\s*<td>(.*?)</td>", body, re.DOTALL)]
    if found:
        return found
    table: list[tuple[str, str, str]] = []
    for line in body.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            if table:
                break
            continue
        cells = line.strip("|").split("|")
        if len(cells) < 3 or cells[0].strip() == "Parameter" or set(cells[0].strip()) <= set(":- "):
            continue
        table.append((cells[0], cells[1], "|".join(cells[2:])))
    return table


def field(type_cell: str, comment: str, where: str) -> dict[str, Any]:
    """One row's entry: its type, what else the comment says is sent, whether it may be absent."""
    kind = plain(type_cell).lower().replace(" ", "")
    if kind not in TYPES:
        raise DocsError(f"{where}: type {type_cell.strip()!r} is not one of {', '.join(TYPES)}")
    entry: dict[str, Any] = {"type": TYPES[kind]}
    words = plain(comment).lower()
    also = [t for t, phrases in (("string", EMPTY_STRING), ("null", NULL))
            if t != entry["type"] and any(p in words for p in phrases)]
    if also:
        entry["also"] = also
    for phrase, reason in ABSENT_FOR_US.items():
        if phrase in words.replace(", ", ","):
            entry["optional"] = f"{reason}: {plain(comment)[:160]}"
            break
    return entry


def extract(docs: Path, name: str) -> dict[str, Any]:
    """The fixture of one answer name: the docs file, the tab, and every documented path with its type."""
    page, heading, tab, prefix = PAGES[name]
    where = f"{page} {heading}" + (f" [{tab}]" if tab else "")
    body = section((docs / page).read_text(encoding="utf-8"), heading, tab, where)
    fields: dict[str, dict[str, Any]] = {}
    stack: list[tuple[int, str, str]] = []  # (depth, path, type) of the rows above
    for name_cell, type_cell, comment in rows(body):
        text = plain(name_cell)
        depth = len(text) - len(text.lstrip(">"))
        key = text.lstrip(">").strip()
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if depth and (not stack or stack[-1][0] != depth - 1):
            raise DocsError(f"{where}: row {key!r} is nested under no row")
        parent, parent_type = (stack[-1][1], stack[-1][2]) if stack else (prefix.rstrip("."), "object")
        item = re.fullmatch(r"\w+\[(\d+)\]\s*:\s*\w+", key)
        if item:  # kline: "list[0]: startTime", the items of a list of arrays
            path = f"{parent}[][{item.group(1)}]"
        else:
            if not re.fullmatch(r"\w+", key):
                raise DocsError(f"{where}: parameter {key!r} is not a name")
            path = f"{parent}{'[]' if parent_type == 'array' else ''}.{key}".lstrip(".")
        entry = field(type_cell, comment, f"{where} {key}")
        errata = ERRATA.get((page, path.removeprefix(prefix)))
        if errata:
            entry.update(type=errata[0], errata=errata[1])
        fields[path] = entry
        stack.append((depth, path, entry["type"]))
    if not fields and not re.search(r"^\s*None\s*$", body, re.MULTILINE):
        raise DocsError(f"{where}: no table rows and no 'None'")
    return {"docs": page, "section": heading + (f" [{tab}]" if tab else ""), "fields": fields}


def dumps(table: dict[str, Any]) -> str:
    """A fixture as JSON with one field a line (easy to read and to diff)."""
    fields = ",\n".join(f"    {json.dumps(path)}: {json.dumps(entry)}" for path, entry in table["fields"].items())
    head = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in table.items() if k != "fields")
    return f'{{\n{head},\n  "fields": {{' + (f"\n{fields}\n  " if fields else "") + "}\n}\n"


def main(argv: list[str] | None = None) -> int:
    """Write every fixture from a docs checkout."""
    parser = argparse.ArgumentParser(description="Extract the Bybit V5 docs' response tables into test fixtures.")
    parser.add_argument("docs", type=Path, help="a bybit-docs checkout's docs/ folder (it holds v5/)")
    parser.add_argument("--out", type=Path, default=FIXTURES, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if not (args.docs / "v5").is_dir():
        print(f"error: {args.docs} holds no v5/ folder; give the docs/ folder of a bybit-docs checkout",
              file=sys.stderr)
        return 2
    try:
        tables = {name: extract(args.docs, name) for name in PAGES}
    except (DocsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        (args.out / f"{name}.json").write_text(dumps(table), encoding="utf-8")
    print(f"wrote {len(tables)} tables to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
