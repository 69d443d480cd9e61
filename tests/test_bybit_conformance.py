"""Every answer of bybit_sim against the Bybit V5 docs page it implements: its response table and its example.

tests/fixtures/bybit/tables/*.json hold each page's "Response Parameters" table (every documented
field path with its documented type; written by tools/bybit_doc_tables.py from a docs checkout,
whose docstring states the rules: which rows may be absent, what else a comment says is sent). Every
field a table requires must be in the answer, and every field the table lists must have its type
(string, number, boolean, null, array, object), at every level and in every list item.

tests/fixtures/bybit/*.json hold the docs' examples verbatim (``response``), with the docs path they
came from and ``maps`` (objects keyed by data, such as a fee coin). An answer has no key beyond the
example's and the table's, every key of the example, and the example's types where the table is silent;
a list's items are compared with the example's first item. The WebSocket auth, ping and subscribe
answers have no table in the docs: their examples are all there is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import websocket

import trader_utils
from bybit_sim import Behaviour, SimExchange
from data_fetcher import load_sample
from exchange import Bybit
from preflight import Plan, Preflight

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import bybit_doc_tables  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "bybit"
TABLES = FIXTURES / "tables"
DOCS = Path(os.environ.get("BYBIT_DOCS", "/nonexistent"))  # a bybit-exchange/docs checkout's docs/ folder, if any
KEY, SECRET = "sim-key", "sim-secret"
COSTS = {"capital": 10_000.0, "taker_fee": 0.00055, "maker_fee": 0.0002, "slippage": 0.0005, "funding_rate": 0.0001,
         "maintenance_margin_rate": 0.005}


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", type(None): "null", list: "array", dict: "object"}[type(value)]


def table(name: str) -> dict[str, dict[str, Any]]:
    """The documented fields of an answer: a REST page's table inside the common envelope (docs: v5/guide.mdx)."""
    fields = json.loads((TABLES / f"{name}.json").read_text())["fields"]
    if name.startswith("rest_"):
        return {**json.loads((TABLES / "rest_common.json").read_text())["fields"], **fields}
    return fields


def accepted(entry: dict[str, Any]) -> list[str]:
    return [entry["type"], *entry.get("also", [])]


def steps(path: str) -> list[str]:
    """``result.list[][0]`` -> ``result``, ``list``, ``[]``, ``[0]``."""
    return re.findall(r"\[\d*\]|[^.\[]+", path)


def table_differences(answer: Any, fields: dict[str, dict[str, Any]]) -> list[str]:
    """Where ``answer`` lacks a required field of the table or has one of another type (documented paths)."""
    problems: list[str] = []
    for path, entry in fields.items():
        *parents, last = steps(path)
        holders = [answer]
        for step in parents:
            if step == "[]":
                holders = [item for h in holders if isinstance(h, list) for item in h]
            elif step.startswith("["):
                holders = [h[int(step[1:-1])] for h in holders if isinstance(h, list) and len(h) > int(step[1:-1])]
            else:
                holders = [h[step] for h in holders if isinstance(h, dict) and step in h]
        for holder in holders:  # a holder of another type (or null where the docs allow it) is its own row's concern
            index = int(last[1:-1]) if last.startswith("[") else None
            if index is not None and isinstance(holder, list):
                present, value = index < len(holder), holder[index] if index < len(holder) else None
            elif index is None and isinstance(holder, dict):
                present, value = last in holder, holder.get(last)
            else:
                continue
            if not present:
                problem = None if "optional" in entry else f"{path}: missing"
            elif kind(value) not in accepted(entry):
                problem = f"{path}: {kind(value)} where the docs have {' or '.join(accepted(entry))}"
            else:
                problem = None
            if problem and problem not in problems:
                problems.append(problem)
    return problems


def documented_keys(fields: dict[str, dict[str, Any]], path: str) -> set[str]:
    """The keys the table lists for the object at ``path``."""
    prefix = f"{path}." if path else ""
    return {p[len(prefix):] for p in fields if p.startswith(prefix) and re.fullmatch(r"\w+", p[len(prefix):])}


