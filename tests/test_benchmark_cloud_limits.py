"""Developer Cloud client against servers that misbehave below what http.server can do: a socket-level
server that drips the status line and headers or stalls mid-body (the wall-clock deadline,
``STMCLF_CLOUD_DEADLINE``), and API calls redirected to another host."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from typing import Callable, Optional

import pytest

from stm32ai_server import BOARDS, devcloud  # noqa: F401  (fixture)
from stmclf.benchmark import cloud
from stmclf.benchmark.cloud import CloudClient, ServiceUnreachable, TokenCache, UnexpectedReply

DEADLINE = 1.5
READ_TIMEOUT = 5.0       # per read: longer than the deadline, so only the deadline can stop the client
MARGIN = 1.5             # the client must give up within DEADLINE + MARGIN seconds
VERSIONS = b'[{"version": "2.0.0", "isLatest": true, "platform": {"stm32": "10.0.0"}}]'


def reply(body: bytes = VERSIONS, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


class RawServer:
    """HTTP/1.1 written at the socket level on 127.0.0.1 by ``answer(server, conn, n)`` for the n-th
    request (0-based) on any connection; connections are kept alive while it returns True. Records
    ``(connection number, request head)`` per request."""

    def __init__(self, answer: Callable[["RawServer", socket.socket, int], bool],
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.answer, self.tls = answer, tls
        self.requests: list[tuple[int, bytes]] = []
        self.stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self._listener.getsockname()[1]}"

    def drip(self, conn: socket.socket, data: bytes, every: float) -> None:
        """``data`` one byte every ``every`` seconds (until the client or the test hangs up)."""
        for i in range(len(data)):
            if self.stopped.wait(every):
                return
            conn.sendall(data[i:i + 1])

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append(conn)
                number = len(self._conns) - 1
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        try:
            if self.tls:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            while not self.stopped.is_set():
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                with self._lock:
                    self.requests.append((number, head))
                    n = len(self.requests) - 1
                if not self.answer(self, conn, n):
                    return
        except OSError:  # the client hung up (ssl.SSLError is an OSError)
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self._listener.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def raw_server():
    servers: list[RawServer] = []

    def start(answer, tls=None):
        servers.append(RawServer(answer, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def deadline_env(monkeypatch):
    monkeypatch.setenv(cloud.DEADLINE_ENV, str(DEADLINE))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def client(server: RawServer, **kwargs) -> CloudClient:
    kwargs.setdefault("max_retries", 2)
    return CloudClient(endpoints=cloud.Endpoints.from_env({"VERSIONS_URL": server.url + "/assets/versions.json"}),
                       timeout=(2.0, READ_TIMEOUT), backoff=0.01, **kwargs)


def assert_gives_up_at_the_deadline(c: CloudClient, url: str) -> ServiceUnreachable:
    start = time.monotonic()
    with pytest.raises(ServiceUnreachable) as err:
        c.supported_versions()
    elapsed = time.monotonic() - start
    assert elapsed < DEADLINE + MARGIN, f"gave up after {elapsed:.1f} s"
    text = str(err.value)
    assert "\n" not in text and f"not complete within {DEADLINE:g} s" in text and cloud.DEADLINE_ENV in text
    assert url in text
    return err.value


# --- the deadline bounds the status line and headers, not only the body -------------------------


def test_dripped_status_line_and_headers_stop_at_the_deadline(raw_server, deadline_env, caplog):
    # one byte every 0.05 s: each read gets a byte long before the per-read timeout
    server = raw_server(lambda s, conn, n: s.drip(conn, reply(), 0.05) or False)
    err = assert_gives_up_at_the_deadline(client(server), server.url + "/assets/versions.json")
    assert "no complete reply" in str(err)
    assert not [r for r in caplog.records if r.exc_info]  # one line, no traceback of the cut headers
    time.sleep(0.2)
    assert len(server.requests) == 1  # a deadline is not retried


def test_body_stalled_midway_stops_at_the_deadline(raw_server, deadline_env):
    def answer(s, conn, n):
        conn.sendall(reply()[:-10])  # headers and most of the body, then silence
        s.stopped.wait(READ_TIMEOUT + 1)
        return False

    server = raw_server(answer)
    err = assert_gives_up_at_the_deadline(client(server, max_retries=0), server.url + "/assets/versions.json")
    assert f"{len(VERSIONS) - 10:,} bytes of the body received" in str(err)


def whole_then_dripped(s, conn, n):
    """The first reply on a connection whole (kept alive), the next one dripped."""
    if n == 0:
        conn.sendall(reply())
        return True
    s.drip(conn, reply(), 0.05)
    return False


def test_dripped_reply_on_a_kept_alive_connection_stops_at_the_deadline(raw_server, deadline_env):
    server = raw_server(whole_then_dripped)
    c = client(server)
    assert c.supported_versions()[0]["version"] == "2.0.0"
    assert_gives_up_at_the_deadline(c, server.url + "/assets/versions.json")
    assert [number for number, _ in server.requests] == [0, 0]  # the second request reused the connection


def test_dripped_reply_through_a_proxy_stops_at_the_deadline(raw_server, deadline_env, monkeypatch):
    server = raw_server(lambda s, conn, n: s.drip(conn, reply(), 0.05) or False)
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.setenv("http_proxy", server.url)
    c = CloudClient(endpoints=cloud.Endpoints.from_env({"VERSIONS_URL": "http://stm32ai-cs.invalid/assets/v.json"}),
                    timeout=(2.0, READ_TIMEOUT), max_retries=0)
    assert_gives_up_at_the_deadline(c, "http://stm32ai-cs.invalid/assets/v.json")
    assert server.requests[0][1].startswith(b"GET http://stm32ai-cs.invalid/assets/v.json ")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_dripped_reply_over_tls_stops_at_the_deadline(raw_server, deadline_env, tmp_path, monkeypatch):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # certificates still checked

    server = raw_server(whole_then_dripped, tls=context)
    c = client(server)
    assert c.supported_versions()[0]["version"] == "2.0.0"  # TLS works, the connection is kept alive
    assert_gives_up_at_the_deadline(c, server.url + "/assets/versions.json")


def test_dripped_redirect_stops_at_the_deadline(raw_server, deadline_env):
    def answer(s, conn, n):
        if n == 0:  # a redirect to the same server, whose reply then drips
            conn.sendall(reply(b"", "302 Found", "Location: /assets/moved.json\r\n"))
            return True
        s.drip(conn, reply(), 0.05)
        return False

    server = raw_server(answer)
    assert_gives_up_at_the_deadline(client(server), server.url + "/assets/moved.json")  # where it stalled
    assert len(server.requests) == 2


# --- API calls are not redirected to another host ---------------------------------------------


def fake_boards(s, conn, n) -> bool:
    conn.sendall(reply(b'{"FAKE-BOARD": {"boardCount": 1}}'))
    return True


def test_api_redirect_to_another_host_is_refused(devcloud, raw_server, monkeypatch):
    monkeypatch.setenv("stmai_username", devcloud.username)
    monkeypatch.setenv("stmai_password", devcloud.password)
    other = raw_server(fake_boards)
    c = CloudClient(poll_interval=0.01, backoff=0.01).connect()
    devcloud.redirect_to["/api/benchmark/boards"] = other.url + "/api/benchmark/boards?sig=s3cret"
    with pytest.raises(UnexpectedReply) as err:
        c.boards()
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"unexpected reply from {devcloud.url}/api/benchmark/boards")
    assert f"another host ({other.url})" in text and "s3cret" not in text
    assert not other.requests  # nothing was sent there


def test_api_redirect_on_the_same_origin_is_followed(devcloud, monkeypatch):
    monkeypatch.setenv("stmai_username", devcloud.username)
    monkeypatch.setenv("stmai_password", devcloud.password)
    c = CloudClient(poll_interval=0.01, backoff=0.01).connect()
    devcloud.redirect_to["/api/benchmark/boards"] = devcloud.url + "/api/benchmark/boards/"
    assert c.boards().keys() == BOARDS.keys()
    assert [r.path for r in devcloud.requests_to("/api/benchmark/boards")] == ["/api/benchmark/boards",
                                                                              "/api/benchmark/boards/"]


def test_token_refresh_is_not_redirected_to_another_host(devcloud, raw_server, monkeypatch):
    monkeypatch.setenv("stmai_username", devcloud.username)
    monkeypatch.setenv("stmai_password", devcloud.password)
    CloudClient().connect()
    cache = TokenCache()
    key = devcloud.env()["USER_SERVICE_URL"]
    cache.save(key, {**cache.load(key), "expires_at": 1.0})
    other = raw_server(fake_boards)
    devcloud.redirect_to["/api/user_service/login/refresh"] = other.url + "/steal"
    with pytest.raises(UnexpectedReply, match="another host"):
        CloudClient(backoff=0.01).connect()
    assert not other.requests  # the refresh token (a 307 keeps the body) never left the service


def versions_reply(s, conn, n) -> bool:
    conn.sendall(reply())
    return True


def assert_refused_redirect(err: pytest.ExceptionInfo, endpoint: str, other: RawServer) -> None:
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"unexpected reply from {endpoint} ("), text
    assert f"another host ({other.url})" in text and "s3cret" not in text and "?" not in text
    assert not other.requests  # nothing was sent there


def test_versions_redirect_to_another_host_is_refused(devcloud, raw_server):
    """The unauthenticated GET of versions.json (the first call of every connect) followed a redirect
    to any host and took that host's list of versions as the service's."""
    other = raw_server(versions_reply)
    devcloud.redirect_to["/assets/versions.json"] = other.url + "/assets/versions.json?sig=s3cret"
    with pytest.raises(UnexpectedReply) as err:
        CloudClient(backoff=0.01).supported_versions()
    assert_refused_redirect(err, f"{devcloud.url}/assets/versions.json", other)


def test_benchmark_api_description_redirect_to_another_host_is_refused(devcloud, raw_server, monkeypatch, tmp_path):
    """The benchmark service's OpenAPI description (which decides how the benchmark request is
    written) was read from whatever host a redirect named. Refused, the board run fails and the
    footprint comes from the cloud analyze, as after any other failed board run."""
    monkeypatch.setenv("stmai_username", devcloud.username)
    monkeypatch.setenv("stmai_password", devcloud.password)
    legacy = (b'{"paths": {"/benchmark/{queue}": {"post": {"requestBody": {"content": {"application/json": '
              b'{"schema": {"properties": {"model": {}, "args": {}}}}}}}}}}')
    other = raw_server(lambda s, conn, n: conn.sendall(reply(legacy)) or True)
    c = CloudClient(poll_interval=0.01, backoff=0.01).connect()
    devcloud.redirect_to["/api/benchmark/api"] = other.url + "/api/benchmark/api?sig=s3cret"
    with pytest.raises(UnexpectedReply) as err:
        c.benchmark("model.tflite", "STM32H747I-DISCO")
    assert_refused_redirect(err, f"{devcloud.url}/api/benchmark/api", other)
    assert not devcloud.requests_to("/api/benchmark/benchmark")  # no request written from another host's API
    model = tmp_path / "model_int8.tflite"
    model.write_bytes(b"TFL3" + bytes(range(256)) * 8)
    footprint = cloud.cloud_footprint(model, "STM32H747I-DISCO", client=CloudClient(poll_interval=0.01, backoff=0.01))
    assert footprint.cloud_mode == "analyze" and "another host" in footprint.notes[-1]
    assert not other.requests


# --- the deadline bounds the name's resolution too ------------------------------------------------


@pytest.fixture
def stuck_resolver(monkeypatch):
    """The system resolver as it behaves when its DNS server does not answer: ``getaddrinfo`` of a
    name under ``.stuck.test`` blocks (here up to 10 s, then "temporary failure", as glibc's
    retries end), other names and addresses resolve as usual. This sandbox has no network and its
    resolver fails at once, so the blocking resolver is the stdlib call replaced, not a DNS server."""
    real = socket.getaddrinfo
    release = threading.Event()
    calls: list[str] = []

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".stuck.test"):
            calls.append(host)
            release.wait(10.0)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield calls
    release.set()


def test_a_resolver_that_does_not_answer_stops_at_the_deadline(raw_server, deadline_env, stuck_resolver):
    server = raw_server(lambda s, conn, n: conn.sendall(reply()) or False)
    url = server.url.replace("127.0.0.1", "devcloud.stuck.test") + "/assets/versions.json"
    c = CloudClient(endpoints=cloud.Endpoints.from_env({"VERSIONS_URL": url}), timeout=(2.0, READ_TIMEOUT),
                    backoff=0.01, max_retries=2)
    err = assert_gives_up_at_the_deadline(c, url)
    assert "no complete reply" in str(err)
    assert stuck_resolver == ["devcloud.stuck.test"]  # a deadline is not retried
    assert not server.requests


def test_a_name_that_resolves_is_connected_to_within_the_deadline(raw_server, deadline_env, stuck_resolver):
    # the name goes through the bounded resolution (a helper thread), then the usual connection
    server = raw_server(lambda s, conn, n: conn.sendall(reply()) or False)
    url = server.url.replace("127.0.0.1", "localhost") + "/assets/versions.json"
    c = CloudClient(endpoints=cloud.Endpoints.from_env({"VERSIONS_URL": url}), timeout=(2.0, READ_TIMEOUT),
                    max_retries=0)
    assert c.supported_versions()[0]["version"] == "2.0.0"
    assert len(server.requests) == 1 and not stuck_resolver


def test_a_name_that_does_not_exist_is_still_a_resolution_error(deadline_env):
    url = "http://devcloud.invalid/assets/versions.json"
    c = CloudClient(endpoints=cloud.Endpoints.from_env({"VERSIONS_URL": url}), timeout=(2.0, READ_TIMEOUT),
                    backoff=0.01, max_retries=1)
    with pytest.raises(ServiceUnreachable, match=r"unreachable \(.*\): ConnectionError after 2 attempt\(s\)"):
        c.supported_versions()
