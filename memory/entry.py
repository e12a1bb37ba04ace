"""``pmem``, the console script: a plain ``pmem ask`` through a memory server, answered with the standard library
alone; every other command line goes to :mod:`memory.cli` (typer) unchanged.

Before, a remote ``pmem ask`` spent as long starting as the server took to its first token: typer with pydantic,
rich and httpx take ~0.2 s to import on this 2-core CPU. This module imports ``http.client``, ``json`` and
:mod:`memory.cli_shared` (~0.04 s) and reads the server's answer stream (server-sent events) itself. It takes
exactly this shape::

    pmem [--url URL] ask QUESTION [--namespace/-n NS] [--mode MODE] [--k K] [--max-new-tokens N]

(options in any order, ``--opt=value`` too) with the server in ``--url``, ``PMEM_URL`` or ``PMEM_SERVER_URL``, a
plain ``http://`` URL and no proxy variables. Anything else (``--json``, ``--help``, an unknown option, an
``https`` server, no server at all) is :mod:`memory.cli`'s, with the same ``sys.argv``. The fast path prints what
the typer command prints: the answer's pieces on stdout as they arrive, then ``mode M: reason (N ms)`` on stderr;
``error: MESSAGE`` on stderr and exit 2 for a refused key, an unreachable server or a server error (messages
worded as :class:`memory.client.RemoteMemory` words them, keys never shown); exit 1 and the known namespaces when
the namespace does not exist; Ctrl-C exits 130 and a closed stdout 1, quietly. Keep it in step with ``ask`` in
:mod:`memory.cli` (tests/test_cli_fast.py compares the two).

>>> parse_ask(["ask", "What is the code?", "-n", "hr", "--k=2"], {"PMEM_URL": "http://127.0.0.1:8000/"})
AskCall(url='http://127.0.0.1:8000', question='What is the code?', namespace='hr', mode='auto', k=2, max_new_tokens=64)
>>> parse_ask(["ask", "What is the code?", "--json"], {"PMEM_URL": "http://127.0.0.1:8000"}) is None  # typer's
True
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from memory.cli_shared import ASK_K, ASK_MAX_NEW_TOKENS, ASK_MODE, scrub

TIMEOUT_S = 300.0  # per read, as RemoteMemory's default timeout
_INT = re.compile(r"[+-]?[0-9]+")
_PROXY_VARS = ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")  # httpx would send through them: typer's
_OPTIONS = {"--namespace": "namespace", "-n": "namespace", "--mode": "mode", "--k": "k", "--max-new-tokens": "tokens"}


class AskCall(NamedTuple):  # not a dataclass: importing dataclasses costs ~10 ms of the start
    """One remote ``pmem ask``: the server (no trailing ``/``), the question and the query's options."""

    url: str
    question: str
    namespace: str | None
    mode: str
    k: int
    max_new_tokens: int


