"""Bybit clients for GrTr: pybit sessions whose endpoints can be redirected, retries, and secret redaction.

``BYBIT_REST_URL`` and ``BYBIT_WS_URL`` (environment or ``.env``) point every pybit client GrTr
makes at another host, such as a local ``bybit_sim``; unset, Bybit's real hosts are used
(testnet, demo or mainnet as chosen by ``BYBIT_ENV``). Demo trading has its own REST host and
private stream, and the public stream of mainnet (docs: v5/demo.mdx).
"""

from __future__ import annotations

import logging
import os
import random
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from dotenv import dotenv_values, find_dotenv, load_dotenv
from pybit import _helpers, unified_trading
from pybit.exceptions import FailedRequestError, InvalidRequestError

ENVIRONMENTS = ("testnet", "demo", "mainnet")
SECRET_VARIABLES = ("BYBIT_API_KEY", "BYBIT_API_SECRET", "TELEGRAM_BOT_TOKEN")
# retCodes worth another attempt (docs: v5/error.mdx): 10000 server timeout, 10002 the request time outside the
# recv_window (the clock is resynced), 10006 the API rate limit, 10016 server error or restarting
RETRYABLE_CODES = {10000: "server timeout", 10002: "request timestamp outside recv_window", 10006: "rate limit",
                   10016: "server error"}
UNKNOWN_OUTCOME_CODES = (10000, 10016)  # the request may have acted: an order is looked up before it is sent again
IP_BAN_SECONDS = 600.0  # docs: v5/rate-limit/rate-limit.mdx: after HTTP 403 wait at least 10 minutes
DUPLICATE_ORDER = 110072  # orderLinkId already used: the order went through before
logger = logging.getLogger("grtr.api")

# The .env python-dotenv finds (searched upwards from this file's folder); its path is what the
# permission check of check_api_key looks at. None: there is none, the keys come from the environment.
_FOUND_DOTENV = find_dotenv()
DOTENV_FILE: Path | None = Path(_FOUND_DOTENV).resolve() if _FOUND_DOTENV else None
if DOTENV_FILE is not None:
    load_dotenv(DOTENV_FILE, override=False)


def key_source(name: str = "BYBIT_API_KEY") -> str:
    """Where the variable ``name`` was read from: the .env file's path, or the environment."""
    if DOTENV_FILE is not None and name in os.environ and dotenv_values(DOTENV_FILE).get(name) == os.environ[name]:
        return str(DOTENV_FILE)
    return "the environment"


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
    """A pybit HTTP session for ``env``, redirected to BYBIT_REST_URL when that is set.

    pybit's own retries are switched off (one attempt; its retry-code set cannot be empty, so it
    holds only 0, the success code that never reaches it): :func:`api_retry_wrapper` retries, so
    that an order is looked up by its orderLinkId before it is ever sent again.
    """
    env = env or bybit_env()
    kwargs.setdefault("max_retries", 1)
    kwargs.setdefault("retry_codes", {0})
    session = unified_trading.HTTP(testnet=env == "testnet", demo=env == "demo",
                                   api_key=api_key or os.environ.get("BYBIT_API_KEY") or None,
                                   api_secret=api_secret or os.environ.get("BYBIT_API_SECRET") or None,
                                   timeout=timeout, recv_window=recv_window, **kwargs)
    override = os.environ.get("BYBIT_REST_URL", "").strip()
    if override:
        session.endpoint = override.rstrip("/")
        if override.startswith(("http://127.0.0.1", "http://localhost")):
            session.client.trust_env = False  # a local sim: no proxy lookup on every request (a third of its time)
    return session


WS_CONNECT_SECONDS = 20.0  # how long a subscription waits for its socket to open


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

    # pybit sends a subscription before it records the request and the topic's callback, so a server
    # that answers within microseconds (a local one) beats the record and pybit drops the socket on
    # a KeyError. The answer waits (at most a second) for the record instead.
    # The private stream's answer carries no req_id (docs: v5/websocket/wss-authentication.mdx): then pybit
    # takes the first subscription on record, which must exist by then.
    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        """pybit's subscribe, which waits without end for the socket to open (e.g. a private stream whose
        auth fails, or no network): bounded here, ExchangeUnavailable after WS_CONNECT_SECONDS."""
        _wait_for(self.is_connected, WS_CONNECT_SECONDS)
        if not self.is_connected():
            self.exit()
            stream = self.WS_URL.rsplit("/v5/", 1)[-1]  # public/linear or private
            raise ExchangeUnavailable(f"the {stream} WebSocket did not connect within {WS_CONNECT_SECONDS:g} s")
        super().subscribe(*args, **kwargs)

    def _process_subscription_message(self, message: dict[str, Any]) -> None:
        req_id = message.get("req_id")
        _wait_for(lambda: req_id in self.subscriptions if req_id else bool(self.subscriptions))
        super()._process_subscription_message(message)

    def _process_normal_message(self, message: dict[str, Any]) -> None:
        _wait_for(lambda: message.get("topic") in self.callback_directory)
        super()._process_normal_message(message)


