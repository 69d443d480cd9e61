"""A fake Telegram Bot API on 127.0.0.1 for the watchdog's tests.

It answers getMe, sendMessage, editMessageText and getUpdates (long polling) the way Telegram
does, errors included (401 Unauthorized for a wrong token, 400 "chat not found", 400 "can't
parse entities" for HTML that Telegram would refuse), and lets a test queue faults (5xx, 429
with retry_after), take the server down (connections refused) and bring it back on the same
port, and play a user writing to the bot.

By hand, to try the watchdog without a real bot (see the README's watchdog section):

    python tests/fake_telegram.py --port 8081     # prints the three variables to export for watchdog.py

It prints every message the watchdog sends, and each line typed into it (/status, /pnl 30 ...) is
sent to the watchdog as the chat's user.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TAG = re.compile(r"<(/?)([a-zA-Z-]+)(\s[^<>]*)?>")
ENTITY = re.compile(r"&(lt|gt|amp|quot|#[0-9]+|#x[0-9a-fA-F]+);")
ALLOWED_TAGS = {"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "code", "pre", "a", "tg-spoiler",
                "blockquote"}


def html_to_plain(text: str) -> str:
    """The text Telegram would show for HTML parse mode, or ValueError with Telegram's complaint."""
    out: list[str] = []
    open_tags: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "<":
            match = TAG.match(text, i)
            if not match or match.group(2).lower() not in ALLOWED_TAGS:
                raise ValueError(f"Bad Request: can't parse entities: unsupported start tag at byte offset {i}")
            name = match.group(2).lower()
            if match.group(1):
                if not open_tags or open_tags.pop() != name:
                    raise ValueError(f"Bad Request: can't parse entities: unexpected end tag at byte offset {i}")
            else:
                open_tags.append(name)
            i = match.end()
        elif char == "&":
            match = ENTITY.match(text, i)
            if not match:
                raise ValueError(f"Bad Request: can't parse entities: can't find end of the entity at offset {i}")
            out.append(html.unescape(match.group(0)))
            i = match.end()
        elif char == ">":
            raise ValueError(f"Bad Request: can't parse entities: unexpected '>' at byte offset {i}")
        else:
            out.append(char)
            i += 1
    if open_tags:
        raise ValueError(f"Bad Request: can't parse entities: can't find end tag corresponding to <{open_tags[-1]}>")
    return "".join(out)