def parse_ask(args: Sequence[str], env: Mapping[str, str]) -> AskCall | None:
    """The :class:`AskCall` of a command line (``sys.argv[1:]``) the fast path answers, or None: typer's.

    >>> env = {"PMEM_URL": "http://127.0.0.1:8000"}
    >>> parse_ask(["--url", "http://h:1", "ask", "--mode", "retrieval", "q"], env).url
    'http://h:1'
    >>> [parse_ask(a, env) for a in (["ask", "q", "--bogus"], ["ask"], ["ask", "q", "--k", "two"], ["ls"])]
    [None, None, None, None]
    >>> parse_ask(["ask", "q"], {"PMEM_URL": ""}) is None  # in-process
    True
    """
    i, url = 0, None
    while i < len(args) and args[i] != "ask":  # the group's options: --url only
        name, value, i = _option(args, i)
        if name != "--url" or value is None:
            return None
        url = value
    if url is None:  # click reads the first non-empty one of these
        url = env.get("PMEM_URL") or env.get("PMEM_SERVER_URL")
    if not url or not _plain_http(url) or any(env.get(v) for v in _PROXY_VARS):
        return None
    key = env.get("PMEM_API_KEY") or ""
    if not (key.isascii() and key.isprintable()):  # a header http.client refuses: typer's (httpx says why)
        return None
    values: dict[str, str] = {}
    question = None
    i += 1
    while i < len(args):
        if not args[i].startswith("-") or args[i] == "-":
            if question is not None:
                return None
            question, i = args[i], i + 1
            continue
        name, value, i = _option(args, i)
        if name not in _OPTIONS or value is None:
            return None
        values[_OPTIONS[name]] = value  # the last one wins, as in click
    numbers = [values.get("k", str(ASK_K)), values.get("tokens", str(ASK_MAX_NEW_TOKENS))]
    if question is None or not all(_INT.fullmatch(n) for n in numbers):
        return None
    return AskCall(
        url=url.rstrip("/"),
        question=question,
        namespace=values.get("namespace"),
        mode=values.get("mode", ASK_MODE),
        k=int(numbers[0]),
        max_new_tokens=int(numbers[1]),
    )


def _option(args: Sequence[str], i: int) -> tuple[str, str | None, int]:
    """``(name, value, next index)`` of the option at ``args[i]`` (``--opt value`` or ``--opt=value``)."""
    name, eq, value = args[i].partition("=")
    if eq and name.startswith("--"):
        return name, value, i + 1
    if i + 1 < len(args):
        return args[i], args[i + 1], i + 2
    return args[i], None, i + 1


def _plain_http(url: str) -> bool:
    """Whether ``url`` is ``http://host[:port][/path]``: what the fast path connects to without TLS or auth."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return (
        parts.scheme == "http"
        and bool(parts.hostname)
        and not parts.username
        and not parts.query
        and not parts.fragment
    )


# ---------------------------------------------------------------------------- the call
class _Failed(Exception):
    """An error to print as ``error: MESSAGE`` (exit 2)."""


class _Server:
    """One keep-alive connection to the server, with RemoteMemory's key header and error wording."""

    def __init__(self, url: str, key: str | None) -> None:
        parts = urlsplit(url)
        self.url, self.prefix = url, parts.path.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=TIMEOUT_S)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, **headers: str) -> Any:
        """The response to ``method path`` (status < 400), or :class:`_Failed` worded as RemoteMemory words it."""
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        sent = {**self.headers, **headers, **({"Content-Type": "application/json"} if data is not None else {})}
        if self.conn.sock is None:
            try:
                self.conn.connect()
            except TimeoutError:
                raise self.unreachable("ConnectTimeout", "timed out") from None
            except OSError as e:
                raise self.unreachable("ConnectError", str(e)) from None
        with self.transport_errors():
            self.conn.request(method, self.prefix + path, body=data, headers=sent)
            r = self.conn.getresponse()
            if r.status >= 400:
                raise _Failed(_error_message(r.status, r.read()))
        return r

    def json(self, method: str, path: str) -> Any:
        r = self.request(method, path)
        with self.transport_errors():
            return json.loads(r.read())

    def events(self, r: http.client.HTTPResponse) -> Iterator[tuple[str, Any]]:
        """The server-sent events of a response: ``(event, parsed JSON data)`` each."""
        event, data = "message", []
        while True:
            with self.transport_errors():
                raw = r.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif not line and data:  # a blank line ends an event
                yield event, json.loads("\n".join(data))
                event, data = "message", []

    @contextmanager
    def transport_errors(self) -> Iterator[None]:
        """Errors while sending or reading, named as httpx names them (what RemoteMemory's messages show)."""
        try:
            yield
        except http.client.RemoteDisconnected:
            raise self.unreachable("RemoteProtocolError", "Server disconnected without sending a response.") from None
        except http.client.IncompleteRead as e:
            got = len(e.partial)
            detail = (
                "incomplete chunked read"
                if e.expected is None
                else f"received {got} bytes, expected {got + e.expected}"
            )
            raise self.unreachable(
                "RemoteProtocolError", f"peer closed connection without sending complete message body ({detail})"
            ) from None
        except http.client.HTTPException as e:
            raise self.unreachable("RemoteProtocolError", str(e)) from None
        except TimeoutError:
            raise self.unreachable("ReadTimeout", "timed out") from None
        except OSError as e:
            raise self.unreachable("ReadError", str(e)) from None

    def unreachable(self, kind: str, detail: str) -> _Failed:
        return _Failed(f"cannot reach the memory server at {self.url}: {kind}: {detail}")


