"""A local stand-in for STM32Cube.AI Developer Cloud and the ST SSO (127.0.0.1, random port).

It answers the routes the model zoo's ``stm32ai_dc`` client uses, with replies shaped like the
real ones: the SSO authorization-code flow (login page with a ``<form action>`` and a hidden ``lt``,
session cookies, a 302 chain ending at the callback with ``?code=``), the token exchange and
refresh, ``versions.json``, the file service, the STM32Cube.AI ``analyze``/``run`` routes (with the
double slash the client sends), the benchmark service (OpenAPI, boards, trigger, state polling)
and the MPU NBG optimisation.

Switches (attributes, set by the tests): ``blocked``, ``expire_token_once`` (the next
authenticated call gets a 401 and the access token dies), ``refresh_fails``,
``fail_500[path fragment] = n`` (n HTTP 500 before answering), ``benchmark_error`` (message: the
run ends in state ``error``), ``stall`` (the run never leaves ``in_queue``), ``analyze_error``,
``legacy_benchmark_api``, ``external_flash``, ``slow[path fragment] = seconds``. Hostile modes:
``hostile[exact path] = mode`` with mode ``drip`` (Content-Length 100000, then one byte every
0.5 s), ``endless`` (a chunked body that never ends, up to 256 MiB), ``deep_json``
(100,000 nested lists), ``redirect_loop``, ``redirect_file`` (302 to file:///etc/passwd);
``redirect_to[exact path] = URL`` (an HTTP 307 to that URL, e.g. on another server);
``login_form_action`` (the login page's form action, e.g. another host); ``result_patch`` (a
function called on each finished benchmark result before it is sent). Every request is recorded
in ``requests``.
"""
from __future__ import annotations

import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, quote, urlencode, urlparse, urlsplit

import pytest

USERNAME = "jane.doe@example.com"
PASSWORD = "Sup3r-s3cret-pw!"
SERVICE_VERSION = "2.0.0"        # the service's own version (path segment of the stm32ai routes)
TOOL_VERSION = "10.0.0"          # STM32Cube.AI version it runs

WRONG_PASSWORD_TEXT = ("You have provided the wrong password. You have 4 attempts left after which your account "
                       "password will expire.")
BLOCKED_TEXT = "You have exceeded 5 login attempts. Please click below on Forgot Password to set a new one."

BOARDS = {
    "STM32H747I-DISCO": {"boardCount": 3, "flashSize": "2MB", "deviceCpu": "Cortex-M7", "deviceId": "0x450"},
    "NUCLEO-H743ZI2": {"boardCount": 2, "flashSize": "2MB", "deviceCpu": "Cortex-M7", "deviceId": "0x450"},
    "STM32N6570-DK": {"boardCount": 2, "flashSize": "0MB", "deviceCpu": "Cortex-M55", "deviceId": "0x486"},
    "B-U585I-IOT02A": {"boardCount": 1, "flashSize": "2MB", "deviceCpu": "Cortex-M33", "deviceId": "0x482"},
    "STM32MP257F-EV1": {"boardCount": 1, "flashSize": "", "deviceCpu": "Cortex-A35", "deviceId": "0x505"},
}
BENCHMARK_STATES = ["in_queue", "waiting_for_build", "generating_sources", "copying_sources", "loading_sources",
                    "building", "flashing", "validation"]

# Numbers of the canned results (bytes), used by the tests to check the parsing.
ACTIVATIONS, WEIGHTS = 150_528, 409_600
KERNEL_RAM, EXTRA_RAM, TOOLCHAIN_RAM = 3_072, 128, 0
KERNEL_FLASH, EXTRA_FLASH, TOOLCHAIN_FLASH = 20_480, 64, 1_024
NODE_MACC = [1_000_000, 2_500_000, 23_456]
CYCLES, DURATION_MS, CYCLES_BY_MACC = 12_345_678, 30.86, 3.42
INTERNAL_RAM_USED, EXTERNAL_RAM_USED = 150_528, 65_536
PARAM_SIZES = {"conv2d_0_weights_array": 300_000, "dense_1_weights_array": 109_600}


@dataclass
class Recorded:
    method: str
    path: str            # raw path as sent (query excluded)
    query: dict
    headers: dict
    body: bytes