def differences(sim: Any, doc: Any, fixture: dict[str, Any], fields: dict[str, dict[str, Any]],
                path: str = "") -> list[str]:
    """How ``sim`` differs from the example ``doc``: keys neither it nor the table has, keys of the example
    missing, and the example's types where the table does not type the field (paths like result.list[].symbol)."""
    wanted = accepted(fields[path]) if path in fields else [kind(doc)]
    if kind(sim) not in wanted:
        return [f"{path or '<root>'}: {kind(sim)} where the docs have {' or '.join(wanted)}"]
    if isinstance(sim, dict) and isinstance(doc, dict):
        if path in fixture.get("maps", []):
            first = next(iter(doc.values()))
            return [p for k, v in sim.items() for p in differences(v, first, fixture, fields, f"{path}.*")]
        problems = [f"{path}.{k}: not in the docs" for k in sorted(set(sim) - set(doc) - documented_keys(fields, path))]
        problems += [f"{path}.{k}: missing" for k in sorted(set(doc) - set(sim))]
        return problems + [p for k in sorted(set(sim) & set(doc))
                           for p in differences(sim[k], doc[k], fixture, fields, f"{path}.{k}".lstrip("."))]
    if isinstance(sim, list) and isinstance(doc, list) and doc:
        return [p for item in sim for p in differences(item, doc[0], fixture, fields, f"{path}[]")]
    return []


def conforms(name: str, answer: Any) -> list[str]:
    fixture = json.loads((FIXTURES / f"{name}.json").read_text())
    fields = table(name) if (TABLES / f"{name}.json").exists() else {}
    return differences(answer, fixture["response"], fixture, fields)


def non_empty(answer: Any) -> bool:
    """Every record list in the answer (list, data, coin) holds something: an empty one proves nothing."""
    if isinstance(answer, dict):
        return all((not isinstance(v, list) or bool(v)) and non_empty(v) if k in ("list", "data", "coin")
                   else non_empty(v) for k, v in answer.items())
    if isinstance(answer, list):
        return all(non_empty(v) for v in answer)
    return True


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """Every REST answer and WebSocket message the project uses, from a sim with positions, orders,
    fills, funding and a stop-loss in place (hedge mode: both positionIdx slots)."""
    got: dict[str, Any] = {}
    candles = load_sample("BTCUSDT", "1h").iloc[:400]
    behaviour = Behaviour.delivery("sync", mark_offset=0.001)
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=300, costs=COSTS, behaviour=behaviour) as sim, \
            pytest.MonkeyPatch.context() as mp:
        mp.setenv("BYBIT_REST_URL", sim.rest_url)
        http = trader_utils.make_http(api_key=KEY, api_secret=SECRET, retry_delay=0)
        private = websocket.create_connection(f"{sim.ws_url}/v5/private", timeout=5)
        expires = int(time.time() * 1000) + 10_000
        sign = hmac.new(SECRET.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256).hexdigest()
        private.send(json.dumps({"op": "auth", "args": [KEY, expires, sign]}))
        got["ws_auth"] = json.loads(private.recv())
        private.send(json.dumps({"op": "subscribe", "args": ["execution", "order", "position", "wallet"]}))
        got["ws_subscribe_private"] = json.loads(private.recv())
        private.send(json.dumps({"op": "ping", "req_id": "p"}))
        got["ws_pong_private"] = json.loads(private.recv())
        public = websocket.create_connection(f"{sim.ws_url}/v5/public/linear", timeout=5)
        public.send(json.dumps({"op": "ping", "req_id": "p"}))
        got["ws_pong_public"] = json.loads(public.recv())
        public.send(json.dumps({"op": "subscribe", "req_id": "s", "args": ["kline.60.BTCUSDT", "tickers.BTCUSDT"]}))
        got["ws_subscribe_public"] = json.loads(public.recv())
        got["ws_public_ticker"] = json.loads(public.recv())
        price = float(candles["open"].iloc[300])
        got["rest_position_switch_mode"] = http.switch_position_mode(category="linear", symbol="BTCUSDT", mode=3)
        got["rest_position_set_leverage"] = http.set_leverage(category="linear", symbol="BTCUSDT", buyLeverage="5",
                                                              sellLeverage="5")
        got["rest_order_create"] = http.place_order(category="linear", symbol="BTCUSDT", side="Buy",
                                                    orderType="Market", qty="0.1", positionIdx=1,
                                                    stopLoss=f"{price * 0.9:.1f}", orderLinkId="long-1")
        http.place_order(category="linear", symbol="BTCUSDT", side="Sell", orderType="Market", qty="0.1",
                         positionIdx=2, orderLinkId="short-1")
        got["rest_position_trading_stop"] = http.set_trading_stop(category="linear", symbol="BTCUSDT", positionIdx=2,
                                                                  stopLoss=f"{price * 1.1:.1f}", tpslMode="Full")
        target = dict(category="linear", symbol="BTCUSDT", side="Sell", orderType="Limit", qty="0.05",
                      price=f"{price * 1.5:.1f}", reduceOnly=True, positionIdx=1)
        http.place_order(**target, orderLinkId="long-1-tp0")
        got["rest_order_realtime"] = http.get_open_orders(category="linear", symbol="BTCUSDT")
        got["rest_order_cancel"] = http.cancel_order(category="linear", symbol="BTCUSDT", orderLinkId="long-1-tp0")
        http.place_order(**target, orderLinkId="long-1-tp1")
        got["rest_order_cancel_all"] = http.cancel_all_orders(category="linear", symbol="BTCUSDT")
        for _ in range(12):  # funding at 08:00 or 16:00 or 00:00 within 12 bars
            sim.advance()
        got["rest_order_history"] = http.get_order_history(category="linear", symbol="BTCUSDT")
        got["rest_execution_list"] = http.get_executions(category="linear", symbol="BTCUSDT")
        got["rest_position_list"] = http.get_positions(category="linear", symbol="BTCUSDT")
        got["rest_account_wallet_balance"] = http.get_wallet_balance(accountType="UNIFIED")
        got["rest_market_time"] = http.get_server_time()
        got["rest_market_kline"] = http.get_kline(category="linear", symbol="BTCUSDT", interval="60", limit=5)
        got["rest_market_tickers"] = http.get_tickers(category="linear", symbol="BTCUSDT")
        got["rest_market_instruments_info"] = http.get_instruments_info(category="linear", symbol="BTCUSDT")
        got["rest_market_funding_history"] = http.get_funding_rate_history(category="linear", symbol="BTCUSDT")
        got["rest_user_query_api"] = http.get_api_key_information()
        got["rest_account_info"] = http.get_account_info()
        while True:  # the public kline of the last bar played
            message = json.loads(public.recv())
            if message.get("topic", "").startswith("kline."):
                got["ws_public_kline"] = message
                break
        private.settimeout(5)
        while not all(f"ws_private_{t}" in got for t in ("execution", "order", "position", "wallet")):
            message = json.loads(private.recv())
            got.setdefault(f"ws_private_{message['topic']}", message)
        public.close()
        private.close()
    return got


NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))
TABLE_NAMES = sorted(p.stem for p in TABLES.glob("*.json") if p.stem != "rest_common")
NO_RESULT = ("rest_position_set_leverage", "rest_position_switch_mode", "rest_position_trading_stop")


def test_every_fixture_names_its_docs_page():
    for path in [*FIXTURES.glob("*.json"), *TABLES.glob("*.json")]:
        fixture = json.loads(path.read_text())
        assert fixture["docs"].startswith("v5/") and fixture["docs"].endswith(".mdx"), path.name
        if DOCS.exists():
            assert (DOCS / fixture["docs"]).exists(), fixture["docs"]


def test_every_answer_has_its_docs_table():
    """A table per answer of tools/bybit_doc_tables.PAGES; only the WebSocket auth, ping and subscribe have none."""
    assert set(TABLE_NAMES) == set(bybit_doc_tables.PAGES) - {"rest_common"}
    assert set(NAMES) - set(TABLE_NAMES) == {"ws_auth", "ws_pong_private", "ws_pong_public", "ws_subscribe_private",
                                             "ws_subscribe_public"}


@pytest.mark.skipif(not DOCS.exists(), reason="BYBIT_DOCS unset: the fixtures are the test input")
def test_the_table_fixtures_are_the_docs_tables():
    """The fixtures are what tools/bybit_doc_tables.py extracts from the docs checkout, unedited."""
    for name in bybit_doc_tables.PAGES:
        assert (TABLES / f"{name}.json").read_text() == bybit_doc_tables.dumps(bybit_doc_tables.extract(DOCS, name)), \
            f"{name}: run python tools/bybit_doc_tables.py {DOCS}"


@pytest.mark.parametrize("name", NAMES)
def test_the_sim_answers_like_the_docs_example(answers, name):
    assert name in answers, f"no sim answer captured for {name}"
    answer = answers[name]
    assert non_empty(answer) or name in NO_RESULT, f"{name}: an empty list proves nothing"
    assert conforms(name, answer) == []