def _error_message(status: int, body: bytes) -> str:
    """The message of an error response: its ``{"error": {"message"}}``, else ``HTTP <status>: <body>``."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {body.decode(errors='replace')[:200]}"


def _stream_answer(server: _Server, r: http.client.HTTPResponse) -> dict[str, Any]:
    """Write the answer's pieces to stdout as the server sends them; return the final answer's JSON."""
    for event, payload in server.events(r):
        if event == "token":
            sys.stdout.write(payload["text"])
            sys.stdout.flush()
        elif event == "answer":
            sys.stdout.write("\n")
            sys.stdout.flush()
            with server.transport_errors():
                r.read()  # the end of the stream: the connection serves the next request
            return dict(payload)
        elif event == "error":
            raise _Failed(str(payload["message"]))
    raise _Failed("the server ended the answer stream without a final answer")


def run_ask(call: AskCall, env: Mapping[str, str]) -> int:
    """Answer ``call`` as ``pmem ask`` does through a server; returns the exit code."""
    try:
        return _ask(call, env)
    except _Failed as e:
        _stderr("error:", scrub(str(e)), style="31")
        return 2


def _ask(call: AskCall, env: Mapping[str, str]) -> int:
    from memory.errors import ValidationError
    from memory.names import validate_namespace

    try:
        default_ns = validate_namespace(env.get("PMEM_NAMESPACE") or "default")
    except ValidationError as e:
        raise _Failed(str(e)) from None
    server = _Server(call.url, env.get("PMEM_API_KEY") or None)
    namespace = call.namespace or default_ns
    body = {
        "question": call.question,
        "mode": call.mode,
        "k": call.k,
        "max_new_tokens": call.max_new_tokens,
        "log": True,
        "stream": True,
    }
    r = server.request("POST", f"/v1/namespaces/{quote(namespace, safe='')}/query", body, Accept="text/event-stream")
    answer = _stream_answer(server, r)
    known = server.json("GET", "/v1/namespaces")["namespaces"] if answer["mode"] == "abstain" else None
    total_ms = (answer.get("timings_ms") or {}).get("total_ms", 0)
    _stderr(f"mode {answer['mode']}: {answer['reason']} ({total_ms:.0f} ms)", style="2")
    if known is not None and namespace not in known:
        _stderr(f"namespaces: {', '.join(known) or '(none yet)'}")
        return 1
    return 0


def _stderr(head: str, rest: str = "", *, style: str | None = None) -> None:
    """A line on stderr; ``head`` in ``style`` (an SGR code) on a colour terminal, as rich prints it."""
    colour = style and sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
    line = f"\x1b[{style}m{head}\x1b[0m" if colour else head
    sys.stderr.write(line + (f" {rest}" if rest else "") + "\n")
    sys.stderr.flush()


def main() -> None:
    """The ``pmem`` console script."""
    call = parse_ask(sys.argv[1:], os.environ)
    if call is None:
        from memory.cli import main as typer_main

        typer_main()
        return
    try:
        code = run_ask(call, os.environ)
    except KeyboardInterrupt:  # Ctrl-C: exit 130 quietly, as typer does
        code = 130
    except BrokenPipeError:  # `pmem ask ... | head -c 10`: exit 1 quietly, as click does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush goes there
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