@dataclass
class FakeDevCloud:
    username: str = USERNAME
    password: str = PASSWORD
    # switches
    blocked: bool = False
    expire_token_once: bool = False
    refresh_fails: bool = False
    fail_500: dict = field(default_factory=dict)
    benchmark_error: Optional[str] = None
    stall: bool = False
    analyze_error: Optional[str] = None
    legacy_benchmark_api: bool = False
    slow: dict = field(default_factory=dict)         # path fragment → seconds to wait before answering
    external_flash: bool = False
    token_ttl: float = 3600.0
    hostile: dict = field(default_factory=dict)
    redirect_to: dict = field(default_factory=dict)   # exact path → URL of a 307
    login_form_action: Optional[str] = None
    result_patch: Any = None
    boards: dict = field(default_factory=lambda: dict(BOARDS))
    # state
    requests: list = field(default_factory=list)
    models: dict = field(default_factory=dict)
    access_tokens: set = field(default_factory=set)
    refresh_tokens: set = field(default_factory=set)
    logins: int = 0
    refreshes: int = 0
    benchmarks: dict = field(default_factory=dict)
    runs: dict = field(default_factory=dict)
    _codes: dict = field(default_factory=dict)
    _sso_sessions: dict = field(default_factory=dict)
    _cas_sessions: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> "FakeDevCloud":
        fake = self

        class Handler(_Handler):
            server_state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def callback(self) -> str:
        return f"{self.url}/callback"

    def env(self) -> dict[str, str]:
        """The environment variables (the reference's names) that point a client here."""
        u = self.url
        return {
            "USER_SERVICE_URL": f"{u}/api/user_service",
            "FILE_SERVICE_URL": f"{u}/api/file",
            "BENCHMARK_SERVICE_URL": f"{u}/api/benchmark",
            "GENERATE_NBG_SERVICE_URL": f"{u}/api/generate_nbg",
            "STM32AI_SERVICE_URL": f"{u}/api/{SERVICE_VERSION}/stm32ai/",
            "VERSIONS_URL": f"{u}/assets/versions.json",
            "SSO_URL": u,
            "CALLBACK_URL": self.callback,
            "CLIENTID": "oidc_prod_client_app_stm32ai",
        }

    def requests_to(self, fragment: str, method: Optional[str] = None) -> list[Recorded]:
        return [r for r in self.requests if fragment in r.path and (method is None or r.method == method)]

    # --- canned data ------------------------------------------------------------------------
    def versions(self) -> list[dict]:
        return [
            {"version": "1.0.0", "isLatest": False, "platform": {"stm32": "9.1.0", "stellar-e": "1.0.0"}},
            {"version": SERVICE_VERSION, "isLatest": True,
             "platform": {"stm32": TOOL_VERSION, "stellar-e": "1.0.0", "stm32mpu": "5.1.0", "ispu": "1.0.0"}},
        ]

    def c_info(self, model: str, series: str = "stm32h7", board: bool = True) -> dict:
        nodes = [{"id": i, "name": n, "macc": m, "layer_type": t} for i, (n, m, t) in
                 enumerate(zip(("conv2d_0", "conv2d_1", "dense_1"), NODE_MACC, ("Conv2D", "Conv2D", "Dense")))]
        graph: dict[str, Any] = {"name": "network", "nodes": nodes}
        if board:
            graph["exec_time"] = {"cycles": CYCLES, "duration_ms": DURATION_MS, "cycles_by_macc": CYCLES_BY_MACC}
        return {
            "json_schema_version": "2.0",
            "environment": {
                "generated_model": {"name": "network", "generated_time": "2025-03-14T10:20:30"},
                "tools": [{"name": "STEdgeAI Core", "version": {"major": 10, "minor": 0, "micro": 0, "extra": "20049"},
                           "arguments": f"generate --target {series} -m {model} --optimization balanced",
                           "input_model": {"name": model.rsplit('.', 1)[0], "type": "tflite"}}],
                "device": {"desc": "STM32H747 rev V, Cortex-M7 @400MHz"} if board else None,
            },
            "graphs": [graph],
            "memory_footprint": {"series": series, "activations": ACTIVATIONS, "weights": WEIGHTS, "io": [0, 0],
                                 "kernel_ram": KERNEL_RAM, "kernel_flash": KERNEL_FLASH, "extra_ram": EXTRA_RAM,
                                 "extra_flash": EXTRA_FLASH, "toolchain_ram": TOOLCHAIN_RAM,
                                 "toolchain_flash": TOOLCHAIN_FLASH, "toolchain": "arm-none-eabi-gcc"},
            "memory_pools": [
                {"name": "AXIRAM", "address": "0x24000000", "size_bytes": 524_288,
                 "used_size_bytes": INTERNAL_RAM_USED, "rights": "ACC_WRITE"},
                {"name": "SDRAM_EXTERNAL", "address": "0xd0000000", "size_bytes": 8_388_608,
                 "used_size_bytes": EXTERNAL_RAM_USED, "rights": "ACC_WRITE"},
                {"name": "FLASH", "address": "0x08000000", "size_bytes": 2_097_152, "used_size_bytes": 400_000,
                 "rights": "ACC_READ"},
                {"name": "AXIRAM_virtual", "address": "0x24000000", "size_bytes": 524_288,
                 "used_size_bytes": 999, "virtual": True, "rights": "ACC_WRITE"},
            ],
            "buffers": [{"name": k, "size_bytes": v, "is_param": True} for k, v in PARAM_SIZES.items()]
            + [{"name": "input_0_output_array", "size_bytes": 49_152, "is_param": False}],
        }

    def benchmark_result(self, bench: dict) -> dict:
        board = bench["board"]
        if "STM32MP" in board:
            return {**bench, "state": "done", "benchmark": {
                "board": board, "date": "2025-03-14 10:20:30", "model_size": 2_621_440, "ram_peak": 12_582_912,
                "exec_time": {"duration_ms": 11.5, "npu_percent": 0.91, "gpu_percent": 0.0, "cpu_percent": 0.09},
                "tool_version": {"name": "X-LINUX-AI", "major": "5", "minor": "1", "micro": "0"},
                "info": {"model_name": bench["model"], "model_size": 2_621_440}}}
        info = self.c_info(bench["model"])
        mapping = {"memoryFootprint": info["memory_footprint"], "useExternalRam": True,
                   "useExternalFlash": self.external_flash,
                   "layersInInternalFlash": ["dense_1_weights"] if self.external_flash else [],
                   "layersInExternalFlash": ["conv2d_0_weights"] if self.external_flash else []}
        return {**bench, "state": "done", "memoryMapping": mapping,
                "benchmark": {"info": info, "report": {"report_version": 2.0}, "graph": {}}}

    def analyze_result(self, model: str) -> dict:
        return {"report": {"tools_version": {"major": 10, "minor": 0, "micro": 0}, "rom_n_macc": sum(NODE_MACC)},
                "graph": None, "info": self.c_info(model, series="stm32f4", board=False)}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server_state: FakeDevCloud

    def log_message(self, *args) -> None:  # quiet
        pass

    # --- helpers ----------------------------------------------------------------------------
    def _reply(self, status: int, body: Any = b"", *, ctype: str = "application/json",
               headers: Optional[dict] = None) -> None:
        data = json.dumps(body).encode() if ctype == "application/json" else (
            body.encode() if isinstance(body, str) else body)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            for item in (v if isinstance(v, list) else [v]):
                self.send_header(k, item)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a deadline, a refused redirect)
            self.close_connection = True

    def _redirect(self, location: str, cookies: Optional[list] = None) -> None:
        headers = {"Location": location}
        if cookies:
            headers["Set-Cookie"] = cookies
        self._reply(302, "", ctype="text/html", headers=headers)

    def _cookies(self) -> dict:
        jar = SimpleCookie(self.headers.get("Cookie", ""))
        return {k: m.value for k, m in jar.items()}

    def _form(self, body: bytes) -> dict:
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
            out = {}
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                out[name] = (part.get_filename(), part.get_payload(decode=True))
            return out
        return {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}

    def _authorized(self) -> bool:
        st = self.server_state
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        with st._lock:
            if st.expire_token_once and token in st.access_tokens:
                st.expire_token_once = False
                st.access_tokens.discard(token)
                return False
            return token in st.access_tokens

    def _issue_tokens(self) -> dict:
        st = self.server_state
        access, refresh = "at-" + secrets.token_hex(12), "rt-" + secrets.token_hex(12)
        st.access_tokens.add(access)
        st.refresh_tokens.add(refresh)
        return {"access_token": access, "refresh_token": refresh, "token_type": "Bearer", "scope": "openid",
                "id_token": "eyJ.fake.jwt", "expires_in": int(st.token_ttl), "expires_at": time.time() + st.token_ttl}

    # --- dispatch ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        st = self.server_state
        parsed = urlsplit(self.path)  # not urlparse: keep ';jsessionid=' in the path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        st.requests.append(Recorded(method, parsed.path, query, dict(self.headers.items()), body))
        path = parsed.path
        for fragment, seconds in list(st.slow.items()):
            if fragment in path:
                time.sleep(seconds)
        for fragment, count in list(st.fail_500.items()):
            if fragment in path and count > 0:
                st.fail_500[fragment] = count - 1
                return self._reply(500, {"error": "Internal Server Error"})
        if path in st.redirect_to:
            return self._reply(307, "", ctype="text/html", headers={"Location": st.redirect_to[path]})
        norm = "/" + "/".join(p for p in path.split("/") if p)  # the client sends stm32ai//analyze
        mode = st.hostile.get(norm)
        if mode:
            return self._hostile(mode, norm)
        try:
            return self._route(method, path, norm, query, body)
        except Exception as exc:  # pragma: no cover - shows server bugs in the test output
            return self._reply(500, {"error": f"fake server bug: {exc!r}"})

    def _hostile(self, mode: str, norm: str) -> None:
        st = self.server_state
        if mode == "redirect_loop":
            return self._redirect(f"{st.url}{norm}?n={time.monotonic()}")
        if mode == "redirect_file":
            return self._redirect("file:///etc/passwd")
        if mode == "deep_json":
            return self._reply(200, "[" * 100_000 + "]" * 100_000, ctype="application/json;charset=utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        try:
            if mode == "drip":
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b"[")
                for _ in range(240):
                    time.sleep(0.5)
                    self.wfile.write(b" ")
                    self.wfile.flush()
            elif mode == "endless":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                chunk = b" " * (1 << 20)
                self.wfile.write(b"1\r\n[\r\n")
                for _ in range(256):
                    self.wfile.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:  # the client hung up
            pass
        self.close_connection = True

    def _route(self, method, path, norm, query, body) -> None:
        st = self.server_state
        # ---- SSO ----------------------------------------------------------------------------
        if norm == "/as/authorization.oauth2" and method == "GET":
            if (query.get("response_type") != "code" or query.get("scope") != "openid"
                    or query.get("redirect_uri") != st.callback or query.get("response_mode") != "query"
                    or not query.get("client_id")):
                return self._reply(400, "<html>invalid_request</html>", ctype="text/html")
            pf = secrets.token_hex(8)
            st._sso_sessions[pf] = {"client_id": query["client_id"], "redirect_uri": query["redirect_uri"]}
            service = quote(f"{st.url}/as/resume?pf={pf}", safe="")
            return self._redirect(f"{st.url}/cas/login?service={service}", [f"PF={pf}; Path=/; HttpOnly"])
        if norm == "/cas/login" and method == "GET":
            if self._cookies().get("PF") not in st._sso_sessions:
                return self._reply(400, "<html>no SSO session</html>", ctype="text/html")
            jsession, lt = secrets.token_hex(8), "LT-" + secrets.token_hex(6)
            st._cas_sessions[jsession] = {"lt": lt, "service": query.get("service", "")}
            action = html.escape(st.login_form_action or f"/cas/login;jsessionid={jsession}?service="
                                 f"{quote(query.get('service', ''))}&locale=en")
            page = (f"<!DOCTYPE html><html><body><div class='login'>\n"
                    f"<form id=\"fm1\" class=\"fm-v clearfix\"\n   action=\"{action}\" method=\"post\">\n"
                    f"<input id=\"username\" name=\"username\" type=\"text\" value=\"\"/>\n"
                    f"<input id=\"password\" name=\"password\" type=\"password\" value=\"\"/>\n"
                    f"<input type=\"hidden\" name=\"lt\" value=\"{lt}\" />\n"
                    f"<input type=\"hidden\" name=\"_eventId\" value=\"submit\" />\n"
                    f"</form></div></body></html>")
            return self._reply(200, page, ctype="text/html;charset=UTF-8",
                               headers={"Set-Cookie": f"JSESSIONID={jsession}; Path=/cas; HttpOnly"})
        if path.startswith("/cas/login;jsessionid=") and method == "POST":
            jsession = path.split("=", 1)[1]
            session = st._cas_sessions.get(jsession)
            form = self._form(body)
            if session is None or self._cookies().get("JSESSIONID") != jsession:
                return self._reply(400, "<html>session expired</html>", ctype="text/html")
            if form.get("lt") != session["lt"] or form.get("_eventId") != "Login":
                return self._reply(400, "<html>bad form</html>", ctype="text/html")
            if st.blocked:
                return self._reply(200, f"<html><div class='errors'>{BLOCKED_TEXT}</div></html>", ctype="text/html")
            if form.get("username") != st.username or form.get("password") != st.password:
                return self._reply(200, f"<html><div class='errors'>{WRONG_PASSWORD_TEXT}</div></html>",
                                   ctype="text/html")
            ticket = "ST-" + secrets.token_hex(8)
            pf = parse_qs(urlparse(session["service"]).query).get("pf", [""])[0]
            st._sso_sessions.get(pf, {})["ticket"] = ticket
            return self._redirect(f"{session['service']}&ticket={ticket}",
                                  [f"CASTGC=TGT-{secrets.token_hex(6)}; Path=/cas; HttpOnly"])
        if norm == "/as/resume" and method == "GET":
            sso = st._sso_sessions.get(query.get("pf", ""))
            if not sso or self._cookies().get("PF") != query.get("pf") or sso.get("ticket") != query.get("ticket"):
                return self._reply(400, "<html>bad resume</html>", ctype="text/html")
            return self._redirect(f"{st.url}/idp/continue?" + urlencode({"pf": query["pf"]}))
        if norm == "/idp/continue" and method == "GET":
            sso = st._sso_sessions.pop(query.get("pf", ""), None)
            if not sso:
                return self._reply(400, "<html>bad state</html>", ctype="text/html")
            code = secrets.token_hex(10)
            st._codes[code] = sso["redirect_uri"]
            return self._redirect(f"{sso['redirect_uri']}?code={code}")
        if norm == "/callback":
            return self._reply(200, "<html>STM32Cube.AI Developer Cloud</html>", ctype="text/html")
        # ---- user service -------------------------------------------------------------------
        if norm == "/api/user_service/login/callback" and method == "POST":
            form = self._form(body)
            if st._codes.pop(form.get("code", ""), None) != form.get("redirect_url"):
                return self._reply(400, {"error": "invalid_grant"})
            st.logins += 1
            return self._reply(200, self._issue_tokens())
        if norm == "/api/user_service/login/refresh" and method == "POST":
            form = self._form(body)
            if st.refresh_fails or form.get("refresh_token") not in st.refresh_tokens:
                return self._reply(401, {"error": "invalid_grant"})
            st.refreshes += 1
            tokens = self._issue_tokens()
            st.refresh_tokens.discard(tokens["refresh_token"])
            del tokens["refresh_token"]  # the refresh token stays the same
            return self._reply(200, tokens)
        if norm == "/assets/versions.json" and method == "GET":
            return self._reply(200, st.versions())
        if norm == "/api/benchmark/api" and method == "GET":
            props = ({"model": {"type": "string"}, "args": {"type": "string"}} if st.legacy_benchmark_api else
                     {"model": {"type": "string"}, "optimization": {"type": "string"}, "version": {"type": "string"},
                      "atonnOptions": {"type": "object"}, "fromModel": {"type": "string"}})
            return self._reply(200, {"openapi": "3.0.0", "paths": {"/benchmark/{queue}": {"post": {"requestBody": {
                "content": {"application/json": {"schema": {"type": "object", "properties": props}}}}}}}})
        # ---- everything below needs a token ------------------------------------------------
        if not self._authorized():
            return self._reply(401, {"error": "Unauthorized"})
        if norm == "/api/user_service/login/authenticate" and method == "POST":
            return self._reply(200, {"sub": "user-42", "email": st.username})
        if norm == "/api/file/files/models":
            if method == "GET":
                return self._reply(200, [{"name": n, "size": len(b)} for n, b in st.models.items()])
            if method == "POST":
                form = self._form(body)
                if "file" not in form or not isinstance(form["file"], tuple):
                    return self._reply(400, {"upload": False})
                filename, data = form["file"]
                st.models[filename] = data
                return self._reply(200, {"upload": True})
        if norm.startswith("/api/file/files/models/"):
            name = norm.rsplit("/", 1)[1]
            if name not in st.models:
                return self._reply(404, {"error": "not found"})
            if method == "DELETE":
                del st.models[name]
                return self._reply(200, {"deleted": True})
            return self._reply(200, st.models[name], ctype="application/octet-stream")
        parts = norm.strip("/").split("/")
        if len(parts) >= 4 and parts[0] == "api" and parts[2] == "stm32ai":
            if parts[3] == "analyze" and method == "POST":
                args = json.loads(self._form(body).get("args", "{}"))
                if st.analyze_error:
                    return self._reply(200, {"status": "ko", "error": st.analyze_error})
                if args.get("model") not in st.models:
                    return self._reply(200, {"status": "ko", "error": "model not found"})
                rid = "rt-" + secrets.token_hex(6)
                st.runs[rid] = {"args": args, "polls": 0}
                return self._reply(200, {"runtimeId": rid})
            if parts[3] == "run" and len(parts) == 5 and method == "GET":
                run = st.runs.get(parts[4])
                if run is None:
                    return self._reply(404, {"error": "unknown run"})
                run["polls"] += 1
                if run["polls"] < 2:
                    return self._reply(200, {"state": "running", "result": None})
                return self._reply(200, {"state": "done", "result": st.analyze_result(run["args"]["model"])})
        if norm == "/api/benchmark/boards" and method == "GET":
            return self._reply(200, st.boards)
        if norm.startswith("/api/benchmark/benchmark/") and method == "POST":
            board_l = parts[-1]
            board = next((b for b in st.boards if b.lower() == board_l), None)
            data = json.loads(body or b"{}")
            if board is None:
                return self._reply(400, {"errors": [f"unknown queue {board_l}"]})
            if not st.boards[board].get("boardCount"):
                return self._reply(400, {"errors": [f"no board available in queue {board_l}"]})
            args = json.loads(data["args"]) if st.legacy_benchmark_api else data
            if data.get("model") not in st.models:
                return self._reply(400, {"errors": ["model not found"]})
            bid = "bm-" + secrets.token_hex(6)
            st.benchmarks[bid] = {"benchmarkId": bid, "board": board, "model": data["model"], "args": args,
                                  "mpu": "/mpu/" in norm, "polls": 0}
            return self._reply(200, {"benchmarkId": bid, "model": data["model"], "args": args})
        if norm.startswith("/api/benchmark/benchmark/") and method == "GET":
            bench = st.benchmarks.get(parts[-1])
            if bench is None:
                return self._reply(404, {"error": "unknown benchmark"})
            polls = bench["polls"]
            bench["polls"] += 1
            public = {k: bench[k] for k in ("benchmarkId", "board", "model", "args")}
            if st.stall:
                return self._reply(200, {**public, "state": "in_queue"})
            if polls < len(BENCHMARK_STATES):
                return self._reply(200, {**public, "state": BENCHMARK_STATES[polls]})
            if st.benchmark_error:
                return self._reply(200, {**public, "state": "error", "message": st.benchmark_error})
            result = st.benchmark_result(public)
            if st.result_patch is not None:
                st.result_patch(result)
            return self._reply(200, result)
        if norm == "/api/generate_nbg/optimize" and method == "POST":
            data = json.loads(body or b"{}")
            if data.get("model") not in st.models:
                return self._reply(400, {"errors": ["model not found"]})
            rid = "nbg-" + secrets.token_hex(4)
            st.runs[rid] = {"model": data["model"], "polls": 0}
            return self._reply(200, {"runtimeId": rid, "model": data["model"]})
        if norm.startswith("/api/generate_nbg/run/") and method == "GET":
            run = st.runs.get(parts[-1])
            if run is None:
                return self._reply(404, {"error": "unknown run"})
            run["polls"] += 1
            if run["polls"] < 2:
                return self._reply(200, {"state": "in_queue"})
            blob = run["model"].rsplit(".", 1)[0] + "_nbg.nb"
            st.models[blob] = b"NBG" + st.models[run["model"]]
            return self._reply(200, {"state": "done", "blobName": blob})
        return self._reply(404, {"error": f"no route {method} {norm}"})


@pytest.fixture
def devcloud(monkeypatch, tmp_path):
    """A running fake Developer Cloud with the client's environment pointed at it (service URL
    variables, no proxy for 127.0.0.1, credentials unset, HOME in a temporary directory)."""
    server = FakeDevCloud().start()
    for var in ("stmai_username", "stmai_password", "USE_TEST_ROUTES", "NO_SSL_VERIFY", "STATS_TYPE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in server.env().items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    try:
        yield server
    finally:
        server.stop()
