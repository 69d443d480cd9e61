"""Every answer of bybit_sim against the example response of the Bybit V5 docs page it implements.

tests/fixtures/bybit/*.json hold the docs' examples verbatim (``response``), each with the docs path it
came from and the few documented adjustments (``extra_keys``: fields the response table lists and the
example leaves out; ``types``: a type the table states where the example shows a special case;
``maps``: objects keyed by data, such as a fee coin). A sim answer must have the same keys and the
same JSON types (string, number, boolean, null, array, object), recursively; a list's items are
compared with the example's first item.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
import websocket

import trader_utils
from bybit_sim import Behaviour, SimExchange
from data_fetcher import load_sample

FIXTURES = Path(__file__).parent / "fixtures" / "bybit"
KEY, SECRET = "sim-key", "sim-secret"


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", type(None): "null", list: "array", dict: "object"}[type(value)]


def differences(sim: Any, doc: Any, fixture: dict[str, Any], path: str = "") -> list[str]:
    """How ``sim`` differs from ``doc`` in keys and types (paths like result.list[].symbol)."""
    wanted = fixture.get("types", {}).get(path) or kind(doc)
    if kind(sim) != wanted:
        return [f"{path or '<root>'}: {kind(sim)} where the docs have {wanted}"]
    if isinstance(sim, dict):
        if path in fixture.get("maps", []):
            first = next(iter(doc.values()))
            return [p for k, v in sim.items() for p in differences(v, first, fixture, f"{path}.*")]
        doc = {**doc, **{key.rsplit(".", 1)[1]: value for key, value in fixture.get("extra_keys", {}).items()
                         if key.rsplit(".", 1)[0] == path}}
        problems = [f"{path}.{k}: not in the docs" for k in sorted(set(sim) - set(doc))]
        problems += [f"{path}.{k}: missing" for k in sorted(set(doc) - set(sim))]
        return problems + [p for k in set(sim) & set(doc)
                           for p in differences(sim[k], doc[k], fixture, f"{path}.{k}".lstrip("."))]
    if isinstance(sim, list) and doc:
        return [p for item in sim for p in differences(item, doc[0], fixture, f"{path}[]")]
    return []


def conforms(name: str, answer: Any) -> list[str]:
    fixture = json.loads((FIXTURES / f"{name}.json").read_text())
    return differences(answer, fixture["response"], fixture)


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
    costs = {"capital": 10_000.0, "taker_fee": 0.00055, "maker_fee": 0.0002, "slippage": 0.0005,
             "funding_rate": 0.0001, "maintenance_margin_rate": 0.005}
    behaviour = Behaviour.delivery("sync", mark_offset=0.001)
    with SimExchange(candles, "BTCUSDT", "1h", history_bars=300, costs=costs, behaviour=behaviour) as sim, \
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


def test_every_fixture_names_its_docs_page():
    docs = Path("/work/ref/bybit-docs/docs")
    for name in NAMES:
        fixture = json.loads((FIXTURES / f"{name}.json").read_text())
        assert fixture["docs"].startswith("v5/") and fixture["docs"].endswith(".mdx"), name
        if docs.exists():  # the docs checkout is a reference on the development machine, not a test input
            assert (docs / fixture["docs"]).exists(), fixture["docs"]


@pytest.mark.parametrize("name", NAMES)
def test_the_sim_answers_with_the_documented_fields_and_types(answers, name):
    assert name in answers, f"no sim answer captured for {name}"
    answer = answers[name]
    assert non_empty(answer) or name in ("rest_position_set_leverage", "rest_position_switch_mode",
                                         "rest_position_trading_stop"), f"{name}: an empty list proves nothing"
    assert conforms(name, answer) == []


def test_the_check_catches_a_divergence():
    """The comparison itself: an extra positionIdx on an execution, a number where the docs have a string."""
    fixture = json.loads((FIXTURES / "rest_execution_list.json").read_text())
    good = json.loads(json.dumps(fixture["response"]))
    assert differences(good, fixture["response"], fixture) == []
    row = good["result"]["list"][0]
    row["positionIdx"] = 1
    row["execQty"] = 0.1
    assert differences(good, fixture["response"], fixture) == [
        "result.list[].positionIdx: not in the docs", "result.list[].execQty: number where the docs have string"]
