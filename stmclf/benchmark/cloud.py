"""STM32Cube.AI Developer Cloud client: the protocol the model zoo's ``stm32ai_dc`` package speaks.

Flow (what ``stmclf benchmark`` does through :func:`cloud_footprint`)::

    versions.json ─► token (cache → refresh → ST SSO login) ─► [STM32MP2: NBG optimisation]
      ─► upload model ─► board list ─► benchmark on the board (poll states) ─► Footprint
                                              └─ fails ─► cloud analyze (poll) ─► Footprint

Login is the SSO authorization-code flow of the reference: GET ``{SSO}/as/authorization.oauth2``
(browser User-Agent, redirects followed), POST the login form (``username``, ``password``,
``_eventId=Login``, hidden ``lt``) to its ``action`` without following redirects, follow the
``Location`` chain by hand until it reaches the callback URL, then exchange the ``code`` at
``{USER_SERVICE}/login/callback``. Tokens are cached in ``~/.stmclf/stm32ai_token.json`` (directory
0700, file 0600), refreshed at ``{USER_SERVICE}/login/refresh`` when expired or on an HTTP 401
(once per call, then a fresh login).

Every request has a timeout per read (``timeout``) and a wall-clock deadline
(``STMCLF_CLOUD_DEADLINE`` seconds, default 300; uploads and downloads get at least
``upload_timeout``) that bounds each attempt as a whole: resolving the host's name, connecting, the
TLS handshake, sending the request, the status line and headers, every redirect and the body (a
name is resolved in a helper thread that the request leaves behind at the deadline: the system
resolver cannot be interrupted). A watchdog thread shuts the
connection down at the deadline (:class:`_Deadline`) and no single read waits past it, so a server
that stalls or drips bytes anywhere in its reply ends in one line naming the endpoint
(:class:`ServiceUnreachable`, not retried) instead of a hang; replies are read in chunks and capped
(JSON replies at 16 MiB, downloaded files at 1 GiB), so an endless body ends the same way instead of
an out-of-memory kill. API calls (authenticated or not: ``versions.json``, the benchmark service's
OpenAPI description, the token refresh) follow redirects only on their URL's own scheme, host and
port; a redirect elsewhere is refused in one line
(:class:`UnexpectedReply`) rather than followed without the token to a reply that is not the
service's (the SSO login, which crosses ST's hosts, is not concerned). Non-standard JSON
(``NaN``, ``Infinity``, overflowing numbers) and JSON nested deeper than Python can decode are
refused as unexpected replies. The login form's password goes only to the scheme, host and port of
the SSO URL (``SSO_URL`` or ST's), over https (plain http only when the SSO URL itself is http on a
loopback host); any other form action is refused with :class:`UnsafeLogin` (exit 2, no fallback).
Connection errors and HTTP 5xx are retried with exponential backoff
(bounded); proxies come from ``HTTP(S)_PROXY``/``NO_PROXY`` (requests' environment handling);
``NO_SSL_VERIFY`` turns certificate checks off. The service URLs can be overridden by the
environment variables the reference reads: ``USER_SERVICE_URL``, ``FILE_SERVICE_URL``,
``BENCHMARK_SERVICE_URL``, ``GENERATE_NBG_SERVICE_URL``, ``STM32AI_SERVICE_URL``,
``VERSIONS_URL``, ``SSO_URL``, ``CLIENTID``, ``CALLBACK_URL`` and ``USE_TEST_ROUTES`` (the QA
service). Credentials come from ``stmai_username``/``stmai_password`` or a prompt; they are never
logged, put in an exception or stored (only the tokens are).

Every failure is a one-line :class:`CloudError` (a :class:`~stmclf.errors.UserError`).
"""
from __future__ import annotations

import contextvars
import functools
import getpass
import html
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union
from urllib.parse import parse_qs, urljoin, urlparse

import requests
import requests.adapters
import urllib3

from stmclf.benchmark.reports import (c_info_device, c_info_macc, c_info_tool, footprint_sums,
                                      memory_pool_usage, to_float, to_int, version_string)
from stmclf.benchmark.results import Footprint
from stmclf.errors import UserError, env_seconds, one_line

log = logging.getLogger("stmclf.benchmark.cloud")

# ---------------------------------------------------------------------------------------------
# Errors


class CloudError(UserError):
    """A Developer Cloud failure; the message is one line and never holds credentials."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message, 400, whole=True))


class ServiceUnreachable(CloudError):
    """No answer from the service (connection refused, DNS, TLS, timeouts) after the retries."""


class LoginError(CloudError):
    """Authentication failed (SSO flow, token exchange, token rejected)."""


class InvalidCredentials(LoginError):
    def __init__(self) -> None:
        super().__init__("STM32Cube.AI Developer Cloud login failed: wrong username or password "
                         "(myST answered 'wrong password'; check stmai_username/stmai_password)")


class BlockedAccount(LoginError):
    def __init__(self) -> None:
        super().__init__("STM32Cube.AI Developer Cloud login failed: the myST account is blocked after 5 "
                         "failed attempts; set a new password with 'Forgot password' on st.com")


class UnsafeLogin(CloudError):
    """The SSO login page asked for the password to be sent somewhere other than the SSO host, or
    not over https: refused, never a silent fallback."""


class UnexpectedReply(CloudError):
    """A reply the client cannot use (redirect loop, non-http redirect, malformed JSON or results).
    A reply too slow or too large is a :class:`ServiceUnreachable` (the benchmark falls back)."""


class UnknownBoard(CloudError):
    """The configured board is not in the service's board list."""


class BenchmarkFailed(CloudError):
    """The benchmark ended in state ``error`` or was rejected."""


class PollTimeout(CloudError):
    """A run did not finish (or stayed in one state) within its timeout."""


# ---------------------------------------------------------------------------------------------
# Endpoints (reference: backend/cloud/endpoints.py)

PROD = {
    "base": "https://stm32ai-cs.st.com/",
    "user_service": "https://stm32ai-cs.st.com/api/user_service",
    "file_service": "https://stm32ai-cs.st.com/api/file",
    "nbg_service": "https://stm32ai-cs.st.com/api/generate_nbg",
    "benchmark_service": "https://stm32ai-cs.st.com/api/benchmark",
    "versions": "https://stm32ai-cs.st.com/assets/versions.json",
    "sso": "https://sso.st.com",
    "client_id": "oidc_prod_client_app_stm32ai",
    "callback": "https://stm32ai-cs.st.com/callback",
}
QA = {
    "base": "https://stm32ai-cs-qa.st.com/",
    "user_service": "https://stm32ai-cs-qa.st.com/api/user_service",
    "file_service": "https://stm32ai-cs-qa.st.com/api/file",
    "nbg_service": "https://stm32ai-cs-qa.st.com/api/generate_nbg",
    "benchmark_service": "https://stm32ai-cs-qa.st.com/api/benchmark",
    "versions": "https://stm32ai-cs-qa.st.com/assets/versions.json",
    "sso": "https://qa-sso.st.com",
    "client_id": "oidc_pre_prod_client_app",
    "callback": "https://stm32ai-cs-qa.st.com/callback",
}
USE_TEST_ROUTES = "USE_TEST_ROUTES"
# Environment variable → Endpoints field, as the reference reads them. (The reference also
# declares BASE_URL and LOGIN_SERVICE_URL but never reads them; neither do we.)
ENV_OVERRIDES = {
    "USER_SERVICE_URL": "user_service",
    "FILE_SERVICE_URL": "file_service",
    "GENERATE_NBG_SERVICE_URL": "nbg_service",
    "BENCHMARK_SERVICE_URL": "benchmark_service",
    "VERSIONS_URL": "versions",
    "SSO_URL": "sso",
    "CLIENTID": "client_id",
    "CALLBACK_URL": "callback",
    "STM32AI_SERVICE_URL": "stm32ai_service",
}