@pytest.mark.parametrize("name", TABLE_NAMES)
def test_the_sim_answers_with_every_field_of_the_docs_table(answers, name):
    assert non_empty(answers[name]) or name in NO_RESULT, f"{name}: an empty list proves nothing"
    assert table_differences(answers[name], table(name)) == []


def test_the_example_check_catches_a_divergence():
    """The comparison itself: an extra positionIdx on an execution, a number where the docs have a string; a
    field the table lists and the example does not (createType) is no divergence."""
    fixture = json.loads((FIXTURES / "rest_execution_list.json").read_text())
    fields = table("rest_execution_list")
    good = json.loads(json.dumps(fixture["response"]))
    good["result"]["list"][0]["createType"] = "CreateByUser"
    assert differences(good, fixture["response"], fixture, fields) == []
    row = good["result"]["list"][0]
    row["positionIdx"] = 1
    row["execQty"] = 0.1
    assert differences(good, fixture["response"], fixture, fields) == [
        "result.list[].positionIdx: not in the docs", "result.list[].execQty: number where the docs have string"]


def test_the_table_check_catches_a_missing_field_and_a_wrong_type():
    """The example of v5/order/execution.mdx lacks createType and execFeeV2, which its table lists; a
    deprecated field may be absent, a documented "" stands for a list, and null only where the docs say so."""
    example = json.loads((FIXTURES / "rest_execution_list.json").read_text())["response"]
    assert table_differences(example, table("rest_execution_list")) == [
        "result.list[].createType: missing", "result.list[].execFeeV2: missing"]
    example["result"]["list"][0].update(createType="CreateByUser", execFeeV2="", seq="4688002127", isMaker=None)
    assert table_differences(example, table("rest_execution_list")) == [
        "result.list[].isMaker: null where the docs have boolean",
        "result.list[].seq: string where the docs have number"]
    wallet = json.loads((FIXTURES / "ws_private_wallet.json").read_text())["response"]
    for coin in wallet["data"][0]["coin"]:
        coin.pop("availableToWithdraw", None)  # deprecated
        coin["colRes"] = "0"  # in the table, not in the example
    assert table_differences(wallet, table("ws_private_wallet")) == []
    execution = json.loads((FIXTURES / "ws_private_execution.json").read_text())["response"]
    execution["data"][0]["extraFees"] = ""
    assert table_differences(execution, table("ws_private_execution")) == []
    execution["data"][0]["extraFees"] = None
    assert table_differences(execution, table("ws_private_execution")) == [
        "data[].extraFees: null where the docs have array or string"]
    kline = {"retCode": 0, "retMsg": "OK", "retExtInfo": {}, "time": 1,
             "result": {"category": "linear", "symbol": "BTCUSDT", "list": [["1", "2", "3", "4", "5", "6", 7]]}}
    assert table_differences(kline, table("rest_market_kline")) == [
        "result.list[][6]: number where the docs have string"]


DOC_PAGE = """---
title: x
---
### Request Parameters
| Parameter | Required | Type | Comments|
|:----- |:-------|:-----|------ |
|category |**true** |string |Product type|

### Response Parameters
| Parameter | Type | Comments|
|:----- |:-----|----- |
|[category](../enum#category) |string |Product type |
|list |array |Object |
|> [side](../enum#side) |string |Side |
|> seq |long |Cross sequence |
|> fees |List |Extra fees, in other cases an empty string is returned |
|> info |object |If isPreListing=false, info=null |
|>> old |string |**Deprecated**, always `""` |
|> spotOnly |string |Last price, Spot has this field only |
|candles |array |Rows |
|> candles[0]: start |string |Start |

### Response Example
"""
TAB_PAGE = """### Response Parameters
<Tabs>
<TabItem value="linear" label="Linear/Inverse" default>
    <table>
        <tr><th>Parameter</th><th>Type</th><th>Comments</th></tr>
        <tr>
            <td>data</td><td>array</td><td>Object</td>
        </tr>
        <tr>
            <td>> <a href="../../enum#tickdirection">tickDirection</a></td><td>string</td><td>Tick direction</td>
        </tr>
    </table>
</TabItem>
<TabItem value="option" label="Option">
    <table><tr><td>data</td><td>array</td><td>Object</td></tr><tr><td>> delta</td><td>string</td><td>x</td></tr>
    </table>
</TabItem>
</Tabs>
"""


