"""Bybit clients for GrTr: pybit sessions whose endpoints can be redirected, and secret redaction.

``BYBIT_REST_URL`` and ``BYBIT_WS_URL`` (environment or ``.env``) point every pybit client GrTr
makes at another host, such as a local ``bybit_sim``; unset, Bybit's real hosts are used
(testnet, demo or mainnet as chosen by ``BYBIT_ENV``).
"""

from __future__ import annotations

import os
from typing import Any

from dotenv import load_dotenv
from pybit import unified_trading

ENVIRONMENTS = ("testnet", "demo", "mainnet")
SECRET_VARIABLES = ("BYBIT_API_KEY", "BYBIT_API_SECRET", "TELEGRAM_BOT_TOKEN")

load_dotenv(override=False)


def bybit_env() -> str:
    """BYBIT_ENV: testnet (default), demo or mainnet."""
    env = os.environ.get("BYBIT_ENV", "testnet").strip().lower() or "testnet"
    if env not in ENVIRONMENTS:
        raise ValueError(f"BYBIT_ENV = {env!r} is not one of {', '.join(ENVIRONMENTS)}")
    return env


def redact(text: str) -> str:
    """``text`` with every configured secret replaced by ***."""
    for name in SECRET_VARIABLES:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def make_http(env: str | None = None, api_key: str | None = None, api_secret: str | None = None,
              timeout: float = 10.0, recv_window: int = 5000, **kwargs: Any) -> unified_trading.HTTP:
    """A pybit HTTP session for ``env``, redirected to BYBIT_REST_URL when that is set."""
    env = env or bybit_env()
    session = unified_trading.HTTP(testnet=env == "testnet", demo=env == "demo",
                                   api_key=api_key or os.environ.get("BYBIT_API_KEY") or None,
                                   api_secret=api_secret or os.environ.get("BYBIT_API_SECRET") or None,
                                   timeout=timeout, recv_window=recv_window, **kwargs)
    override = os.environ.get("BYBIT_REST_URL", "").strip()
    if override:
        session.endpoint = override.rstrip("/")
    return session


class OverridableWebSocket(unified_trading.WebSocket):
    """pybit's WebSocket whose connections (reconnects included) go to BYBIT_WS_URL when it is set.

    pybit builds ``wss://<host>/v5/public/{category}`` or ``.../v5/private`` and passes it to
    ``_connect`` on every (re)connection; this keeps the ``/v5/...`` path on the new base.
    """

    def _connect(self, url: str) -> None:
        override = os.environ.get("BYBIT_WS_URL", "").strip()
        if override and "/v5/" in url:
            url = override.rstrip("/") + url[url.index("/v5/"):]
        super()._connect(url)


def make_ws(channel_type: str, env: str | None = None, api_key: str | None = None, api_secret: str | None = None,
            **kwargs: Any) -> OverridableWebSocket:
    """A pybit WebSocket on ``channel_type`` (linear, private, ...) honouring BYBIT_WS_URL."""
    env = env or bybit_env()
    if channel_type == "private":
        kwargs.setdefault("api_key", api_key or os.environ.get("BYBIT_API_KEY"))
        kwargs.setdefault("api_secret", api_secret or os.environ.get("BYBIT_API_SECRET"))
    return OverridableWebSocket(channel_type=channel_type, testnet=env == "testnet", demo=env == "demo", **kwargs)
