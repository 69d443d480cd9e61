"""The shapes of bybit_sim's answers: the engine's records as Bybit's V5 docs show them.

Each function builds one record type with the fields and string-or-number types of the docs page's
response table and of its example response (tests/fixtures/bybit/tables holds the tables,
tests/fixtures/bybit the examples; a test holds every answer to both). A field the table lists for
linear perpetuals but that carries nothing for them (an option's greeks, a spot OCO's trigger) is sent
as the docs' examples send such fields: "" or its "unknown" value. Where REST and a stream show a record
with different fields, ``drop`` or ``shape`` picks one.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

import core
from sim_engine import ACCOUNT_UID, Engine, ExchangeError, Order, Position

DAY_MS = 86_400_000

# docs: v5/user/apikey-info.mdx: the permission groups the example response lists
PERMISSION_GROUPS = ("ContractTrade", "Spot", "Wallet", "Options", "Derivatives", "CopyTrading", "BlockTrade",
                     "Exchange", "NFT", "Affiliate", "Earn", "FiatP2P", "FiatConvertBroker", "FiatGlobalPay",
                     "FiatBitPay", "BitCard", "ByXPost")
TRADE_ONLY = {"ContractTrade": ["Order", "Position"], "Derivatives": ["DerivativesTrade"]}
# Fields one record type has on one channel but not on another: in neither that page's table nor its example
EXECUTION_REST_DROP = {"category", "execPnl", "isLeverage", "marketUnit"}  # docs: v5/order/execution.mdx
EXECUTION_WS_DROP = {"execFeeV2"}  # docs: v5/websocket/private/execution.mdx
ORDER_DROP = {  # docs: v5/order/open-order.mdx, v5/order/order-list.mdx, v5/websocket/private/order.mdx
    "realtime": {"brokerOrderPrice", "category", "closedPnl", "extraFees", "feeCurrency", "rpiMatchedQty",
                 "rpiTakerAccess", "slippageTolerance", "slippageToleranceType"},
    "history": {"brokerOrderPrice", "category", "closedPnl", "feeCurrency"},
    "ws": {"extraFees"},
}
# docs: v5/position/position.mdx (REST: avgPrice; its example also spells mmrSysUpdateTime, its table
# mmrSysUpdatedTime) and v5/websocket/private/position.mdx (stream: entryPrice; greeks for options only)
POSITION_REST_DROP = {"category", "entryPrice"}
POSITION_WS_DROP = {"avgPrice", "mmrSysUpdateTime", "delta", "gamma", "vega", "theta"}
# docs: v5/market/tickers.mdx and v5/websocket/public/ticker.mdx (the stream's delivery fields: expiring futures only)
TICKER_REST_DROP = {"tickDirection"}
TICKER_WS_DROP = {"basis", "basisRate", "basisRateYear", "deliveryFeeRate", "deliveryTime", "predictedDeliveryPrice"}


def num(value: float) -> str:
    """Bybit's string numbers (the shortest text that reads back as the same float)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def ticker(engine: Engine, drop: set[str]) -> dict[str, Any]:
    """docs: v5/market/tickers.mdx (REST) and v5/websocket/public/ticker.mdx (stream): ``drop`` picks the channel."""
    price, mark = engine.last_price(), engine.mark_price()
    day = max(0, engine.cursor - DAY_MS // engine.bar_ms)
    hour = max(0, engine.cursor - max(1, 3_600_000 // engine.bar_ms))
    prev = float(engine.open_[min(day, len(engine.ts) - 1)])
    past = slice(day, max(day + 1, engine.cursor))
    now = engine.now_ms()
    funding = core.FUNDING_INTERVAL_MS
    full = {"symbol": engine.symbol, "tickDirection": "ZeroPlusTick", "lastPrice": num(price),
            "indexPrice": num(mark), "markPrice": num(mark), "prevPrice24h": num(prev),
            "price24hPcnt": num(price / prev - 1), "highPrice24h": num(float(engine.high[past].max())),
            "lowPrice24h": num(float(engine.low[past].min())),
            "prevPrice1h": num(float(engine.open_[min(hour, len(engine.ts) - 1)])), "openInterest": "0",
            "openInterestValue": "0", "singleOpenInterest": "0", "singleOpenInterestValue": "0",
            "turnover24h": num(float((engine.volume[past] * engine.close[past]).sum())),
            "volume24h": num(float(engine.volume[past].sum())), "fundingRate": num(engine.costs["funding_rate"]),
            "nextFundingTime": str((now // funding + 1) * funding), "predictedDeliveryPrice": "", "basisRate": "",
            "deliveryFeeRate": "", "deliveryTime": "0", "ask1Size": "1", "bid1Price": num(price),
            "ask1Price": num(price), "bid1Size": "1", "basis": "", "preOpenPrice": "", "preQty": "",
            "curPreListingPhase": "", "fundingIntervalHour": "8", "basisRateYear": "", "fundingCap": "0.005"}
    return {k: v for k, v in full.items() if k not in drop}


def wallet(engine: Engine, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """docs: v5/account/wallet-balance.mdx (and the wallet topic): the UNIFIED account, its USDT coin."""
    params = params or {}
    if params and params.get("accountType") != "UNIFIED":
        raise ExchangeError(10001, "params error: accountType only support UNIFIED")
    upl, im = engine.unrealised(), engine.used_margin()
    mm = sum(p.size * engine.mark_price() * engine.costs["maintenance_margin_rate"]
             for p in engine.position_slots())
    equity, margin_balance = engine.equity(), engine.balance + upl
    realised = sum(p.realised for p in engine.positions.values())
    coin = {"availableToBorrow": "", "bonus": "0", "accruedInterest": "0",
            "availableToWithdraw": num(max(0.0, margin_balance - im)), "totalOrderIM": "0", "equity": num(equity),
            "totalPositionMM": num(mm), "usdValue": num(equity), "spotHedgingQty": "0", "unrealisedPnl": num(upl),
            "collateralSwitch": True, "borrowAmount": "0", "totalPositionIM": num(im),
            "walletBalance": num(engine.balance), "cumRealisedPnl": num(realised), "locked": "0",
            "marginCollateral": True, "coin": "USDT", "spotBorrow": "0", "colRes": "0"}  # 0: no collateral restriction
    wanted = [c.strip() for c in str(params.get("coin") or "USDT").split(",")]
    return {"list": [{
        "totalEquity": num(equity), "accountIMRate": num(im / margin_balance if margin_balance else 0),
        "accountIMRateByMp": num(im / margin_balance if margin_balance else 0),
        "totalMarginBalance": num(margin_balance), "totalInitialMargin": num(im), "totalInitialMarginByMp": num(im),
        "accountType": "UNIFIED", "totalAvailableBalance": num(max(0.0, margin_balance - im)),
        "accountMMRate": num(mm / margin_balance if margin_balance else 0),
        "accountMMRateByMp": num(mm / margin_balance if margin_balance else 0), "totalPerpUPL": num(upl),
        "totalWalletBalance": num(engine.balance), "accountLTV": "0", "totalMaintenanceMargin": num(mm),
        "totalMaintenanceMarginByMp": num(mm), "coin": [coin] if "USDT" in wanted else []}]}


def position(engine: Engine, slot: Position, drop: set[str]) -> dict[str, Any]:
    """docs: v5/position/position.mdx; createdTime: the first position ever on the symbol, openTime: this one's."""
    mark = engine.mark_price()
    d = slot.direction
    upl = (mark - slot.avg_price) * slot.size * d
    im = slot.size * slot.avg_price / engine.leverage
    liq = core.liquidation_price(slot.avg_price, d, engine.leverage, engine.costs["maintenance_margin_rate"])
    fee = max(engine.costs["taker_fee"], 0.00055)
    breakeven = ((slot.avg_price * slot.size - slot.current_realised) / (slot.size * (1 - d * fee))
                 if slot.size else 0.0)
    full = {"positionIdx": slot.idx, "riskId": 1, "riskLimitValue": "2000000", "symbol": engine.symbol,
            "side": slot.side, "size": num(slot.size), "avgPrice": num(slot.avg_price),
            "entryPrice": num(slot.avg_price), "positionValue": num(slot.size * slot.avg_price), "tradeMode": 0,
            "positionStatus": "Normal", "autoAddMargin": 0, "adlRankIndicator": 2 if slot.size else 0,
            "leverage": num(engine.leverage), "breakEvenPrice": num(breakeven), "positionBalance": num(im),
            "markPrice": num(mark), "liqPrice": num(liq) if slot.size else "", "bustPrice": "",
            "positionMM": num(slot.size * mark * engine.costs["maintenance_margin_rate"]),
            "positionMMByMp": num(slot.size * mark * engine.costs["maintenance_margin_rate"]),
            "positionIM": num(im), "positionIMByMp": num(im), "tpslMode": "Full",
            "takeProfit": num(slot.take_profit), "stopLoss": num(slot.stop_loss),
            "trailingStop": num(slot.trailing_stop), "unrealisedPnl": num(upl),
            "curRealisedPnl": num(slot.current_realised), "cumRealisedPnl": num(slot.realised), "seq": slot.seq,
            "isReduceOnly": False, "mmrSysUpdateTime": "", "mmrSysUpdatedTime": "", "leverageSysUpdatedTime": "",
            "sessionAvgPrice": "", "delta": "", "gamma": "", "vega": "", "theta": "",
            "createdTime": str(engine.first_position_ms),
            "updatedTime": str(slot.updated_ms), "openTime": slot.opened_ms, "category": "linear"}
    return {k: v for k, v in full.items() if k not in drop}


def order(engine: Engine, record: Order, shape: str) -> dict[str, Any]:
    """docs: v5/order/open-order.mdx (realtime), order-list.mdx (history), v5/websocket/private/order.mdx (ws).

    ocoTriggerBy, marketUnit: spot orders' fields, sent with their unknown and empty values."""
    full = {"orderId": record.order_id, "orderLinkId": record.link_id, "parentOrderLinkId": "", "blockTradeId": "",
            "symbol": engine.symbol, "price": num(record.price), "brokerOrderPrice": "", "qty": num(record.qty),
            "side": record.side, "isLeverage": "", "positionIdx": record.position_idx, "orderStatus": record.status,
            "createType": record.create_type,
            "cancelType": record.cancel_type, "rejectReason": record.reject_reason,
            "avgPrice": num(record.avg_price) if record.filled else "",
            "leavesQty": num(record.qty - record.filled if record.is_open else 0.0),
            "leavesValue": num((record.qty - record.filled) * record.price if record.is_open else 0.0),
            "cumExecQty": num(record.filled), "cumExecValue": num(record.cum_value), "cumExecFee": num(record.cum_fee),
            "timeInForce": record.time_in_force, "orderType": record.order_type,
            "stopOrderType": record.stop_order_type, "orderIv": "", "marketUnit": "",
            "ocoTriggerBy": "OcoTriggerByUnknown", "triggerPrice": num(record.trigger_price),
            "takeProfit": num(record.take_profit), "stopLoss": num(record.stop_loss),
            "tpTriggerBy": "LastPrice" if record.take_profit else "UNKNOWN", "slTriggerBy": record.sl_trigger_by,
            "triggerDirection": record.trigger_direction, "triggerBy": record.trigger_by,
            "lastPriceOnCreated": num(record.last_price_on_created), "reduceOnly": record.reduce_only,
            "closeOnTrigger": record.close_on_trigger, "smpType": "None", "smpGroup": 0, "smpOrderId": "",
            "tpslMode": "Full" if record.stop_loss or record.take_profit or record.stop_order_type != "UNKNOWN"
            else "", "tpLimitPrice": "", "slLimitPrice": "", "placeType": "", "slippageToleranceType": "UNKNOWN",
            "slippageTolerance": "", "createdTime": str(record.created_ms), "updatedTime": str(record.updated_ms),
            "extraFees": "", "cumFeeDetail": {"USDT": num(record.cum_fee)}, "rpiTakerAccess": False,
            "rpiMatchedQty": "0", "closedPnl": num(record.closed_pnl), "category": "linear", "feeCurrency": ""}
    return {k: v for k, v in full.items() if k not in ORDER_DROP[shape]}


def execution(engine: Engine, e: dict[str, Any], ws: bool) -> dict[str, Any]:
    """docs: v5/order/execution.mdx (REST) and v5/websocket/private/execution.mdx: no positionIdx on either."""
    full = {"category": "linear", "symbol": engine.symbol, "isLeverage": "0", "orderId": e["orderId"],
            "orderLinkId": e["orderLinkId"], "side": e["side"], "orderPrice": num(e["orderPrice"]),
            "orderQty": num(e["orderQty"]), "leavesQty": num(e["leavesQty"]), "createType": e["createType"],
            "orderType": e["orderType"], "stopOrderType": e["stopOrderType"], "execFee": num(e["execFee"]),
            "execFeeV2": "",  # a FutureSpread's spot-leg fee
            "execId": e["execId"], "execPrice": num(e["execPrice"]), "execQty": num(e["execQty"]),
            "execPnl": num(e["execPnl"]), "execType": e["execType"], "execValue": num(e["execValue"]),
            "execTime": str(e["execTime"]), "isMaker": e["isMaker"], "feeRate": num(e["feeRate"]), "tradeIv": "",
            "markIv": "", "markPrice": num(e["markPrice"]), "indexPrice": "", "underlyingPrice": "",
            "blockTradeId": "", "closedSize": num(e["closedSize"]), "extraFees": "", "seq": e["seq"],
            "feeCurrency": "USDT", "marketUnit": ""}
    return {k: v for k, v in full.items() if k not in (EXECUTION_WS_DROP if ws else EXECUTION_REST_DROP)}


def instrument(engine: Engine, status: str) -> dict[str, Any]:
    """docs: v5/market/instrument.mdx (the Linear example's fields)."""
    inst = engine.instrument
    tick = inst["tick_size"]
    decimals = max(0, -int(np.floor(np.log10(tick)))) if tick < 1 else 0
    return {
        "symbol": engine.symbol, "symbolId": 5, "contractType": "LinearPerpetual", "status": status,
        "baseCoin": engine.symbol.removesuffix("USDT"), "quoteCoin": "USDT", "launchTime": str(int(engine.ts[0])),
        "deliveryTime": "0", "deliveryFeeRate": "", "priceScale": str(decimals),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": num(inst["max_leverage"]), "leverageStep": "0.01"},
        "priceFilter": {"minPrice": num(tick), "maxPrice": "1999999.8", "tickSize": num(tick)},
        "lotSizeFilter": {"maxOrderQty": "1000000", "minOrderQty": num(inst["min_qty"]),
                          "qtyStep": num(inst["qty_step"]), "postOnlyMaxOrderQty": "1000000",
                          "maxMktOrderQty": "100000", "minNotionalValue": num(inst["min_notional"])},
        "unifiedMarginTrade": True, "fundingInterval": 480, "settleCoin": "USDT", "copyTrading": "both",
        "upperFundingRate": "0.00375", "lowerFundingRate": "-0.00375", "isPreListing": False,
        "displayName": "", "forbidUplWithdrawal": False,  # a USDC contract's display name; unrealised PnL withdrawable
        "preListingInfo": None, "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
        "symbolType": ""}


def api_key(engine: Engine, key: str, permissions: dict[str, list[str]], ips: list[str], read_only: bool,
            expires_ms: int) -> dict[str, Any]:
    """docs: v5/user/apikey-info.mdx (``expires_ms`` 0: no expiry, shown as 1970-01-01T00:00:00Z)."""
    def iso(ms: int) -> str:
        return pd.Timestamp(ms, unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")

    days_left = -2 if not expires_ms else int((expires_ms - time.time() * 1000) // DAY_MS)
    return {"id": "2208369", "note": "bybit_sim", "apiKey": key, "readOnly": int(read_only), "secret": "",
            "permissions": permissions, "ips": list(ips), "type": 1, "deadlineDay": days_left,
            "expiredAt": iso(expires_ms), "createdAt": iso(int(engine.ts[0])), "unified": 0, "uta": 1,
            "userID": ACCOUNT_UID, "inviterID": 0, "vipLevel": "No VIP", "mktMakerLevel": "0", "affiliateID": 0,
            "rsaPublicKey": "", "isMaster": True, "parentUid": "0", "kycLevel": "LEVEL_1", "kycRegion": "",
            "userIDInt64": str(ACCOUNT_UID), "inviterIDInt64": "0", "affiliateIDInt64": "0"}


def account_info(engine: Engine, margin_mode: str) -> dict[str, Any]:
    """docs: v5/account/account-info.mdx (a Unified trading account 2.0, unifiedMarginStatus 5 of v5/enum.mdx;
    dcpStatus and timeWindow are deprecated there: always OFF and 0)."""
    return {"marginMode": margin_mode, "updatedTime": str(int(engine.ts[0])), "unifiedMarginStatus": 5,
            "dcpStatus": "OFF", "timeWindow": 0, "smpGroup": 0, "isMasterTrader": False, "spotHedgingStatus": "OFF"}