def _wait_for(ready: Callable[[], bool], seconds: float = 1.0) -> None:
    deadline = time.monotonic() + seconds
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.001)


def ws_hosts(env: str, channel_type: str) -> dict[str, bool]:
    """pybit's host flags for a stream: demo trading serves only private streams; its public data is
    mainnet's (docs: v5/demo.mdx: wss://stream-demo.bybit.com private only, public on wss://stream.bybit.com)."""
    demo = env == "demo" and channel_type == "private"
    return {"testnet": env == "testnet", "demo": demo}


def make_ws(channel_type: str, env: str | None = None, api_key: str | None = None, api_secret: str | None = None,
            **kwargs: Any) -> OverridableWebSocket:
    """A pybit WebSocket on ``channel_type`` (linear, private, ...) honouring BYBIT_WS_URL."""
    env = env or bybit_env()
    if channel_type == "private":
        kwargs.setdefault("api_key", api_key or os.environ.get("BYBIT_API_KEY"))
        kwargs.setdefault("api_secret", api_secret or os.environ.get("BYBIT_API_SECRET"))
    return OverridableWebSocket(channel_type=channel_type, **ws_hosts(env, channel_type), **kwargs)


# ----------------------------------------------------------------------------------------------
# Retries
# ----------------------------------------------------------------------------------------------
class ExchangeUnavailable(RuntimeError):
    """Bybit did not answer a call after every retry (network, HTTP 5xx/429/403, rate limit, busy)."""


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter and a cap; ``sleep`` and ``rng`` are replaceable for tests.

    ``ip_ban_seconds``: the pause after an HTTP 403 (Bybit's IP ban lifts after 10 minutes); 0 gives
    up at the first 403 instead.
    """

    attempts: int = 8
    base_seconds: float = 0.1
    max_seconds: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    ip_ban_seconds: float = IP_BAN_SECONDS

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): base·2^attempt, capped, jittered 50-100%."""
        return min(self.max_seconds, self.base_seconds * 2 ** attempt) * (0.5 + self.rng.random() / 2)


DEFAULT_RETRY = RetryPolicy()
_clock_offset_ms = 0


def _synced_timestamp() -> int:
    return int(time.time() * 1000) + _clock_offset_ms


def resync_clock(message: str) -> int:
    """Adopt the server clock from a 10002 answer (``req_timestamp[..],server_timestamp[..]``); returns the offset.

    pybit stamps every signed request (and the private WebSocket's auth) with
    ``_helpers.generate_timestamp``; it is replaced once by a version that adds the offset.
    """
    global _clock_offset_ms
    found = re.search(r"req_timestamp\[(\d+)\].*?server_timestamp\[(\d+)\]", message)
    if found:
        _clock_offset_ms += int(found.group(2)) - int(found.group(1))
        _helpers.generate_timestamp = _synced_timestamp
        logger.warning("local clock off by %d ms from Bybit's; signing with the server's time", _clock_offset_ms)
    return _clock_offset_ms


def retry_class(error: BaseException) -> str | None:
    """Why ``error`` is worth retrying ("network", "http 5xx", a retCode's meaning), or None for a business error."""
    if isinstance(error, requests.Timeout):
        return "timeout"
    if isinstance(error, requests.ConnectionError):
        return "network"
    if isinstance(error, FailedRequestError):
        # 5xx from Bybit or a gateway, 429 system frequency protection, 403 an IP ban (docs: v5/error.mdx HTTP
        # codes); 409 is pybit's "answer was not JSON" (a truncated response)
        code = error.status_code
        return f"HTTP {code}" if code >= 500 or code in (409, 429, 403) else None
    if isinstance(error, InvalidRequestError) and error.status_code in RETRYABLE_CODES:
        return f"retCode {error.status_code} ({RETRYABLE_CODES[error.status_code]})"
    return None


def _rate_limit_wait(error: InvalidRequestError, policy: RetryPolicy, attempt: int) -> float:
    """Seconds until the X-Bapi-Limit-Reset-Timestamp Bybit sent with a 10006 (backoff without it)."""
    headers = getattr(error, "resp_headers", None) or {}
    reset = headers.get("X-Bapi-Limit-Reset-Timestamp")
    if reset is None:
        return policy.delay(attempt)
    return min(policy.max_seconds, max(0.0, (int(reset) - _synced_timestamp()) / 1000))


def api_retry_wrapper(call: Callable[[], Any], what: str, policy: RetryPolicy | None = None,
                      lookup: Callable[[], Any] | None = None) -> Any:
    """``call()`` with retries of transient failures only; business errors are raised at once.

    Retried: timeouts, connection errors, HTTP 5xx and 429, HTTP 403 (after ``ip_ban_seconds``: the
    IP ban of docs v5/rate-limit/rate-limit.mdx), retCode 10000, 10002 (the clock is resynced),
    10006 (waits for the rate limit's reset time) and 10016. Never retried: every other
    InvalidRequestError (insufficient balance, bad parameters, permission denied...), which the
    caller reports.

    ``lookup`` makes an order creation idempotent: after any failure whose outcome is unknown
    (timeout, network, 5xx, 10000, 10016) it is asked whether the order exists (by its orderLinkId)
    before the call is repeated, and a 110072 (duplicate orderLinkId) answer means the order went through.
    When the order exists the answer is ``{"retCode": 0, "result": <the order>, "recovered": True}``.
    Raises ExchangeUnavailable once the attempts are spent.
    """
    policy = policy or DEFAULT_RETRY
    reason = ""
    for attempt in range(policy.attempts):
        try:
            return call()
        except (InvalidRequestError, FailedRequestError, requests.RequestException) as error:
            if lookup is not None and isinstance(error, InvalidRequestError) and error.status_code == DUPLICATE_ORDER:
                logger.info("%s: orderLinkId already used; the order went through before", what)
                return {"retCode": 0, "result": lookup() or {}, "recovered": True}
            reason = retry_class(error)
            if reason is None:
                raise
            if isinstance(error, FailedRequestError) and error.status_code == 403 and policy.ip_ban_seconds <= 0:
                raise ExchangeUnavailable(f"Bybit refused {what} with HTTP 403: the IP is banned for making too many "
                                          "requests (or is in a restricted region); wait 10 minutes") from None
            refused = isinstance(error, FailedRequestError) and error.status_code in (403, 429)
            unknown = not isinstance(error, InvalidRequestError) or error.status_code in UNKNOWN_OUTCOME_CODES
            if lookup is not None and unknown and not refused:
                found = lookup()  # the request may have acted before its answer was lost
                if found:
                    logger.info("%s: %s, but the order exists; not sending it again", what, reason)
                    return {"retCode": 0, "result": found, "recovered": True}
            wait = policy.delay(attempt)
            if isinstance(error, InvalidRequestError) and error.status_code == 10002:
                resync_clock(str(error.message))
            elif isinstance(error, InvalidRequestError) and error.status_code == 10006:
                wait = _rate_limit_wait(error, policy, attempt)
            elif isinstance(error, FailedRequestError) and error.status_code == 403:
                wait = policy.ip_ban_seconds  # every request during the ban extends it: none until it lifts
            if attempt + 1 < policy.attempts:
                logger.warning("%s failed (%s), attempt %d/%d; next in %.2f s", what, reason, attempt + 1,
                               policy.attempts, wait)
                policy.sleep(wait)
            else:
                logger.warning("%s failed (%s), attempt %d/%d; no attempt left", what, reason, attempt + 1,
                               policy.attempts)
    raise ExchangeUnavailable(f"Bybit did not answer {what} after {policy.attempts} attempts (last: {reason})")


# ----------------------------------------------------------------------------------------------
# Security checks
# ----------------------------------------------------------------------------------------------
KEY_EXPIRY_WARNING = timedelta(days=7)


class KeyPermissionError(RuntimeError):
    """The API key must not be used by the trader: it can withdraw funds, or it cannot trade, or it is not the
    account the user confirmed for mainnet."""


class UnknownSymbol(ValueError):
    """The exchange lists no linear instrument of that symbol."""


def key_expiry(expired_at: str) -> datetime | None:
    """``expiredAt`` of user/query-api as a time, or None when the key does not expire.

    An IP-bound key never expires and reports 1970-01-01T00:00:00Z (docs: v5/user/apikey-info.mdx:
    expiredAt applies only to keys with no IP bound or whose password was changed).
    """
    try:
        expiry = datetime.fromisoformat(expired_at)
    except ValueError:
        return None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    return None if expiry.timestamp() <= 0 else expiry


def _expiry_warning(expired_at: str) -> str | None:
    """A warning when ``expiredAt`` (ISO 8601, e.g. 2023-12-22T07:20:25Z) is less than 7 days away."""
    expiry = key_expiry(expired_at)
    if expiry is None:
        return None
    left = expiry - datetime.now(UTC)
    if left <= timedelta(0):
        return f"the API key expired at {expired_at}; create a new one"
    if left < KEY_EXPIRY_WARNING:
        return f"the API key expires at {expired_at} (in {left.total_seconds() / 86400:.1f} days); renew it"
    return None


def confirm_account(info: dict[str, Any], expected_uid: str, variable: str) -> None:
    """Raise KeyPermissionError unless the key's ``info`` (GET /v5/user/query-api) is of account ``expected_uid``.

    The UID is ``userID`` of /v5/user/query-api (docs: v5/user/apikey-info.mdx). The error never shows
    the account's real UID: the confirmation must come from the user, not be copied from an error.
    """
    uid = str(info.get("userID") or "")
    if not uid:
        raise KeyPermissionError("Bybit did not report the account's UID (userID of user/query-api); cannot check "
                                 f"{variable}")
    if expected_uid.strip() != uid:
        raise KeyPermissionError(f"{variable}={expected_uid.strip()!r} is not the UID of the account behind "
                                 "BYBIT_API_KEY; set it to the UID Bybit shows for that account to confirm trading "
                                 "real money on it")


def check_api_key(info: dict[str, Any], env_file: Path | None = DOTENV_FILE) -> list[str]:
    """Vet a key from its GET /v5/user/query-api ``info`` and the ``.env`` holding it; returns warnings.

    Raises KeyPermissionError when the key can withdraw (any permission named Withdraw..., V5 lists
    it as ``permissions["Wallet"] = [..., "Withdraw"]``), is read-only or lacks ContractTrade Order or
    Position (the trader could not place orders or set stops). Warns when the key is not bound to
    IPs (``ips`` empty or ``["*"]``), when its ``expiredAt`` is less than 7 days away (1970 means
    no expiry) and when ``env_file`` (by default the .env the keys were loaded from, wherever it is)
    is readable or writable by group/others. No message ever contains the key or the secret.
    """
    permissions = info.get("permissions") or {}
    withdraw = sorted(f"{group}.{name}" for group, names in permissions.items() for name in names or ()
                      if "withdraw" in str(name).lower())
    if withdraw:
        raise KeyPermissionError(f"the API key has withdrawal permission ({', '.join(withdraw)}); a trading bot "
                                 "must never hold one: create a key without Withdraw")
    if int(info.get("readOnly") or 0) == 1:
        raise KeyPermissionError("the API key is read-only (readOnly = 1): the trader cannot place orders; "
                                 "create a Read-Write key with Contract Orders and Positions permissions")
    missing = [name for name in ("Order", "Position") if name not in (permissions.get("ContractTrade") or ())]
    if missing:
        raise KeyPermissionError(f"the API key lacks the ContractTrade permission {' and '.join(missing)} "
                                 "(docs: v5/user/apikey-info.mdx): the trader could not place orders or set stops; "
                                 "enable Contract Orders and Positions on the key")
    warnings = []
    ips = [ip for ip in info.get("ips") or () if ip and ip.strip()]
    if not ips or "*" in ips:
        warnings.append("the API key is not restricted to IP addresses: bind it to this machine's IP "
                        "(an unbound key also expires after 90 days)")
    if info.get("expiredAt"):
        expiry = _expiry_warning(str(info["expiredAt"]))
        if expiry:
            warnings.append(expiry)
    if env_file is not None and env_file.exists():
        mode = env_file.stat().st_mode & 0o777
        if mode & 0o077:
            warnings.append(f"{env_file} is readable or writable by group/others (mode {mode:o}); "
                            f"run `chmod 600 {env_file}`")
    return [redact(w) for w in warnings]


def _print_redacted(exc_type: type[BaseException], exc: BaseException | None, tb: Any, header: str = "") -> None:
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    print(redact(header + text), end="", file=sys.stderr, flush=True)


def _redacting_thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    _print_redacted(args.exc_type, args.exc_value, args.exc_traceback, f"Exception in thread {name}:\n")


def install_redacting_excepthook() -> None:
    """Print uncaught exceptions (main and other threads) through :func:`redact`.

    pybit's errors can carry the key (retCode 10004: ``error sign! origin_string[...]``) and a
    traceback's text ends up in logs and terminals; the secrets read from the environment at print
    time are replaced by ***.
    """
    sys.excepthook = _print_redacted
    threading.excepthook = _redacting_thread_hook