class FakeTelegram:
    """The fake server; use as a context manager. ``messages`` holds every accepted message."""

    def __init__(self, token: str = "123456:TEST-secret-token", chats: tuple[str, ...] = ("1001",)) -> None:
        self.token = token
        self.chats = {str(c) for c in chats}
        self.messages: list[dict[str, Any]] = []
        self.calls: list[tuple[float, str, int]] = []      # (monotonic time, method, HTTP status) of each answer
        self.faults: list[tuple[int, float | None]] = []   # queued error answers for sendMessage/editMessageText
        self.updates: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self._next_update = 1

    @property
    def url(self) -> str:
        """The base URL to put in TELEGRAM_API_URL."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeTelegram:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Listen (on the previous port after a stop, so clients find it again)."""
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop listening: clients get connection refused until start()."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        with self.cond:
            self.cond.notify_all()

    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """The next ``count`` sendMessage/editMessageText calls answer ``status`` (429 with retry_after)."""
        with self.cond:
            self.faults.extend([(status, retry_after)] * count)

    def user_message(self, chat_id: str | int, text: str) -> None:
        """A user in ``chat_id`` writes ``text`` to the bot."""
        with self.cond:
            self.updates.append({"update_id": self._next_update, "message": {
                "message_id": 1000 + self._next_update, "date": int(time.time()), "text": text,
                "chat": {"id": int(chat_id), "type": "private"}, "from": {"id": int(chat_id), "is_bot": False}}})
            self._next_update += 1
            self.cond.notify_all()

    def plain(self, chat_id: str | None = None) -> list[str]:
        """The texts as a user sees them (tags removed, entities decoded), in order."""
        with self.cond:
            return [m["plain"] for m in self.messages if chat_id is None or m["chat_id"] == str(chat_id)]

    def wait_for(self, predicate: Callable[[FakeTelegram], bool], timeout: float = 20.0) -> bool:
        """Block until ``predicate(self)`` holds after a message arrives (or ``timeout`` seconds pass)."""
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    # --- the methods ---------------------------------------------------------------------------
    def answer(self, token: str, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of one Bot API call."""
        if token != self.token:
            return _error(401, "Unauthorized")
        if method == "getMe":
            return 200, {"ok": True, "result": {"id": 123456, "is_bot": True, "username": "grtr_test_bot"}}
        if method == "getUpdates":
            return 200, {"ok": True, "result": self._updates(params)}
        if method not in ("sendMessage", "editMessageText"):
            return _error(404, "Not Found")
        with self.cond:
            if self.faults:
                status, retry_after = self.faults.pop(0)
                if status == 429:
                    return _error(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})
                return _error(status, "Bad Gateway" if status >= 500 else "Bad Request")
            chat_id = str(params.get("chat_id"))
            if chat_id not in self.chats:
                return _error(400, "Bad Request: chat not found")
            text = str(params.get("text") or "")
            if not text:
                return _error(400, "Bad Request: message text is empty")
            if len(text) > 4096:
                return _error(400, "Bad Request: message is too long")
            try:
                plain = html_to_plain(text) if params.get("parse_mode") == "HTML" else text
            except ValueError as exc:
                return _error(400, str(exc))
            if method == "editMessageText":
                return self._edit(chat_id, params.get("message_id"), text, plain)
            message = {"message_id": len(self.messages) + 1, "chat_id": chat_id, "text": text, "plain": plain,
                       "silent": bool(params.get("disable_notification")), "time": time.monotonic(), "edits": 0}
            self.messages.append(message)
            self.cond.notify_all()
            return 200, {"ok": True, "result": {"message_id": message["message_id"], "chat": {"id": int(chat_id)},
                                                "text": plain}}

    def _edit(self, chat_id: str, message_id: Any, text: str, plain: str) -> tuple[int, dict[str, Any]]:
        found = [m for m in self.messages if m["message_id"] == message_id and m["chat_id"] == chat_id]
        if not found:
            return _error(400, "Bad Request: message to edit not found")
        message = found[0]
        if message["text"] == text:
            return _error(400, "Bad Request: message is not modified")
        message.update(text=text, plain=plain, edits=message["edits"] + 1)
        self.cond.notify_all()
        return 200, {"ok": True, "result": {"message_id": message_id, "text": plain}}

    def _updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        with self.cond:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]  # confirmed ones are forgotten
            self.cond.wait_for(lambda: self.updates or self.server is None, timeout)
            return list(self.updates)


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeTelegram

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "json" in (self.headers.get("Content-Type") or ""):
            params = json.loads(raw or b"{}")
        else:
            params = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        self._dispatch(params)

    def do_GET(self) -> None:
        self._dispatch({k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()})

    def _dispatch(self, params: dict[str, Any]) -> None:
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) != 2 or not parts[0].startswith("bot"):
            status, body = _error(404, "Not Found")
            method = "?"
        else:
            method = parts[1]
            status, body = self.server_fake.answer(parts[0][3:], method, params)
        with self.server_fake.cond:  # recorded before answering: a client that has its answer finds its call
            self.server_fake.calls.append((time.monotonic(), method, status))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left (a watchdog stopped with a long poll in flight)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output stays readable."""


def _error(status: int, description: str, parameters: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return status, body


def main(argv: list[str] | None = None) -> int:
    """Serve the fake on 127.0.0.1:--port until Ctrl-C: messages printed, typed lines sent as the user's."""
    parser = argparse.ArgumentParser(description="A fake Telegram Bot API on 127.0.0.1, to try watchdog.py by hand.")
    parser.add_argument("--port", type=int, default=8081, help="port to listen on, 0 for any free one "
                                                                "(default: %(default)s)")
    parser.add_argument("--token", default="123456:FAKE-token", help="the bot token it accepts (default: %(default)s)")
    parser.add_argument("--chat", default="1001", help="the chat id it knows (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a port number (0 to 65535)", file=sys.stderr)
        return 2
    fake = FakeTelegram(args.token, (args.chat,))
    fake.port = args.port
    try:
        fake.start()
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"fake Telegram on {fake.url}; for watchdog.py:\n  export TELEGRAM_API_URL={fake.url} "
          f"TELEGRAM_BOT_TOKEN={args.token} TELEGRAM_CHAT_ID={args.chat}\n"
          "Type a command (/status, /pnl 30, /help) and Enter to send it as the chat's user; Ctrl-C ends.",
          flush=True)
    threading.Thread(target=_print_messages, args=(fake,), daemon=True).start()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill PID ends it as Ctrl-C does
    signal.signal(signal.SIGINT, signal.default_int_handler)   # even when started in the background
    try:
        for line in sys.stdin:
            if line.strip():
                fake.user_message(args.chat, line.strip())
        threading.Event().wait()  # stdin closed: keep serving until Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


def _print_messages(fake: FakeTelegram) -> None:
    """Print each new message, and each edit of one (merged alerts), as the user would see it."""
    seen: dict[int, int] = {}
    while True:
        with fake.cond:
            fake.cond.wait_for(lambda: any(seen.get(m["message_id"]) != m["edits"] for m in fake.messages), 1.0)
            fresh = [dict(m) for m in fake.messages if seen.get(m["message_id"]) != m["edits"]]
        for message in fresh:
            edited = " (edited)" if message["message_id"] in seen else ""
            seen[message["message_id"]] = message["edits"]
            print(f"--- message {message['message_id']}{edited}{' (silent)' if message['silent'] else ''}\n"
                  f"{message['plain']}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