@dataclass(frozen=True)
class Endpoints:
    base: str
    user_service: str
    file_service: str
    nbg_service: str
    benchmark_service: str
    versions: str
    sso: str
    client_id: str
    callback: str
    stm32ai_service: Optional[str] = None      # overrides the versioned {base}api/{version}/stm32ai/
    overridden: tuple[str, ...] = ()            # environment variables that changed a value

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Endpoints":
        env = os.environ if environ is None else environ
        values: dict[str, Any] = dict(QA if env.get(USE_TEST_ROUTES) else PROD)
        overridden = []
        for var, name in ENV_OVERRIDES.items():
            if env.get(var):
                values[name] = env[var]
                overridden.append(var)
        return cls(**values, overridden=tuple(overridden))

    # Routes, built by string concatenation exactly as the reference does (so the STM32Cube.AI
    # service sees ``.../stm32ai//analyze`` — its versioned base ends with "/").
    def stm32ai(self, version: Optional[str]) -> str:
        if self.stm32ai_service:
            return self.stm32ai_service
        return urljoin(self.base, f"/api/{version}/stm32ai/" if version else "/api/stm32ai/")

    def analyze(self, version: Optional[str]) -> str:
        return self.stm32ai(version) + "/analyze"

    def stm32ai_run(self, version: Optional[str], runtime_id: str) -> str:
        return self.stm32ai(version) + f"/run/{runtime_id}"

    @property
    def models(self) -> str:
        return self.file_service + "/files/models"

    @property
    def boards(self) -> str:
        return f"{self.benchmark_service}/boards"

    @property
    def benchmark_openapi(self) -> str:
        return f"{self.benchmark_service}/api"

    def benchmark_trigger(self, board: str, mpu: bool = False) -> str:
        route = f"{self.benchmark_service}/benchmark" + ("/mpu" if mpu else "")
        return f"{route}/{board.lower()}"

    def benchmark_run(self, benchmark_id: str) -> str:
        return f"{self.benchmark_service}/benchmark/{benchmark_id}"


def _where(url: str) -> str:
    """scheme://host/path of a URL (no query: the SSO callback carries the authorization code)."""
    p = urlparse(str(url))
    return f"{p.scheme}://{p.netloc}{p.path}"


DEADLINE_ENV = "STMCLF_CLOUD_DEADLINE"
DEFAULT_DEADLINE = 300.0                 # seconds for one request and its whole reply
MAX_JSON_BYTES = 16 * 2 ** 20            # a JSON reply (board results are a few hundred KiB)
MAX_DOWNLOAD_BYTES = 2 ** 30             # a downloaded file (the STM32MP2 NBG model)
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def default_deadline(environ: Optional[Mapping[str, str]] = None) -> float:
    """``STMCLF_CLOUD_DEADLINE`` (seconds, > 0) or 300."""
    return env_seconds(DEADLINE_ENV, DEFAULT_DEADLINE, error=CloudError, environ=environ)


class _Deadline:
    """The wall-clock bound of one request with its whole reply: at ``seconds`` a watchdog thread
    shuts down (``SHUT_RDWR``, which wakes a blocked read or write at once; a close would not) the
    TCP connections the request used, so a server that stalls or drips bytes, in the TLS handshake,
    status line and headers as much as in the body, cannot hold the client past it.

    Connections reach it through :class:`_WatchedConnection` while it is the thread's current
    deadline (``with deadline:``), each as a duplicate of its socket's file descriptor: the
    duplicate stays valid whatever wraps or replaces the socket object (TLS takes it over) and is
    closed when the request ends, leaving a kept-alive connection as it was."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.at = time.monotonic() + self.seconds
        self.fired = False                       # the watchdog shut the connections down
        self._done = False
        self._sockets: list[socket.socket] = []  # duplicates, closed at the end
        self._lock = threading.Lock()
        self._timer = threading.Timer(self.seconds, self._fire)
        self._timer.daemon = True
        self._token: Any = None

    def __enter__(self) -> "_Deadline":
        self._token = _CURRENT_DEADLINE.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _CURRENT_DEADLINE.reset(self._token)
        with self._lock:
            self._done = True
            for dup in self._sockets:
                dup.close()
            self._sockets = []

    def left(self) -> float:
        return max(self.at - time.monotonic(), 0.0)

    def resolve(self, host: str, port: int, family: int) -> list:
        """``socket.getaddrinfo`` of ``host`` (TCP), given at most what is left of the deadline: the
        system resolver cannot be interrupted, so a name is resolved in a helper thread and a
        resolution still running at the deadline is abandoned to it (:class:`TimeoutError`; the
        thread ends when the resolver gives up). An IP address is converted at once."""
        if _is_ip(host):
            return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        result: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                result["infos"] = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
            except BaseException as exc:  # noqa: BLE001 - handed to the requesting thread
                result["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="stmclf-resolve", daemon=True).start()
        if not done.wait(self.left()):
            raise TimeoutError(f"resolving {host} did not finish within {self.seconds:g} s")
        if "error" in result:
            raise result["error"]
        return result["infos"]

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.at

    def watch(self, sock: Any) -> None:
        """Watch the connection of ``sock`` (a socket, a TLS socket or urllib3's TLS-in-TLS wrapper)."""
        try:
            dup = socket.fromfd(sock.fileno(), getattr(sock, "family", socket.AF_INET), socket.SOCK_STREAM)
        except (OSError, ValueError, AttributeError):  # already closed: nothing to wait on
            return
        with self._lock:
            if self._done:
                dup.close()
                return
            self._sockets.append(dup)
            if self.fired:
                _shutdown(dup)

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            for dup in self._sockets:
                _shutdown(dup)

    def error(self, url: str, what: str, received: Optional[int] = None) -> "ServiceUnreachable":
        got = f"{received:,} bytes of the body received" if received is not None else "no complete reply"
        return ServiceUnreachable(f"unexpected reply from {_where(url)} ({what}): not complete within "
                                  f"{self.seconds:g} s ({got}; {DEADLINE_ENV} sets the limit)")


_CURRENT_DEADLINE: contextvars.ContextVar[Optional[_Deadline]] = contextvars.ContextVar("stmclf_cloud_deadline",
                                                                                        default=None)


def _quiet_after_deadline(record: logging.LogRecord) -> bool:
    """Drops urllib3's "Failed to parse headers" warning (with its traceback) for headers the
    watchdog cut short: the deadline's own one-line error says what happened."""
    deadline = _CURRENT_DEADLINE.get()
    return not (deadline is not None and deadline.fired and str(record.msg).startswith("Failed to parse headers"))


for _name in ("urllib3.connection", "urllib3.connectionpool"):  # urllib3 2.x, 1.26
    logging.getLogger(_name).addFilter(_quiet_after_deadline)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already disconnected
        pass


class _WatchedConnection:
    """Mixed into urllib3's connection classes: each new TCP connection (before any TLS or proxy
    tunnel) and a kept-alive one at each reuse is handed to the thread's current :class:`_Deadline`.
    The host's name is resolved within the deadline too (:meth:`_Deadline.resolve`), then the
    connection is made to the address found, its connect timeout capped at what is left, where
    urllib3 would resolve it without any limit (a resolver that does not answer held a request
    past its deadline). Connection classes with their own ``_new_conn`` (SOCKS) keep it."""

    _resolves_here = False
    """Set on the classes whose ``_new_conn`` is urllib3's plain one (see :func:`_watched_pool`)."""

    def _new_conn(self):
        deadline = _CURRENT_DEADLINE.get()
        if deadline is not None and self._resolves_here:
            sock = self._connect_within(deadline)
        else:
            sock = super()._new_conn()  # type: ignore[misc]
        if deadline is not None:
            deadline.watch(sock)
        return sock

    def _connect_within(self, deadline: _Deadline) -> socket.socket:
        """urllib3's ``HTTPConnection._new_conn`` (the same errors) with the name resolved within the deadline."""
        from urllib3.exceptions import ConnectTimeoutError, LocationParseError, NameResolutionError, NewConnectionError
        from urllib3.util.connection import allowed_gai_family, create_connection

        host = self._dns_host.strip("[]")  # type: ignore[attr-defined]
        try:
            host.encode("idna")
        except UnicodeError:
            raise LocationParseError(f"'{host}', label empty or too long") from None
        try:
            addresses = deadline.resolve(host, self.port, allowed_gai_family())  # type: ignore[attr-defined]
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[attr-defined]
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out ({exc})") from None  # type: ignore[attr-defined]
        timeout = self.timeout if isinstance(self.timeout, (int, float)) else None  # type: ignore[attr-defined]
        error: Optional[OSError] = None
        for *_, address in addresses:
            seconds = _capped(timeout, deadline.left())
            try:
                return create_connection((address[0], address[1]), seconds, source_address=self.source_address,  # type: ignore[attr-defined]
                                         socket_options=self.socket_options)  # type: ignore[attr-defined]
            except socket.timeout as exc:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out. (connect timeout={seconds:g})"  # type: ignore[attr-defined]
                                          ) from exc
            except OSError as exc:
                error = exc
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}")

    def request(self, *args, **kwargs):
        deadline = _CURRENT_DEADLINE.get()
        if deadline is not None and getattr(self, "sock", None) is not None:  # a kept-alive connection
            deadline.watch(self.sock)
        return super().request(*args, **kwargs)  # type: ignore[misc]