def test_the_extraction_reads_nesting_links_lists_tabs_and_the_rules(tmp_path, monkeypatch):
    (tmp_path / "v5").mkdir()
    (tmp_path / "v5" / "page.mdx").write_text(DOC_PAGE)
    (tmp_path / "v5" / "tabs.mdx").write_text(TAB_PAGE)
    monkeypatch.setitem(bybit_doc_tables.PAGES, "md", ("v5/page.mdx", "Response Parameters", None, "result."))
    monkeypatch.setitem(bybit_doc_tables.PAGES, "tab", ("v5/tabs.mdx", "Response Parameters", "Linear/Inverse", ""))
    fields = bybit_doc_tables.extract(tmp_path, "md")["fields"]
    assert {p: e["type"] for p, e in fields.items()} == {
        "result.category": "string", "result.list": "array", "result.list[].side": "string",
        "result.list[].seq": "number", "result.list[].fees": "array", "result.list[].info": "object",
        "result.list[].info.old": "string", "result.list[].spotOnly": "string", "result.candles": "array",
        "result.candles[][0]": "string"}
    assert fields["result.list[].fees"]["also"] == ["string"]
    assert fields["result.list[].info"]["also"] == ["null"]
    assert fields["result.list[].info.old"]["optional"].startswith("deprecated: ")
    assert fields["result.list[].spotOnly"]["optional"].startswith("spot only: ")
    assert [p for p, e in fields.items() if "optional" in e] == ["result.list[].info.old", "result.list[].spotOnly"]
    assert bybit_doc_tables.extract(tmp_path, "tab")["fields"] == {"data": {"type": "array"},
                                                                   "data[].tickDirection": {"type": "string"}}
    (tmp_path / "v5" / "page.mdx").write_text(DOC_PAGE.replace("|long |", "|decimal |"))
    with pytest.raises(bybit_doc_tables.DocsError, match="type 'decimal' is not one of"):
        bybit_doc_tables.extract(tmp_path, "md")


def test_the_extraction_refuses_a_folder_without_the_docs(tmp_path, capsys):
    assert bybit_doc_tables.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path} holds no v5/ folder; give the docs/ folder of a "
                                               "bybit-docs checkout")


def prune(answer: Any, fields: dict[str, dict[str, Any]], path: str = "") -> Any:
    """Only what the docs table lists: every other key dropped, at every level (an object whose keys the
    table does not list, such as cumFeeDetail or retExtInfo, is kept whole)."""
    keys = documented_keys(fields, path)
    if isinstance(answer, dict) and keys:
        return {k: prune(v, fields, f"{path}.{k}".lstrip(".")) for k, v in answer.items() if k in keys}
    if isinstance(answer, list):
        return [prune(item, fields, f"{path}[]") for item in answer]
    return answer


class TableOnly:
    """pybit's HTTP session whose answers hold only the fields of the docs tables (a method without a table
    is an AttributeError: the adapter called an endpoint this file does not know)."""

    TABLES = {"get_server_time": "rest_market_time", "get_kline": "rest_market_kline",
              "get_tickers": "rest_market_tickers", "get_instruments_info": "rest_market_instruments_info",
              "get_funding_rate_history": "rest_market_funding_history",
              "get_wallet_balance": "rest_account_wallet_balance", "get_positions": "rest_position_list",
              "set_leverage": "rest_position_set_leverage", "switch_position_mode": "rest_position_switch_mode",
              "set_trading_stop": "rest_position_trading_stop", "place_order": "rest_order_create",
              "cancel_order": "rest_order_cancel", "cancel_all_orders": "rest_order_cancel_all",
              "get_open_orders": "rest_order_realtime", "get_order_history": "rest_order_history",
              "get_executions": "rest_execution_list", "get_api_key_information": "rest_user_query_api"}

    def __init__(self, http: Any) -> None:
        self.http = http

    def __getattr__(self, name: str) -> Any:
        if name not in self.TABLES:
            raise AttributeError(f"{name}: no docs table for this pybit method")
        method, fields = getattr(self.http, name), table(self.TABLES[name])
        return lambda **kwargs: prune(method(**kwargs), fields)