@functools.lru_cache(maxsize=None)
def _watched_pool(pool_cls: type) -> type:
    """``pool_cls`` whose connections are :class:`_WatchedConnection` (plain, TLS or SOCKS alike)."""
    if issubclass(pool_cls.ConnectionCls, _WatchedConnection):
        return pool_cls
    from urllib3.connection import HTTPConnection

    plain = getattr(pool_cls.ConnectionCls, "_new_conn", None) is HTTPConnection._new_conn
    conn_cls = type(f"Watched{pool_cls.ConnectionCls.__name__}", (_WatchedConnection, pool_cls.ConnectionCls),
                    {"_resolves_here": plain})
    return type(f"Watched{pool_cls.__name__}", (pool_cls,), {"ConnectionCls": conn_cls})


def _watch_pools(manager: Any) -> Any:
    manager.pool_classes_by_scheme = {scheme: _watched_pool(cls)
                                      for scheme, cls in manager.pool_classes_by_scheme.items()}
    return manager


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with :class:`_WatchedConnection` pools, direct and through proxies."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        _watch_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        return _watch_pools(super().proxy_manager_for(proxy, **proxy_kwargs))


def _pair(timeout: Any) -> tuple[Optional[float], Optional[float]]:
    """(connect, read) seconds of a requests timeout (a number or a pair; None: no limit)."""
    return tuple(timeout) if isinstance(timeout, (tuple, list)) else (timeout, timeout)  # type: ignore[return-value]


def _capped(seconds: Optional[float], left: float) -> float:
    return left if seconds is None else min(float(seconds), left)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, Optional[int]]:
    """(scheme, host, port) of a URL, lower-cased, the default port filled in."""
    p = urlparse(url)
    scheme = p.scheme.lower()
    try:
        port = p.port
    except ValueError:
        return scheme, "?", None
    return scheme, (p.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def _strict_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} overflows")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _without_queries(text: str) -> str:
    """A message without URL query strings (an SSO redirect carries the authorization code)."""
    return one_line(re.sub(r"\?[^\s'\"]*", "", text), 200)


def decode_json(data: bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no overflowing numbers; too deep nesting is a ValueError."""
    try:
        return json.loads(data, parse_float=_strict_float, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# ---------------------------------------------------------------------------------------------
# Token cache


def default_token_path() -> Path:
    return Path.home() / ".stmclf" / "stm32ai_token.json"


class TokenCache:
    """Tokens per user-service URL in one JSON file (directory 0700, file 0600, atomic writes)."""

    def __init__(self, path: Union[str, Path, None] = None) -> None:
        self.path = Path(path) if path else default_token_path()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.warning("Ignoring the unreadable token cache %s", self.path)
            return {}
        return data if isinstance(data, dict) and isinstance(data.get("tokens"), dict) else {}

    def load(self, service: str) -> Optional[dict]:
        token = self._read().get("tokens", {}).get(service)
        return token if isinstance(token, dict) and token.get("access_token") else None

    def save(self, service: str, token: dict) -> None:
        data = self._read() or {"version": 1, "tokens": {}}
        data["tokens"][service] = token
        self._write(data)

    def clear(self, service: Optional[str] = None) -> None:
        data = self._read()
        if not data:
            return
        if service is None:
            data["tokens"] = {}
        else:
            data["tokens"].pop(service, None)
        self._write(data)

    def _write(self, data: dict) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.chmod(directory, 0o700)
        except OSError:  # pragma: no cover - directory owned by someone else
            pass
        tmp = directory / f".{self.path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------------------------------------
# Credentials


class Credentials:
    """Username and password; ``repr``/``str`` never show them."""

    __slots__ = ("_username", "_password", "source")

    def __init__(self, username: str, password: str, source: str = "explicit") -> None:
        self._username = username
        self._password = password
        self.source = source  # "env", "prompt", "stdin" or "explicit"

    @property
    def username(self) -> str:
        return self._username

    @property
    def password(self) -> str:
        return self._password

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled (e.g. into a worker or an MLflow param)
        raise TypeError("Credentials cannot be pickled")


USERNAME_ENV, PASSWORD_ENV = "stmai_username", "stmai_password"


def get_credentials(environ: Optional[Mapping[str, str]] = None, stdin=None) -> Credentials:
    """From ``stmai_username``/``stmai_password``, else an interactive prompt (``getpass`` for the
    password), else two lines on a non-interactive stdin (the reference's three sources)."""
    env = os.environ if environ is None else environ
    username, password = env.get(USERNAME_ENV), env.get(PASSWORD_ENV)
    if username and password:
        log.info("Using the STM32Cube.AI Developer Cloud credentials of %s/%s", USERNAME_ENV, PASSWORD_ENV)
        return Credentials(username, password, "env")
    stdin = sys.stdin if stdin is None else stdin
    try:
        interactive = bool(stdin is not None and stdin.isatty())
    except (AttributeError, ValueError, OSError):
        interactive = False
    if interactive:
        print("Log in to STM32Cube.AI Developer Cloud (an account: https://stedgeai-dc.st.com/home)",
              file=sys.stderr)
        username = username or input("Username: ").strip()
        password = password or getpass.getpass("Password: ")
        source = "prompt"
    else:
        try:
            username = username or (stdin.readline() if stdin else "").strip()
            password = password or (stdin.readline() if stdin else "").rstrip("\r\n")
        except (OSError, ValueError):
            username, password = username or "", password or ""
        source = "stdin"
    if not username or not password:
        raise LoginError(f"no STM32Cube.AI Developer Cloud credentials: set {USERNAME_ENV} and {PASSWORD_ENV} "
                         "or run interactively")
    return Credentials(username, password, source)


# ---------------------------------------------------------------------------------------------
# Request parameters (reference: stm32ai_dc.types CliParameters / MpuParameters)

BENCHMARK_STATES = {
    "in_queue": "model is in queue",
    "waiting_for_build": "project is waiting for build",
    "generating_sources": "generating sources",
    "copying_sources": "copying sources",
    "loading_sources": "loading sources",
    "building": "building sources",
    "flashing": "flashing the remote board",
    "validation": "validating the model",
    "done": "done",
    "error": "error",
}

# CliParameters fields whose defaults are not None, in the class's field order.
_CLI_DEFAULTS = (("verbosity", 1), ("allocateInputs", True), ("allocateOutputs", True), ("series", "stm32f4"),
                 ("splitWeights", False), ("noCFiles", False), ("useCloud", False), ("includeLibraryForIde", "gcc"))
_CLI_ORDER = ("verbosity", "type", "name", "compression", "allocateInputs", "allocateOutputs", "noInputsAllocation",
              "noOutputsAllocation", "inputDataType", "outputDataType", "target", "series", "splitWeights",
              "optimization", "noOnnxOptimizer", "noOnnxIoTranspose", "prefetchCompressedWeights", "binary", "dll",
              "ihex", "address", "copyWeightsAt", "relocatable", "noCFiles", "batchSize", "valinput", "valoutput",
              "range", "full", "saveCsv", "classifier", "noCheck", "noExecModel", "seed", "stNeuralArt",
              "extraCommandLineArguments", "useCloud", "includeLibraryForSerie", "includeLibraryForIde", "fromModel")

# STM32MP boards: (engine, nbCores) as the reference picks them.
MPU_OPTIONS = {"STM32MP257F-EV1": ("hw_accelerator", 2), "STM32MP157F-DK2": ("cpu", 2), "STM32MP135F-DK": ("cpu", 1)}


def is_mpu(board: str) -> bool:
    return "STM32MP" in board


def cli_parameters(**options: Any) -> dict[str, Any]:
    """The non-None ``CliParameters`` fields (defaults included) in field order; ``atonnOptions``
    (the N6 compiler options, hyphenated keys) is handled by the callers."""
    values = dict(_CLI_DEFAULTS)
    values.update(options)
    return {k: values[k] for k in _CLI_ORDER if values.get(k) is not None}


def analyze_args(model_name: str, *, optimization: str = "balanced", name_tag: Optional[str] = None,
                 environ: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """The ``args`` JSON of ``POST .../analyze`` for the reference's cloud analyze call."""
    env = os.environ if environ is None else environ
    data = {"model": model_name}
    data.update(cli_parameters(optimization=optimization.lower(), fromModel=name_tag))
    data["atonnOptions"] = {}
    data["statsType"] = env.get("STATS_TYPE")
    return data


def benchmark_request(board: str, model_name: str, *, optimization: str = "balanced", name_tag: Optional[str] = None,
                      version: Optional[str] = None) -> tuple[bool, dict[str, Any]]:
    """(is MPU, request fields) of a benchmark on ``board``: MPU parameters for STM32MP boards,
    the N6 Neural-ART parameters for STM32N6 boards, MCU parameters otherwise."""
    if is_mpu(board):
        engine, cores = MPU_OPTIONS.get(board, ("cpu", 1))
        fields = {"engine": engine, "nbCores": cores}
        atonn = None
    elif "STM32N6" in board:
        fields = cli_parameters(target="stm32n6", stNeuralArt="default")
        atonn = {"enable-epoch-controller": True}
    else:
        fields = cli_parameters(optimization=optimization, fromModel=name_tag)
        atonn = {}
    data: dict[str, Any] = {}
    if version:
        data["version"] = version
    data.update(fields)
    if atonn is not None:
        data["atonnOptions"] = atonn
    return is_mpu(board), data


# ---------------------------------------------------------------------------------------------
# Result parsing (reference: backend/cloud/cloud.py)


def parse_analyze_result(result: dict, *, model: Optional[str] = None) -> Footprint:
    """Footprint of an analyze run's ``result`` (``report``/``graph``/``info``)."""
    report, graph, info = result.get("report") or {}, result.get("graph"), result.get("info")
    mf = (graph.get("memory_footprint") or {}) if graph else ((info or {}).get("memory_footprint") or {})
    sums = footprint_sums(mf)
    if info:
        version, arguments, date = c_info_tool(info)
    else:
        version = version_string(report.get("cli_version_str") or report.get("tools_version"))
        arguments, date = report.get("cli_parameters"), report.get("date_time")
    if graph and graph.get("macc") is not None:
        macc = to_int(graph.get("macc"), 0)
    elif info:
        macc = c_info_macc(info)
    else:
        macc = to_int(report.get("rom_n_macc"), 0)
    return Footprint(
        source="cloud", cloud_mode="analyze", ram_size=sums["activations"], rom_size=sums["weights"], macc=macc,
        total_ram_io_size=sums["io"],
        estimated_library_ram_size=sums["runtime_ram"] if sums["has_runtime"] else None,
        estimated_library_flash_size=sums["runtime_flash"] if sums["has_runtime"] else None,
        date_time=date, cli_version_str=version, cli_parameters=arguments, model=model)


def _param_sizes(buffers: list, size_key: str) -> dict[str, int]:
    return {b.get("name"): to_int(b.get(size_key), 0) for b in buffers or [] if b.get("is_param", True) is True}


def parse_benchmark_result(result: dict, *, board: str, mpu: bool = False, model: Optional[str] = None) -> Footprint:
    """Footprint of a finished benchmark (``state: done``): MPU results, the current format
    (``benchmark.info`` = c_info document) or the older ``benchmark.report``/``graph`` one."""
    bench = result.get("benchmark") or {}
    if mpu:
        exec_time = bench.get("exec_time") or {}
        tool = bench.get("tool_version") or {}
        tool_str = (f"{tool.get('name', '')} {tool.get('major', '')}.{tool.get('minor', '')}.{tool.get('micro', '')}"
                    .strip() if tool else None)
        return Footprint(
            source="cloud", cloud_mode="board", board=board, target="mpu", device=bench.get("board"),
            duration_ms=to_float(exec_time.get("duration_ms")), npu_percent=to_float(exec_time.get("npu_percent")),
            gpu_percent=to_float(exec_time.get("gpu_percent")), cpu_percent=to_float(exec_time.get("cpu_percent")),
            rom_size=to_int(bench.get("model_size"), None), ram_size=to_int(bench.get("ram_peak"), None),
            date_time=bench.get("date"), cli_version_str=tool_str, model=model)
    mapping = result.get("memoryMapping") or {}
    info = bench.get("info")
    if info:
        graph0 = (info.get("graphs") or [{}])[0]
        graph = bench.get("graph") or {}
        exec_time = graph0.get("exec_time") or graph.get("exec_time") or {}
        mf = mapping.get("memoryFootprint") or info.get("memory_footprint") or {}
        params = _param_sizes(info.get("buffers"), "size_bytes")
        internal_ram, external_ram = memory_pool_usage(info.get("memory_pools"), "used_size_bytes")
        version, arguments, date = c_info_tool(info)
        macc, device = c_info_macc(info), c_info_device(info)
    elif bench.get("report") is not None and bench.get("graph") is not None:
        report, graph = bench["report"], bench["graph"]
        exec_time = graph.get("exec_time") or {}
        mf = mapping.get("memoryFootprint") or graph.get("memory_footprint") or {}
        params = _param_sizes(graph.get("c_arrays"), "c_size_in_byte")
        internal_ram, external_ram = memory_pool_usage(graph.get("memory_pools"), "used_size")
        version = version_string(report.get("cli_version_str") or report.get("tools_version"))
        arguments, date, device = report.get("cli_parameters"), report.get("date_time"), exec_time.get("device")
        ram = report.get("ram_size")
        mf = dict(mf)
        mf.setdefault("activations", ram[0] if isinstance(ram, list) and ram else ram)
        mf.setdefault("weights", report.get("rom_size"))
        macc = to_int(report.get("rom_n_macc"), 0)
    else:
        raise CloudError(f"benchmark on {board}: the service returned a result in an unknown format")
    sums = footprint_sums(mf)
    # The reference reads the service's two layer lists crosswise (internal ← layersInExternalFlash);
    # kept so the numbers match what the model zoo reports.
    internal_flash = sum(params.get(f"{name}_array", 0) for name in mapping.get("layersInExternalFlash") or [])
    external_flash = sum(params.get(f"{name}_array", 0) for name in mapping.get("layersInInternalFlash") or [])
    return Footprint(
        source="cloud", cloud_mode="board", board=board, target="mcu", ram_size=sums["activations"],
        rom_size=sums["weights"], macc=macc,
        total_ram_io_size=sums["io"], estimated_library_ram_size=sums["runtime_ram"],
        estimated_library_flash_size=sums["runtime_flash"],
        cycles=to_int(exec_time.get("cycles"), None), duration_ms=to_float(exec_time.get("duration_ms")),
        cycles_by_macc=to_float(exec_time.get("cycles_by_macc")),
        internal_ram_consumption=internal_ram, external_ram_consumption=external_ram,
        internal_flash_consumption=internal_flash, external_flash_consumption=external_flash,
        use_external_ram=bool(mapping.get("useExternalRam", external_ram > 0)),
        use_external_flash=bool(mapping.get("useExternalFlash", False)),
        device=device, date_time=date, cli_version_str=version, cli_parameters=arguments, model=model)


# ---------------------------------------------------------------------------------------------
# The client

SSO_USER_AGENT = "Mozilla/5.0 (Windows NT 6.1; Win64; x64; rv59.0) Gecko/20100101"
_FORM_ACTION = re.compile(r'<form\s+.*?\s+action="(.*?)"', re.DOTALL)
_LT_INPUT = re.compile(r'(<input.*?name="lt".*?/>)')
_VALUE = re.compile(r'value="(.*?)"')
_WRONG_PASSWORD = re.compile(r"You have provided the wrong password\. You have \d+ attempts left after which "
                             r"your account password will expire\.")
_BLOCKED = re.compile(r"You have exceeded 5 login attempts\. Please click below on Forgot Password to set a "
                      r"new one\.")
_REDIRECTS = (301, 302, 303, 307, 308)
MAX_SSO_REDIRECTS = 20


class _LoginProtocolError(LoginError):
    """The SSO pages did not look as expected (retried a few times)."""


CredentialSource = Union[Credentials, Callable[[], Credentials], None]


@dataclass
class CloudClient:
    """A session with the Developer Cloud. ``connect()`` first (version + token), then
    ``upload_model``, ``boards``/``check_board``, ``benchmark``, ``analyze``...

    Timeouts are (connect, read) seconds per request; ``deadline`` (default: ``STMCLF_CLOUD_DEADLINE``
    or 300 s) bounds the wall-clock time of one request with its whole reply (from connecting to the
    last byte, redirects included; each retry gets its own), ``max_json_bytes`` and
    ``max_download_bytes`` its size; ``max_retries`` bounds the retries of a
    request after a connection error or an HTTP 5xx (delays ``backoff``·2^n s, at most 30 s);
    ``poll_interval`` is the delay between two status polls."""

    endpoints: Endpoints = field(default_factory=Endpoints.from_env)
    token_cache: TokenCache = field(default_factory=TokenCache)
    credentials: CredentialSource = None
    timeout: tuple[float, float] = (10.0, 60.0)
    upload_timeout: float = 600.0
    max_retries: int = 4
    backoff: float = 0.5
    poll_interval: float = 2.0
    login_attempts: int = 3
    verify: Optional[bool] = None
    deadline: Optional[float] = None
    max_json_bytes: int = MAX_JSON_BYTES
    max_download_bytes: int = MAX_DOWNLOAD_BYTES
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.deadline is None:
            self.deadline = default_deadline()
        if self.verify is None:
            self.verify = not os.environ.get("NO_SSL_VERIFY")
        if not self.verify:
            import urllib3
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            log.warning("NO_SSL_VERIFY is set: TLS certificates of the Developer Cloud are not checked")
        if self.endpoints.overridden:
            log.info("Developer Cloud endpoints overridden by %s", ", ".join(self.endpoints.overridden))
        self.version: Optional[str] = None
        self._token: Optional[dict] = None
        self._session = self._new_session()
        self._stringified_args: Optional[bool] = None
        self._board_names: Optional[list[str]] = None

    # --- plumbing ---------------------------------------------------------------------------
    def _new_session(self) -> requests.Session:
        s = requests.Session()  # trust_env: HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE
        for prefix in ("https://", "http://"):
            s.mount(prefix, _DeadlineAdapter())
        s.verify = bool(self.verify)
        s.max_redirects = 10
        return s

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "CloudClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _delay(self, attempt: int) -> float:
        return min(self.backoff * (2 ** attempt), 30.0)

    def _send(self, session: requests.Session, method: str, url: str, *, what: str,
              timeout: Optional[tuple[float, float]] = None, deadline: Optional[float] = None,
              sink=None, max_bytes: Optional[int] = None, same_origin: bool = False,
              **kwargs) -> requests.Response:
        """One request with the timeout, retried after connection errors and HTTP 5xx. Each attempt,
        from connecting to the last byte of the reply (and of every redirect's), must end within
        ``deadline`` seconds (default ``self.deadline``; see :class:`_Deadline`) and ``max_bytes``
        (default ``self.max_json_bytes``); its body is then in ``resp.content``, or written to
        ``sink`` (a binary file) when one is given. ``same_origin``: a redirect to another scheme,
        host or port is refused (:class:`UnexpectedReply`) instead of followed."""
        attempts = max(1, self.max_retries + 1)
        idempotent = method in ("GET", "HEAD", "OPTIONS", "DELETE")
        limit = float(deadline or self.deadline)
        cap = int(max_bytes or self.max_json_bytes)
        connect_timeout, read_timeout = _pair(timeout or self.timeout)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            bound = _Deadline(limit)

            def on_response(r: requests.Response, *args, **kw) -> requests.Response:
                if r.is_redirect:  # requests buffers a redirect's body itself: bound it first
                    if same_origin:
                        self._refuse_other_origin(session, url, r, what)
                    self._read_body(r, what, bound, cap, None)
                return r

            if sink is not None:
                sink.seek(0)
                sink.truncate()
            try:
                with bound:
                    # no single read (nor the connect) may wait past the deadline either
                    resp = session.request(method, url, stream=True, hooks={"response": on_response},
                                           timeout=(_capped(connect_timeout, bound.left()),
                                                    _capped(read_timeout, bound.left())), **kwargs)
                    if not resp.is_redirect or resp._content is False:
                        self._read_body(resp, what, bound, cap, sink)
                    if bound.fired:  # cut short by the watchdog, whatever the reply looked like
                        resp.close()
                        raise bound.error(resp.url or url, what)
            except requests.RequestException as exc:
                if bound.expired:
                    raise bound.error(url, what) from None
                if isinstance(exc, requests.exceptions.SSLError):
                    raise ServiceUnreachable(f"{what}: TLS error talking to {urlparse(url).netloc} (certificate "
                                             "not trusted? behind an inspecting proxy set REQUESTS_CA_BUNDLE, or "
                                             "NO_SSL_VERIFY=1)") from None
                if not isinstance(exc, (requests.ConnectionError, requests.Timeout,
                                        requests.exceptions.ChunkedEncodingError)):
                    # redirect loop, file:// redirect, bad URL, ...
                    raise UnexpectedReply(f"unexpected reply from {_where(url)} ({what}): {type(exc).__name__}: "
                                          f"{_without_queries(str(exc))}") from None
                sent = isinstance(exc, requests.ReadTimeout)
                if last or (sent and not idempotent):
                    raise ServiceUnreachable(
                        f"STM32Cube.AI Developer Cloud unreachable ({what}, {_where(url)}): {type(exc).__name__} "
                        f"after {attempt + 1} attempt(s); check the network and HTTP(S)_PROXY/NO_PROXY") from None
                log.warning("%s: %s, retrying in %.1f s (%d/%d)", what, type(exc).__name__, self._delay(attempt),
                            attempt + 1, attempts - 1)
                self.sleep(self._delay(attempt))
                continue
            if resp.status_code >= 500 and not last:
                log.warning("%s: HTTP %d, retrying in %.1f s (%d/%d)", what, resp.status_code, self._delay(attempt),
                            attempt + 1, attempts - 1)
                resp.close()
                self.sleep(self._delay(attempt))
                continue
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _refuse_other_origin(session: requests.Session, url: str, resp: requests.Response, what: str) -> None:
        """An API call's redirect goes only to the origin (scheme, host, port) of ``url``: requests
        would drop the access token on the way to another host and hand back that host's reply as
        if it were the Developer Cloud's."""
        target = urljoin(resp.url or url, session.get_redirect_target(resp) or "")
        if _origin(target) == _origin(url):
            return
        resp.close()
        scheme, host, port = _origin(target)
        host = f"[{host}]" if ":" in host else host
        shown = f"{scheme}://{host}" + (f":{port}" if port else "")
        raise UnexpectedReply(f"unexpected reply from {_where(url)} ({what}): HTTP {resp.status_code} redirect to "
                              f"another host ({shown}), not followed (Developer Cloud API calls stay on the "
                              f"service's own scheme, host and port; check the service URL overrides and any proxy)")

    @staticmethod
    def _read_body(resp: requests.Response, what: str, bound: _Deadline, cap: int, sink) -> None:
        """Read ``resp``'s body in chunks within ``bound`` and ``cap`` bytes: into ``resp.content``,
        or into ``sink``. Past either: :class:`ServiceUnreachable`."""
        where = _where(resp.url or "")
        if bound.fired:  # the status line or headers may have been cut short by the watchdog
            resp.close()
            raise bound.error(resp.url or "", what)
        length = (resp.headers.get("Content-Length") or "").strip()
        if length.isdigit() and int(length) > cap:
            resp.close()
            raise ServiceUnreachable(f"unexpected reply from {where} ({what}): {int(length):,} bytes announced, more "
                                     f"than the {cap:,} allowed")
        chunks, total = [], 0
        try:
            while True:
                if bound.expired:
                    resp.close()
                    raise bound.error(resp.url or "", what, total)
                chunk = resp.raw.read1(64 * 1024, decode_content=True)
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    resp.close()
                    raise ServiceUnreachable(f"unexpected reply from {where} ({what}): more than the {cap:,} bytes "
                                             "allowed")
                if sink is not None:
                    sink.write(chunk)
                else:
                    chunks.append(chunk)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            resp.close()
            if bound.expired:
                raise bound.error(resp.url or "", what, total) from None
            if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
                raise requests.ReadTimeout(str(exc)) from None
            raise requests.ConnectionError(str(exc)) from None
        if bound.fired:  # the end of the body may be the watchdog's shutdown, not the server's
            resp.close()
            raise bound.error(resp.url or "", what, total)
        resp._content = b"".join(chunks)  # what resp.json()/resp.text read
        resp._content_consumed = True

    def _api(self, method: str, url: str, *, what: str, auth: bool = True, **kwargs) -> requests.Response:
        """An authenticated call: Bearer token, one refresh-and-retry on HTTP 401, 404/5xx → error;
        redirects followed only on the URL's own scheme, host and port."""
        headers = dict(kwargs.pop("headers", None) or {})
        headers.setdefault("Accept", "application/json")
        if auth:
            self._ensure_token()
        resp = None
        for retry in (False, True):
            if auth:
                headers["Authorization"] = f"Bearer {self._token['access_token']}"
            resp = self._send(self._session, method, url, what=what, headers=headers, same_origin=True, **kwargs)
            if resp.status_code == 401 and auth and not retry:
                log.info("%s: access token rejected (HTTP 401), renewing it", what)
                resp.close()
                self._reauthenticate()
                continue
            break
        assert resp is not None
        if resp.status_code == 401:
            raise LoginError(f"{what}: the service rejected the access token (HTTP 401) after renewing it; "
                             f"delete {self.token_cache.path} and log in again")
        if resp.status_code == 404:
            raise CloudError(f"{what}: route not found (HTTP 404 at {_where(url)}); check the service URL overrides")
        if resp.status_code >= 500:
            raise CloudError(f"{what}: the service answered HTTP {resp.status_code} after "
                             f"{self.max_retries + 1} attempts")
        return resp

    @staticmethod
    def _json(resp: requests.Response, what: str) -> Any:
        try:
            return decode_json(resp.content)
        except ValueError as exc:
            raise UnexpectedReply(f"unexpected reply from {_where(resp.url or '')} ({what}): not JSON "
                                  f"(HTTP {resp.status_code}; {one_line(exc, 80)})") from None

    # --- versions -----------------------------------------------------------------------------
    def supported_versions(self) -> list[dict]:
        resp = self._send(self._session, "GET", self.endpoints.versions, what="supported versions", same_origin=True)
        if resp.status_code != 200:
            raise CloudError(f"supported versions: HTTP {resp.status_code} from {_where(self.endpoints.versions)}")
        data = self._json(resp, "supported versions")
        if not isinstance(data, list):
            raise CloudError("supported versions: the service did not send a list")
        return data

    def resolve_version(self, requested: Any = None, platform: str = "stm32") -> Optional[str]:
        """The service version whose ``platform.stm32`` (or ``version``) equals ``requested``
        ("10", "10.0" and "10.0.0" are the same); else the ``isLatest`` one, with a warning."""
        versions = self.supported_versions()
        wanted = version_string(requested) if requested not in (None, "") else None
        for entry in versions:
            tool = (entry.get("platform") or {}).get(platform, entry.get("version"))
            if wanted is not None and version_string(tool) == wanted:
                return entry.get("version")
        latest = next((v for v in versions if v.get("isLatest")), None)
        chosen = latest.get("version") if latest else None
        shown = (latest.get("platform") or {}).get(platform, "---") if latest else "---"
        if wanted is not None:
            log.warning("Version %s for platform %s is not supported by the Developer Cloud; using the latest "
                        "(%s, %s version %s)", requested, platform, chosen, platform, shown)
        else:
            log.info("Using the latest Developer Cloud version (%s, %s version %s)", chosen, platform, shown)
        return chosen

    # --- authentication -----------------------------------------------------------------------
    def connect(self, version: Any = None) -> "CloudClient":
        """Pick the service version and make sure a valid token is at hand."""
        self.version = self.resolve_version(version)
        self._ensure_token()
        return self

    @property
    def _token_key(self) -> str:
        return self.endpoints.user_service

    def _ensure_token(self) -> None:
        if self._token:
            return
        cached = self.token_cache.load(self._token_key)
        if cached:
            expires = to_float(cached.get("expires_at"))
            if expires is None or expires > time.time() + 30:
                log.info("Using the cached Developer Cloud token (%s)", self.token_cache.path)
                self._token = cached
                return
            if self._refresh(cached):
                return
        self._login_with_prompts()

    def _reauthenticate(self) -> None:
        current = self._token or self.token_cache.load(self._token_key)
        self._token = None
        if current and self._refresh(current):
            return
        self._login_with_prompts()

    def _refresh(self, token: dict) -> bool:
        refresh_token = token.get("refresh_token")
        if not refresh_token:
            return False
        resp = self._send(self._session, "POST", self.endpoints.user_service + "/login/refresh",
                          what="token refresh", data={"refresh_token": refresh_token},
                          headers={"Accept": "application/json"}, same_origin=True)
        try:
            body = decode_json(resp.content) if resp.status_code == 200 else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or not body.get("access_token"):
            log.info("Developer Cloud token refresh failed (HTTP %d); logging in again", resp.status_code)
            return False
        merged = _normalise_token({**token, **body})
        self.token_cache.save(self._token_key, merged)
        self._token = merged
        log.info("Developer Cloud token refreshed")
        return True

    def _get_credentials(self) -> Credentials:
        source = self.credentials
        if isinstance(source, Credentials):
            return source
        if callable(source):
            return source()
        return get_credentials()

    def _login_with_prompts(self) -> None:
        """Log in; a wrong password typed at the prompt is asked again (3 tries in all)."""
        for attempt in range(3):
            credentials = self._get_credentials()
            try:
                self.login(credentials)
                return
            except InvalidCredentials:
                if credentials.source != "prompt" or attempt == 2:
                    raise
                log.error("Login failed: wrong username or password. Please try again.")

    def login(self, credentials: Credentials) -> None:
        """The SSO login, retried on unexpected pages (not on wrong password/blocked account)."""
        attempts = max(1, self.login_attempts)
        token: dict = {}
        for attempt in range(attempts):
            try:
                token = self._sso_login(credentials)
                break
            except _LoginProtocolError as exc:
                if attempt == attempts - 1:
                    raise LoginError(f"STM32Cube.AI Developer Cloud login failed: {exc}") from None
                log.warning("Login issue (%s), retrying (%d/%d)", exc, attempt + 1, attempts - 1)
                self.sleep(self._delay(attempt))
        token = _normalise_token(token)
        self.token_cache.save(self._token_key, token)
        self._token = token
        log.info("Successfully connected to STM32Cube.AI Developer Cloud")

    def _sso_login(self, credentials: Credentials) -> dict:
        ep = self.endpoints
        with self._new_session() as s:
            s.headers.update({"User-Agent": SSO_USER_AGENT})
            # 1. authorization request; the SSO redirects to its login page
            resp = self._send(s, "GET", ep.sso + "/as/authorization.oauth2", what="SSO authorization",
                              params={"response_type": "code", "client_id": ep.client_id, "scope": "openid",
                                      "redirect_uri": ep.callback, "response_mode": "query"},
                              allow_redirects=True)
            if resp.status_code != 200:
                raise _LoginProtocolError(f"the SSO authorization page answered HTTP {resp.status_code}")
            page = resp.text
            form = _FORM_ACTION.search(page)
            lt_input = _LT_INPUT.search(page)
            lt_value = _VALUE.search(lt_input.group(1)) if lt_input else None
            if not form or not lt_value:
                raise _LoginProtocolError("no login form on the SSO page")
            origin = urlparse(resp.url)
            login_url = urljoin(f"{origin.scheme}://{origin.netloc}", html.unescape(form.group(1)))
            self._check_login_target(login_url)
            # 2. the login form, without following the redirect
            resp = self._send(s, "POST", login_url, what="SSO login", allow_redirects=False,
                              data={"username": credentials.username, "password": credentials.password,
                                    "_eventId": "Login", "lt": html.unescape(lt_value.group(1))})
            if resp.status_code == 200:
                if _WRONG_PASSWORD.search(resp.text):
                    raise InvalidCredentials()
                if _BLOCKED.search(resp.text):
                    raise BlockedAccount()
            location = resp.headers.get("Location")
            if not location:
                raise _LoginProtocolError(f"the SSO login answered HTTP {resp.status_code} without a redirect")
            # 3. follow the redirects by hand until one goes to the callback URL
            redirect = urljoin(login_url, location)
            for _ in range(MAX_SSO_REDIRECTS):
                resp = self._send(s, "GET", redirect, what="SSO redirect", allow_redirects=False)
                if resp.status_code in _REDIRECTS and resp.headers.get("Location"):
                    redirect = urljoin(redirect, resp.headers["Location"])
                    if redirect.startswith(ep.callback):
                        break
                else:
                    break
            else:
                raise _LoginProtocolError("too many SSO redirects")
            code = parse_qs(urlparse(redirect).query).get("code")
            if not code:
                raise _LoginProtocolError("the SSO redirects did not end with an authorization code")
            # 4. exchange the code for tokens
            resp = self._send(s, "POST", ep.user_service + "/login/callback", what="token exchange",
                              allow_redirects=False, data={"redirect_url": ep.callback, "code": code[0]})
            if resp.status_code != 200:
                raise _LoginProtocolError(f"the token exchange answered HTTP {resp.status_code}")
            try:
                token = decode_json(resp.content)
            except ValueError:
                raise _LoginProtocolError("the token exchange reply is not JSON") from None
            if not isinstance(token, dict) or not token.get("access_token"):
                raise _LoginProtocolError("the token exchange reply holds no access token")
            return token

    def _check_login_target(self, login_url: str) -> None:
        """The password goes only over https to the SSO URL's host or another host of its domain
        (``sso.st.com`` → ``*.st.com``: the authorization page may redirect to ST's login pages on
        another host), on the default or the SSO URL's port; plain http only when the SSO URL itself
        is http on a loopback host, and then only to that same origin (the tests' server)."""
        sso = _origin(self.endpoints.sso)
        target = _origin(login_url)
        if sso[0] == "http" and sso[1] in _LOOPBACK:
            allowed = target == sso
        else:
            domain = ".".join(sso[1].split(".")[-2:]) if not _is_ip(sso[1]) else sso[1]
            same_domain = target[1] == sso[1] or (not _is_ip(sso[1]) and target[1].endswith("." + domain))
            allowed = target[0] == "https" and same_domain and target[2] in (443, sso[2])
        if not allowed:
            raise UnsafeLogin(f"STM32Cube.AI Developer Cloud login refused: the SSO login page asks to send the "
                              f"password to {_where(login_url)}, not over https to a host of the SSO's domain "
                              f"({sso[1]}) (check SSO_URL and any proxy); no credentials were sent")

    def get_user(self) -> Optional[dict]:
        """The logged-in user (``POST {USER_SERVICE}/login/authenticate``)."""
        self._ensure_token()
        resp = self._api("POST", self.endpoints.user_service + "/login/authenticate", what="current user",
                         data={"access_token": self._token["access_token"]})
        body = self._json(resp, "current user")
        return body if isinstance(body, dict) and body.get("sub") is not None else None

    # --- files --------------------------------------------------------------------------------
    def list_models(self) -> list[str]:
        body = self._json(self._api("GET", self.endpoints.models, what="model list"), "model list")
        return [m.get("name") for m in body if isinstance(m, dict)] if isinstance(body, list) else []

    def upload_model(self, path: Union[str, Path]) -> str:
        """Upload a model file (replacing one of the same name); returns its name on the cloud."""
        path = Path(path)
        if not path.is_file():
            raise CloudError(f"model file not found: {path}")
        resp = self._api("POST", self.endpoints.models, what="model upload",
                         files={"file": (path.name, path.read_bytes())},
                         timeout=(self.timeout[0], self.upload_timeout),
                         deadline=max(float(self.deadline), self.upload_timeout))
        body = self._json(resp, "model upload") if resp.status_code == 200 else None
        if not (isinstance(body, dict) and body.get("upload") is True):
            raise CloudError(f"model upload of {path.name} failed (HTTP {resp.status_code})")
        log.info("Uploaded %s to STM32Cube.AI Developer Cloud", path.name)
        return path.name

    def download_model(self, name: str, dest: Union[str, Path]) -> Path:
        """Download ``name`` to ``dest`` (at most ``max_download_bytes``, within the upload deadline)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        try:
            with open(part, "w+b") as f:
                resp = self._api("GET", f"{self.endpoints.models}/{name}", what="model download", sink=f,
                                 max_bytes=self.max_download_bytes,
                                 deadline=max(float(self.deadline), self.upload_timeout))
            if resp.status_code != 200:
                raise CloudError(f"model download of {name} failed (HTTP {resp.status_code})")
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        return dest

    def delete_model(self, name: str) -> bool:
        resp = self._api("DELETE", f"{self.endpoints.models}/{name}", what="model delete")
        body = self._json(resp, "model delete") if resp.status_code == 200 else None
        return isinstance(body, dict) and body.get("deleted") is True

    def _require_model(self, name: str) -> None:
        if name not in self.list_models():
            raise CloudError(f"model {name} is not on STM32Cube.AI Developer Cloud; upload it first")

    # --- analyze ------------------------------------------------------------------------------
    def analyze(self, model_name: str, *, optimization: str = "balanced", name_tag: Optional[str] = None,
                timeout: float = 300.0) -> Footprint:
        """Memory footprints of an uploaded model (``POST .../stm32ai//analyze`` then poll)."""
        self._require_model(model_name)
        args = analyze_args(model_name, optimization=optimization, name_tag=name_tag)
        resp = self._api("POST", self.endpoints.analyze(self.version), what="cloud analyze",
                         data={"args": json.dumps(args)})
        if resp.status_code != 200:
            raise CloudError(f"cloud analyze failed: HTTP {resp.status_code}")
        body = self._json(resp, "cloud analyze")
        if isinstance(body, dict) and body.get("runtimeId"):
            runtime_id = body["runtimeId"]
        elif isinstance(body, dict) and body.get("status") == "ko":
            raise CloudError(f"cloud analyze failed: {body.get('error', 'unknown error')}")
        else:
            raise CloudError("cloud analyze failed: unexpected reply from the service")
        result = self._wait_stm32ai_run(runtime_id, timeout=timeout, what="cloud analyze")
        if not isinstance(result, dict) or result.get("report") is None:
            message = (result.get("message") or result.get("error")) if isinstance(result, dict) else None
            raise CloudError(f"cloud analyze failed: {message or 'missing data in the server reply'}")
        return _parsed(lambda: parse_analyze_result(result, model=model_name), url=self.endpoints.analyze(self.version),
                       what="cloud analyze")

    def _wait_stm32ai_run(self, runtime_id: str, *, timeout: float, what: str) -> dict:
        url = self.endpoints.stm32ai_run(self.version, runtime_id)
        start, state = self.clock(), None
        while True:
            resp = self._api("GET", url, what=f"{what} status")
            if resp.status_code == 200:
                body = self._json(resp, f"{what} status")
                if isinstance(body, dict) and body.get("state") is not None:
                    if body.get("result") is not None:
                        return body["result"]
                    if str(body["state"]).lower() == "error":
                        return body
                    state = body["state"]
            else:
                log.warning("%s status: HTTP %d", what, resp.status_code)
            if self.clock() - start > timeout:
                raise PollTimeout(f"{what} did not finish within {timeout:g} s (last state: {state or 'unknown'}, "
                                  f"run {runtime_id})")
            self.sleep(self.poll_interval)

    # --- boards and benchmark -----------------------------------------------------------------
    def boards(self) -> dict[str, dict]:
        """``{board name: {boardCount, flashSize, deviceCpu, deviceId}}``."""
        resp = self._api("GET", self.endpoints.boards, what="board list")
        if resp.status_code != 200:
            raise CloudError(f"board list: HTTP {resp.status_code}")
        body = self._json(resp, "board list")
        if not isinstance(body, dict):
            raise CloudError("board list: the service did not send a board table")
        return body

    def check_board(self, board: str) -> str:
        """The service's spelling of ``board`` (case-insensitive match), else :class:`UnknownBoard`."""
        if self._board_names is None:
            self._board_names = list(self.boards())
        names = self._board_names
        if board in names:
            return board
        matches = [n for n in names if n.lower() == str(board).lower()]
        if len(matches) == 1:
            return matches[0]
        raise UnknownBoard(f"benchmarking.board: Board {board} not listed. Please select one of the available "
                           f"boards {sorted(names)}")

    def _uses_stringified_args(self) -> bool:
        """Old benchmark services take ``{"args": "<json>", "model": name}`` (read from their
        OpenAPI description, as the reference does)."""
        if self._stringified_args is None:
            self._stringified_args = False
            try:
                resp = self._send(self._session, "GET", self.endpoints.benchmark_openapi, what="benchmark API",
                                  headers={"Accept": "application/json"}, same_origin=True)
                spec = decode_json(resp.content)
                props = (spec["paths"]["/benchmark/{queue}"]["post"]["requestBody"]["content"]
                         ["application/json"]["schema"]["properties"])
                self._stringified_args = set(props) == {"model", "args"}
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("Could not read the benchmark service's API description (%s)", type(exc).__name__)
        return self._stringified_args

    def benchmark(self, model_name: str, board: str, *, optimization: str = "balanced",
                  name_tag: Optional[str] = None, timeout: float = 2500.0) -> Footprint:
        """Run an uploaded model on ``board`` and poll until ``done`` (→ Footprint), ``error``
        (→ :class:`BenchmarkFailed`) or ``timeout`` seconds (→ :class:`PollTimeout`)."""
        board = self.check_board(board)
        mpu, data = benchmark_request(board, model_name, optimization=optimization, name_tag=name_tag,
                                      version=self.version)
        legacy = self._uses_stringified_args()
        self._require_model(model_name)
        body = {"args": json.dumps(data), "model": model_name} if legacy else {**data, "model": model_name}
        what = f"benchmark on {board}"
        log.info("Starting the model benchmark on %s", board)
        resp = self._api("POST", self.endpoints.benchmark_trigger(board, mpu), what=what, json=body)
        reply = None
        try:
            reply = decode_json(resp.content)
        except ValueError:
            pass
        if resp.status_code != 200:
            errors = reply.get("errors") if isinstance(reply, dict) else None
            raise BenchmarkFailed(f"Benchmark failed on board {board}: wrong parameter: "
                                  f"{errors if errors is not None else 'HTTP ' + str(resp.status_code)}")
        if not isinstance(reply, dict) or not reply.get("benchmarkId"):
            raise BenchmarkFailed(f"Benchmark failed on board {board}: the service did not return a benchmark id")
        result = self._wait_benchmark(reply["benchmarkId"], board, timeout=timeout)
        return _parsed(lambda: parse_benchmark_result(result, board=board, mpu=mpu, model=model_name),
                       url=self.endpoints.benchmark_run(str(reply["benchmarkId"])), what=what)

    def _wait_benchmark(self, benchmark_id: str, board: str, *, timeout: float) -> dict:
        url = self.endpoints.benchmark_run(benchmark_id)
        start, state = self.clock(), None
        while True:
            resp = self._api("GET", url, what=f"benchmark status on {board}")
            if resp.status_code == 200:
                body = self._json(resp, f"benchmark status on {board}")
                if isinstance(body, dict):
                    new = str(body.get("state", "")).lower()
                    if new != state:
                        state = new
                        if state in BENCHMARK_STATES:
                            log.info("Benchmark on %s: %s", board, BENCHMARK_STATES[state])
                        else:
                            log.warning("Benchmark on %s: unknown state %r", board, state)
                    if state == "done":
                        return body
                    if state == "error":
                        raise BenchmarkFailed(f"Benchmark failed on board {body.get('board', board)}: "
                                              f"{body.get('message', 'no info')}")
            else:
                log.warning("benchmark status on %s: HTTP %d", board, resp.status_code)
            if self.clock() - start > timeout:
                raise PollTimeout(f"benchmark on {board} did not finish within {timeout:g} s (stalled in state "
                                  f"'{state or 'unknown'}', benchmark id {benchmark_id})")
            self.sleep(self.poll_interval)

    # --- MPU NBG optimisation -----------------------------------------------------------------
    def generate_nbg(self, model_name: str, dest: Union[str, Path], *, timeout: float = 300.0) -> Path:
        """Optimise an uploaded .tflite/.onnx into a network binary graph for STM32MP2 NPUs and
        download it to ``dest``."""
        what = "NBG optimisation"
        resp = self._api("POST", self.endpoints.nbg_service + "/optimize", what=what, json={"model": model_name})
        body = self._json(resp, what) if resp.status_code == 200 else None
        if not isinstance(body, dict) or not body.get("runtimeId"):
            raise CloudError(f"{what} failed: the service did not start it (HTTP {resp.status_code})")
        url, start = self.endpoints.nbg_service + f"/run/{body['runtimeId']}", self.clock()
        while True:
            status = self._api("GET", url, what=f"{what} status")
            run = self._json(status, what) if status.status_code == 200 else None
            state = str(run.get("state", "")).lower() if isinstance(run, dict) else ""
            if state == "done":
                if not run.get("blobName"):
                    raise CloudError(f"{what} failed: no file produced")
                return self.download_model(run["blobName"], dest)
            if state == "error":
                raise CloudError(f"{what} failed: {run.get('message', 'no info')}")
            if self.clock() - start > timeout:
                raise PollTimeout(f"{what} did not finish within {timeout:g} s")
            self.sleep(self.poll_interval)


def _parsed(parse: Callable[[], Footprint], *, url: str, what: str) -> Footprint:
    """``parse()``, a result of the wrong shape (a list or string where an object goes, ...) being
    one line naming the endpoint."""
    try:
        return parse()
    except CloudError:
        raise
    except (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        raise UnexpectedReply(f"unexpected reply from {_where(url)} ({what}): the result does not have the "
                              f"expected shape ({type(exc).__name__}: {one_line(exc, 100)})") from None


def _normalise_token(token: dict) -> dict:
    token = dict(token)
    if token.get("expires_at") is None and to_float(token.get("expires_in")) is not None:
        token["expires_at"] = time.time() + float(token["expires_in"])
    return token


# ---------------------------------------------------------------------------------------------
# The reference's cloud flow


def name_tag(model_path: Union[str, Path], input_size: Any, project_name: Any) -> str:
    """``<model stem>_<first input dim>_<project name>`` (the ``fromModel``/``STATS_TYPE`` tag)."""
    return "_".join(str(s) for s in (Path(model_path).stem, input_size, project_name))


def cloud_footprint(model_path: Union[str, Path], board: str, *, version: Any = None, optimization: str = "balanced",
                    tag: Optional[str] = None, client: Optional[CloudClient] = None,
                    work_dir: Union[str, Path, None] = None, benchmark_timeout: float = 2500.0,
                    analyze_timeout: float = 300.0, fallback_to_analyze: bool = True) -> Footprint:
    """Connect, upload, benchmark on ``board``; if the board run fails (error state, timeout,
    rejected), fall back to a cloud analyze for MCU boards (as the reference does; the reason is
    kept in ``Footprint.notes``). STM32MP2 boards get the cloud NBG optimisation first
    (downloaded to ``work_dir``), keeping the original model if it fails.

    Raises :class:`LoginError` (the caller may fall back to a local ``stedgeai``),
    :class:`UnknownBoard`, :class:`ServiceUnreachable` and, without fallback, the board error."""
    own = client is None
    client = client or CloudClient()
    model_path = Path(model_path)
    try:
        client.connect(version)
        if "STM32MP2" in board and model_path.suffix in (".tflite", ".onnx"):
            try:
                client.upload_model(model_path)
                target = Path(work_dir or model_path.parent) / f"{model_path.stem}.nb"
                model_path = client.generate_nbg(model_path.name, target)
                log.info("Cloud NBG optimisation done: %s", model_path)
            except (CloudError, OSError) as exc:
                if isinstance(exc, (LoginError, ServiceUnreachable, UnsafeLogin)):
                    raise
                log.warning("Model optimisation via the cloud failed (%s); using the original model", exc)
        name = client.upload_model(model_path)
        board = client.check_board(board)
        try:
            return client.benchmark(name, board, optimization=optimization, name_tag=tag, timeout=benchmark_timeout)
        except (BenchmarkFailed, PollTimeout, CloudError) as exc:
            if (isinstance(exc, (LoginError, ServiceUnreachable, UnknownBoard, UnsafeLogin)) or not fallback_to_analyze
                    or is_mpu(board)):
                raise
            log.warning("Cloud benchmark failed: %s. Trying cloud analyze to get the memory footprints", exc)
            footprint = client.analyze(name, optimization=optimization, name_tag=tag, timeout=analyze_timeout)
            footprint.notes.append(f"board run failed: {exc}")
            return footprint
    finally:
        if own:
            client.close()