def test_pruning_keeps_the_documented_fields_only():
    answer = {"retCode": 0, "retMsg": "OK", "retExtInfo": {"x": 1}, "time": 1, "extra": 2,
              "result": {"category": "linear", "nextPageCursor": "", "list": [
                  {"execId": "e", "positionIdx": 1, "seq": 3}, {"execId": "f"}]}}
    assert prune(answer, table("rest_execution_list")) == {
        "retCode": 0, "retMsg": "OK", "retExtInfo": {"x": 1}, "time": 1,
        "result": {"category": "linear", "nextPageCursor": "", "list": [{"execId": "e", "seq": 3}, {"execId": "f"}]}}


def test_the_adapter_and_preflight_read_only_what_the_docs_tables_list(monkeypatch):
    """Every read of exchange.py (and preflight's rows over it) gives the same answer when Bybit's answers
    hold nothing but the fields of the docs tables; every write works on such answers (hedge mode, two
    positions with stops, a target, funding and a stop-loss fill on the way)."""
    candles = load_sample("BTCUSDT", "1h").iloc[:400]
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=300, costs=COSTS,
                     behaviour=Behaviour.delivery("sync")) as sim:
        monkeypatch.setenv("BYBIT_REST_URL", sim.rest_url)
        http = trader_utils.make_http(api_key=KEY, api_secret=SECRET, retry_delay=0)
        full, bare = Bybit(http, "BTCUSDT"), Bybit(TableOnly(http), "BTCUSDT")
        start = sim.engine.now_ms()
        price = sim.engine.last_price()
        bare.set_position_mode(True)
        bare.set_leverage(5)
        assert bare.place_entry("long-1", "Buy", "0.1", f"{price * 0.9:.1f}", 1, "LastPrice", 1.0)
        assert bare.place_entry("short-1", "Sell", "0.1", f"{price * 1.2:.1f}", 2, "LastPrice", -1.0)
        assert bare.place_target("long-1-tp0", "Sell", "0.05", f"{price * 1.5:.1f}", 1, 1.0)
        bare.move_stop(2, f"{price * 1.02:.1f}", "LastPrice")  # near: one of the hours ahead takes it
        for _ in range(12):
            sim.advance()
        assert bare.place_close("long-1-close", "Sell", "0.02", 1, 1.0)
        plan = Plan("BTCUSDT", "1h", {"long": {"leverage": 5}, "short": {"leverage": 5}})
        reads = {
            "server time": lambda ex: ex.server_time_ms(), "instrument": lambda ex: ex.instrument(),
            "klines": lambda ex: ex.klines("60", start - 50 * 3_600_000, start, 100),
            "funding": lambda ex: ex.funding_rates(start - 7 * 86_400_000, sim.engine.now_ms()),
            "prices": lambda ex: ex.prices(), "wallet": lambda ex: ex.wallet(), "positions": lambda ex: ex.positions(),
            "hedge mode": lambda ex: ex.hedge_mode(), "open orders": lambda ex: ex.open_orders(),
            "find order": lambda ex: [ex.find_order(link) for link in ("long-1", "long-1-tp0", "nothing")],
            "fills": lambda ex: ex.fills_since(start), "order fills": lambda ex: ex.order_fills("long-1-close"),
            "await": lambda ex: ex.await_order_fills("long-1-close", 1.0),
            "open times": lambda ex: [ex.position_open_time(p) for p in ex.positions()],
            **{f"preflight {row}": lambda ex, row=row: getattr(Preflight(ex, plan, None), row)()
               for row in ("permissions", "expiry", "instrument_row", "mode", "kline_page", "executions")},
        }
        for name, read in reads.items():
            assert read(bare) == read(full), name
        fills = bare.fills_since(start)
        assert {f.exec_type for f in fills} == {"Trade", "Funding"} and any(f.stop_order_type == "StopLoss"
                                                                         for f in fills), "the scenario fell short"
        assert bare.cancel("long-1-tp0") and not bare.cancel("long-1-tp0")


def test_the_adapter_reads_the_execution_stream_by_the_documented_fields_only(answers):
    message = answers["ws_private_execution"]
    full, bare = Bybit(None, "BTCUSDT"), Bybit(None, "BTCUSDT")
    full.on_stream(message)
    bare.on_stream(prune(message, table("ws_private_execution")))
    links = {row["orderLinkId"] for row in message["data"]}
    assert links and all(bare.order_fills(link, rest=False) == full.order_fills(link, rest=False) != []
                         for link in links)
