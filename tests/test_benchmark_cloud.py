"""STM32Cube.AI Developer Cloud client against the local fake service (tests/stm32ai_server.py)."""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from stm32ai_server import (ACTIVATIONS, BLOCKED_TEXT, BOARDS, CYCLES, DURATION_MS, EXTERNAL_RAM_USED, EXTRA_FLASH,
                            EXTRA_RAM, INTERNAL_RAM_USED, KERNEL_FLASH, KERNEL_RAM, NODE_MACC, PARAM_SIZES, PASSWORD,
                            SERVICE_VERSION, TOOLCHAIN_FLASH, TOOLCHAIN_RAM, USERNAME, WEIGHTS,
                            devcloud)  # noqa: F401  (fixture)
from stmclf.benchmark import cloud
from stmclf.benchmark.cloud import (BenchmarkFailed, BlockedAccount, CloudClient, CloudError, Credentials, Endpoints,
                                    InvalidCredentials, LoginError, PollTimeout, ServiceUnreachable, TokenCache,
                                    UnknownBoard, cloud_footprint, get_credentials)
from stmclf.benchmark.results import Footprint
from stmclf.errors import UserError

BOARD = "STM32H747I-DISCO"


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("stmai_username", USERNAME)
    monkeypatch.setenv("stmai_password", PASSWORD)


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "mobilenet_v2_0.35_128_int8.tflite"
    path.write_bytes(b"TFL3" + bytes(range(256)) * 8)
    return path


def client(**kwargs) -> CloudClient:
    kwargs.setdefault("poll_interval", 0.01)
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("timeout", (2.0, 5.0))
    return CloudClient(**kwargs)


def token_file() -> Path:
    return Path(os.environ["HOME"]) / ".stmclf" / "stm32ai_token.json"


def assert_one_line_without_secrets(exc: BaseException) -> None:
    text = str(exc)
    assert "\n" not in text
    assert PASSWORD not in text and PASSWORD not in repr(exc)
    assert USERNAME not in text


# --- login, token cache, refresh ------------------------------------------------------------


def test_sso_login_follows_the_reference_sequence(devcloud, creds):
    c = client().connect("10.0.0")
    assert c.version == SERVICE_VERSION
    assert devcloud.logins == 1
    seq = [(r.method, r.path.split(";")[0]) for r in devcloud.requests]
    assert seq == [("GET", "/assets/versions.json"), ("GET", "/as/authorization.oauth2"), ("GET", "/cas/login"),
                   ("POST", "/cas/login"), ("GET", "/as/resume"), ("GET", "/idp/continue"),
                   ("POST", "/api/user_service/login/callback")]
    authorize = devcloud.requests[1]
    assert authorize.query == {"response_type": "code", "client_id": "oidc_prod_client_app_stm32ai", "scope": "openid",
                               "redirect_uri": devcloud.callback, "response_mode": "query"}
    assert authorize.headers["User-Agent"].startswith("Mozilla/5.0")
    login = devcloud.requests[3]
    assert login.path.startswith("/cas/login;jsessionid=")
    form = dict(p.split("=", 1) for p in login.body.decode().split("&"))
    assert set(form) == {"username", "password", "_eventId", "lt"} and form["_eventId"] == "Login"
    assert form["lt"].startswith("LT-")
    exchange = devcloud.requests[-1]
    assert b"redirect_url=" in exchange.body and b"code=" in exchange.body
    # the callback URL itself is never fetched (the code is read from the redirect)
    assert not devcloud.requests_to("/callback", "GET")


def test_token_cache_is_private_and_reused(devcloud, creds):
    client().connect()
    path = token_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert PASSWORD not in text and USERNAME not in text
    assert json.loads(text)["tokens"][devcloud.env()["USER_SERVICE_URL"]]["access_token"].startswith("at-")
    # a second client (a second process) reuses the token: no second login
    before = len(devcloud.requests)
    c2 = client()
    c2.connect()
    assert devcloud.logins == 1
    assert not [r for r in devcloud.requests[before:] if "/cas/" in r.path or "/as/" in r.path]
    assert c2.get_user()["sub"] == "user-42"
    assert c2.boards().keys() == BOARDS.keys()


def test_expired_token_is_refreshed_before_use(devcloud, creds):
    client().connect()
    cache = TokenCache(token_file())
    key = devcloud.env()["USER_SERVICE_URL"]
    token = cache.load(key)
    cache.save(key, {**token, "expires_at": 1.0})
    c = client().connect()
    assert (devcloud.logins, devcloud.refreshes) == (1, 1)
    assert cache.load(key)["access_token"] != token["access_token"]
    assert cache.load(key)["refresh_token"] == token["refresh_token"]  # merged with the stored token
    assert c.boards()


def test_401_refreshes_once_and_retries(devcloud, creds):
    c = client().connect()
    devcloud.expire_token_once = True
    assert list(c.boards()) == list(BOARDS)
    assert devcloud.refreshes == 1 and devcloud.logins == 1
    calls = devcloud.requests_to("/api/benchmark/boards")
    assert len(calls) == 2 and calls[0].headers["Authorization"] != calls[1].headers["Authorization"]


def test_401_with_failed_refresh_logs_in_again(devcloud, creds):
    c = client().connect()
    devcloud.expire_token_once = True
    devcloud.refresh_fails = True
    assert c.boards()
    assert devcloud.logins == 2


def test_token_not_sent_to_another_service(devcloud, creds, monkeypatch):
    client().connect()
    # the same cache file, another user service: no token of the first one is used
    monkeypatch.setenv("USER_SERVICE_URL", devcloud.url + "/other/user_service")
    with pytest.raises(CloudError):
        client(max_retries=0).connect()  # tries to log in against the other route (not served)
    assert devcloud.logins == 1


# --- retries, timeouts, unreachable -----------------------------------------------------------


def test_5xx_is_retried_with_backoff(devcloud, creds):
    c = client(max_retries=3).connect()
    devcloud.fail_500["/api/benchmark/boards"] = 2
    assert c.boards()
    assert len(devcloud.requests_to("/api/benchmark/boards")) == 3


def test_5xx_retries_are_bounded(devcloud, creds):
    c = client(max_retries=2).connect()
    devcloud.fail_500["/api/benchmark/boards"] = 100
    with pytest.raises(CloudError, match="HTTP 500 after 3 attempts") as err:
        c.boards()
    assert_one_line_without_secrets(err.value)
    assert len(devcloud.requests_to("/api/benchmark/boards")) == 3


def test_5xx_during_login_is_retried(devcloud, creds):
    devcloud.fail_500["/api/user_service/login/callback"] = 1
    client().connect()
    assert devcloud.logins == 1


def test_service_unreachable(devcloud, creds, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    monkeypatch.setenv("VERSIONS_URL", f"http://127.0.0.1:{port}/assets/versions.json")
    sleeps = []
    with pytest.raises(ServiceUnreachable, match="unreachable") as err:
        client(max_retries=3, sleep=sleeps.append).connect()
    assert_one_line_without_secrets(err.value)
    assert sleeps == [0.01, 0.02, 0.04]  # exponential backoff, bounded count
    assert isinstance(err.value, UserError)


def test_read_timeout_is_retried_then_reported(devcloud, creds):
    devcloud.slow["/assets/versions.json"] = 0.6
    with pytest.raises(ServiceUnreachable, match="ReadTimeout after 2 attempt"):
        client(max_retries=1, timeout=(2.0, 0.2)).connect()
    assert len(devcloud.requests_to("/assets/versions.json")) == 2


def test_proxy_from_environment(devcloud, creds, monkeypatch):
    # the fake service doubles as an HTTP proxy: absolute-URI requests reach it
    monkeypatch.setenv("VERSIONS_URL", "http://stm32ai-cs.invalid/assets/versions.json")
    monkeypatch.setenv("HTTP_PROXY", devcloud.url)
    monkeypatch.setenv("http_proxy", devcloud.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    c = client()
    assert c.resolve_version("10.0.0") == SERVICE_VERSION
    assert devcloud.requests_to("/assets/versions.json")[-1].headers["Host"] == "stm32ai-cs.invalid"


def test_no_ssl_verify(devcloud, monkeypatch):
    monkeypatch.setenv("NO_SSL_VERIFY", "1")
    c = client()
    assert c.verify is False and c._session.verify is False
    monkeypatch.delenv("NO_SSL_VERIFY")
    assert client()._session.verify is True


# --- login failures -----------------------------------------------------------------------------


def test_wrong_password(devcloud, monkeypatch):
    monkeypatch.setenv("stmai_username", USERNAME)
    monkeypatch.setenv("stmai_password", "not-the-password")
    with pytest.raises(InvalidCredentials, match="wrong username or password") as err:
        client().connect()
    assert_one_line_without_secrets(err.value)
    assert "not-the-password" not in str(err.value)
    assert len(devcloud.requests_to("/cas/login", "POST")) == 1  # not retried
    assert not token_file().exists()


def test_blocked_account(devcloud, creds):
    devcloud.blocked = True
    with pytest.raises(BlockedAccount, match="blocked") as err:
        client().connect()
    assert_one_line_without_secrets(err.value)
    assert BLOCKED_TEXT not in str(err.value)
    assert len(devcloud.requests_to("/cas/login", "POST")) == 1


def test_prompted_wrong_password_asks_again(devcloud):
    answers = iter([Credentials(USERNAME, "typo", "prompt"), Credentials(USERNAME, PASSWORD, "prompt")])
    client(credentials=lambda: next(answers)).connect()
    assert devcloud.logins == 1
    assert len(devcloud.requests_to("/cas/login", "POST")) == 2


def test_get_credentials_sources(monkeypatch):
    env = {"stmai_username": USERNAME, "stmai_password": PASSWORD}
    assert get_credentials(env).source == "env"
    piped = get_credentials({}, stdin=io.StringIO(f"{USERNAME}\n{PASSWORD}\n"))
    assert (piped.username, piped.password, piped.source) == (USERNAME, PASSWORD, "stdin")
    with pytest.raises(LoginError, match="stmai_username and stmai_password"):
        get_credentials({}, stdin=io.StringIO(""))

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("builtins.input", lambda prompt="": USERNAME)
    monkeypatch.setattr(cloud.getpass, "getpass", lambda prompt="": PASSWORD)
    typed = get_credentials({}, stdin=Tty())
    assert (typed.username, typed.password, typed.source) == (USERNAME, PASSWORD, "prompt")
    assert PASSWORD not in repr(typed) and USERNAME not in str(typed)
    with pytest.raises(TypeError):
        import pickle
        pickle.dumps(typed)


def test_credentials_never_logged(devcloud, monkeypatch, caplog, capsys, model):
    caplog.set_level(logging.DEBUG)  # urllib3 and requests at DEBUG too
    monkeypatch.setenv("stmai_username", USERNAME)
    monkeypatch.setenv("stmai_password", "wrong-" + PASSWORD)
    with pytest.raises(InvalidCredentials) as err:
        client().connect()
    assert_one_line_without_secrets(err.value)
    monkeypatch.setenv("stmai_password", PASSWORD)
    devcloud.expire_token_once = True
    c = client().connect()
    c.upload_model(model)
    c.boards()
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err, token_file().read_text()):
        assert PASSWORD not in text and USERNAME not in text
    assert "access_token" not in caplog.text and "at-" not in caplog.text  # tokens are not logged either


# --- boards, upload, benchmark, analyze ---------------------------------------------------------


def test_unknown_board_lists_the_valid_ones(devcloud, creds):
    c = client().connect()
    with pytest.raises(UnknownBoard) as err:
        c.check_board("STM32F4-NOPE")
    text = str(err.value)
    assert text.startswith("benchmarking.board: Board STM32F4-NOPE not listed")
    assert all(name in text for name in BOARDS) and "\n" not in text
    assert c.check_board("stm32h747i-disco") == BOARD


def test_upload_benchmark_and_parse(devcloud, creds, model, monkeypatch):
    monkeypatch.setenv("STATS_TYPE", "stmai_modelzoo_test")
    c = client().connect("10.0")  # "10.0" is the same version as "10.0.0"
    name = c.upload_model(model)
    assert devcloud.models[name] == model.read_bytes()
    fp = c.benchmark(name, BOARD, optimization="time", name_tag="mobilenet_128_proj")
    # request: JSON body with the CliParameters fields, the version, the model name
    trigger = devcloud.requests_to("/api/benchmark/benchmark/stm32h747i-disco", "POST")[0]
    body = json.loads(trigger.body)
    assert body == {"version": SERVICE_VERSION, "verbosity": 1, "allocateInputs": True, "allocateOutputs": True,
                    "series": "stm32f4", "splitWeights": False, "optimization": "time", "noCFiles": False,
                    "useCloud": False, "includeLibraryForIde": "gcc", "fromModel": "mobilenet_128_proj",
                    "atonnOptions": {}, "model": name}
    assert trigger.headers["Authorization"].startswith("Bearer at-")
    assert trigger.headers["Accept"] == "application/json"
    assert len(devcloud.requests_to("/api/benchmark/benchmark/bm-")) == 9  # every state polled
    # result → reference fields
    assert (fp.source, fp.cloud_mode) == ("cloud", "board") and fp.board == BOARD and fp.target == "mcu"
    assert (fp.ram_size, fp.rom_size, fp.macc) == (ACTIVATIONS, WEIGHTS, sum(NODE_MACC))
    assert fp.estimated_library_ram_size == KERNEL_RAM + EXTRA_RAM + TOOLCHAIN_RAM
    assert fp.estimated_library_flash_size == KERNEL_FLASH + EXTRA_FLASH + TOOLCHAIN_FLASH
    assert (fp.cycles, fp.duration_ms) == (CYCLES, DURATION_MS)
    assert (fp.internal_ram_consumption, fp.external_ram_consumption) == (INTERNAL_RAM_USED, EXTERNAL_RAM_USED)
    assert fp.cli_version_str == "10.0.0" and fp.device.startswith("STM32H747")
    m = fp.metrics()
    assert m["RAM Activations KiB"] == round(ACTIVATIONS / 1024, 2)
    assert m["Flash weights KiB"] == round(WEIGHTS / 1024, 2)
    assert m["MACCs M"] == round(sum(NODE_MACC) / 1e6, 3)
    assert m["RAM Runtime KiB"] == round((KERNEL_RAM + EXTRA_RAM) / 1024, 2)
    assert m["Total RAM KiB"] == round(m["RAM Activations KiB"] + m["RAM Runtime KiB"], 2)
    assert m["Estimated Flash Code KiB"] == round((KERNEL_FLASH + EXTRA_FLASH + TOOLCHAIN_FLASH) / 1024, 2)
    assert m["Total Flash KiB"] == round(m["Flash weights KiB"] + m["Estimated Flash Code KiB"], 2)
    assert m["cycles"] == round(CYCLES / 1e6, 3) and m["inference_time ms"] == DURATION_MS
    assert m["Internal RAM usage"] == 147.0 and m["External RAM usage"] == 64.0
    assert "External Flash usage" not in m  # only reported when external flash is used
    record = fp.to_dict()
    assert (record["source"], record["cloud_mode"]) == ("cloud", "board")
    assert record["cycles M"] == m["cycles"] and record["cycles"] == CYCLES
    assert Footprint.from_dict(json.loads(json.dumps(record))) == fp


def test_external_flash_usage(devcloud, creds, model):
    devcloud.external_flash = True
    c = client().connect()
    fp = c.benchmark(c.upload_model(model), BOARD)
    # the reference reads layersInExternalFlash as internal and vice versa; so do we
    assert fp.internal_flash_consumption == PARAM_SIZES["conv2d_0_weights_array"]
    assert fp.external_flash_consumption == PARAM_SIZES["dense_1_weights_array"]
    assert fp.use_external_flash is True
    assert fp.metrics()["External Flash usage"] == round(PARAM_SIZES["dense_1_weights_array"] / 1024, 2)


def test_n6_and_mpu_parameters(devcloud, creds, model):
    c = client().connect()
    name = c.upload_model(model)
    c.benchmark(name, "STM32N6570-DK")
    body = json.loads(devcloud.requests_to("/api/benchmark/benchmark/stm32n6570-dk", "POST")[0].body)
    assert body["target"] == "stm32n6" and body["stNeuralArt"] == "default"
    assert body["atonnOptions"] == {"enable-epoch-controller": True} and "optimization" not in body
    fp = c.benchmark(name, "STM32MP257F-EV1")
    body = json.loads(devcloud.requests_to("/api/benchmark/benchmark/mpu/stm32mp257f-ev1", "POST")[0].body)
    assert body == {"version": SERVICE_VERSION, "engine": "hw_accelerator", "nbCores": 2, "model": name}
    assert fp.target == "mpu" and fp.rom_size == 2_621_440 and fp.ram_size == 12_582_912
    assert fp.metrics() == {"Model Size KiB": 2560.0, "Peak Ram KiB": 12288.0, "inference_time ms": 11.5,
                            "NPU usage": 91.0, "GPU usage": 0.0, "CPU usage": 9.0}
    assert fp.cli_version_str == "X-LINUX-AI 5.1.0"


def test_legacy_stringified_args(devcloud, creds, model):
    devcloud.legacy_benchmark_api = True
    c = client().connect()
    c.benchmark(c.upload_model(model), BOARD)
    body = json.loads(devcloud.requests_to("/api/benchmark/benchmark/stm32h747i-disco", "POST")[0].body)
    assert set(body) == {"args", "model"} and json.loads(body["args"])["optimization"] == "balanced"


def test_benchmark_error_state(devcloud, creds, model):
    devcloud.benchmark_error = "Build failed: region `RAM' overflowed by 41232 bytes"
    c = client().connect()
    with pytest.raises(BenchmarkFailed) as err:
        c.benchmark(c.upload_model(model), BOARD)
    assert str(err.value) == f"Benchmark failed on board {BOARD}: Build failed: region `RAM' overflowed by 41232 bytes"


def test_stalled_poll_times_out(devcloud, creds, model):
    devcloud.stall = True
    c = client().connect()
    with pytest.raises(PollTimeout, match="did not finish within 0.2 s .*'in_queue'") as err:
        c.benchmark(c.upload_model(model), BOARD, timeout=0.2)
    assert_one_line_without_secrets(err.value)


def test_rejected_benchmark(devcloud, creds, model):
    c = client().connect()
    name = c.upload_model(model)
    devcloud.boards["GHOST-BOARD"] = {"boardCount": 0}  # listed, but the queue refuses it
    with pytest.raises(BenchmarkFailed, match="wrong parameter"):
        c.benchmark(name, "GHOST-BOARD")
    with pytest.raises(CloudError, match="not on STM32Cube.AI Developer Cloud"):
        c.benchmark("never_uploaded.tflite", BOARD)


def test_analyze(devcloud, creds, model):
    c = client().connect()
    name = c.upload_model(model)
    fp = c.analyze(name, optimization="RAM", name_tag="tag_1")
    post = devcloud.requests_to("/analyze", "POST")[0]
    assert post.path == f"/api/{SERVICE_VERSION}/stm32ai//analyze"  # the reference's double slash
    assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
    from urllib.parse import parse_qs
    args = json.loads(parse_qs(post.body.decode())["args"][0])
    assert args["model"] == name and args["optimization"] == "ram" and args["fromModel"] == "tag_1"
    assert args["atonnOptions"] == {} and "statsType" in args
    assert devcloud.requests_to("/stm32ai//run/")  # polled
    assert (fp.source, fp.cloud_mode) == ("cloud", "analyze") and fp.board is None
    assert (fp.ram_size, fp.rom_size, fp.macc) == (ACTIVATIONS, WEIGHTS, sum(NODE_MACC))
    assert fp.estimated_library_flash_size == KERNEL_FLASH + EXTRA_FLASH + TOOLCHAIN_FLASH
    assert fp.cycles is None and "inference_time ms" not in fp.metrics()


def test_analyze_error(devcloud, creds, model):
    devcloud.analyze_error = "E010(InvalidModelError): Unsupported layer Custom"
    c = client().connect()
    with pytest.raises(CloudError, match="cloud analyze failed: E010"):
        c.analyze(c.upload_model(model))


def test_cloud_footprint_falls_back_to_analyze(devcloud, creds, model):
    devcloud.benchmark_error = "board busy"
    fp = cloud_footprint(model, BOARD, version="10.0.0", client=client())
    assert fp.cloud_mode == "analyze" and "board busy" in fp.notes[0]
    devcloud.benchmark_error = None
    fp = cloud_footprint(model, BOARD, client=client())
    assert (fp.source, fp.cloud_mode) == ("cloud", "board")
    with pytest.raises(UnknownBoard):
        cloud_footprint(model, "NOPE-BOARD", client=client())


def test_cloud_footprint_mp2_nbg(devcloud, creds, model, tmp_path):
    fp = cloud_footprint(model, "STM32MP257F-EV1", client=client(), work_dir=tmp_path / "out")
    nb = tmp_path / "out" / f"{model.stem}.nb"
    assert nb.read_bytes() == b"NBG" + model.read_bytes()
    assert fp.target == "mpu" and fp.model == nb.name
    assert devcloud.requests_to("/api/generate_nbg/optimize", "POST")


def test_unsupported_version_uses_latest(devcloud, creds, caplog):
    caplog.set_level(logging.WARNING)
    assert client().resolve_version("7.3.0") == SERVICE_VERSION
    assert "not supported" in caplog.text
    assert client().resolve_version("9.1") == "1.0.0"


def test_endpoints_from_environment():
    prod = Endpoints.from_env({})
    assert prod.analyze("2.0.0") == "https://stm32ai-cs.st.com/api/2.0.0/stm32ai//analyze"
    assert prod.analyze(None) == "https://stm32ai-cs.st.com/api/stm32ai//analyze"
    assert (prod.benchmark_trigger("STM32H747I-DISCO")
            == "https://stm32ai-cs.st.com/api/benchmark/benchmark/stm32h747i-disco")
    assert prod.benchmark_trigger("STM32MP257F-EV1", mpu=True).endswith("/benchmark/mpu/stm32mp257f-ev1")
    assert prod.models == "https://stm32ai-cs.st.com/api/file/files/models"
    assert (prod.sso, prod.client_id, prod.callback) == ("https://sso.st.com", "oidc_prod_client_app_stm32ai",
                                                          "https://stm32ai-cs.st.com/callback")
    qa = Endpoints.from_env({"USE_TEST_ROUTES": "1"})
    assert qa.sso == "https://qa-sso.st.com" and qa.client_id == "oidc_pre_prod_client_app"
    assert qa.boards == "https://stm32ai-cs-qa.st.com/api/benchmark/boards"
    custom = Endpoints.from_env({"BENCHMARK_SERVICE_URL": "http://h/b", "BASE_URL": "http://ignored/"})
    assert custom.boards == "http://h/b/boards" and custom.overridden == ("BENCHMARK_SERVICE_URL",)


def test_footprint_record():
    fp = Footprint(source="stedgeai", ram_size=2048, rom_size=10240, macc=1_500_000)
    assert fp.metrics() == {"RAM Activations KiB": 2.0, "Flash weights KiB": 10.0, "MACCs M": 1.5}
    assert fp.to_dict() == {"source": "stedgeai", "target": "mcu", "RAM Activations KiB": 2.0,
                            "Flash weights KiB": 10.0, "MACCs M": 1.5, "ram_size": 2048, "rom_size": 10240,
                            "macc": 1_500_000}
    with pytest.raises(ValueError):
        Footprint(source="guess")
    # benchmark.json files written before the source names were renamed still read
    old = Footprint.from_dict({"source": "board", "board": "STM32H747I-DISCO", "ram_size": 1, "duration_ms": 2.0})
    assert (old.source, old.cloud_mode, old.label) == ("cloud", "board", "cloud (board run)")
    assert Footprint.from_dict({"source": "cloud-analyze"}).cloud_mode == "analyze"
    assert (Footprint.from_dict({"source": "offline-estimate"}).source,
            Footprint.from_dict({"source": "offline-estimate"}).cloud_mode) == ("estimate", None)


# --- hostile replies: credentials, deadlines, sizes, malformed results -------------------------


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"{name} in benchmark.json")
    return json.loads(text, parse_constant=refuse)


def test_login_form_to_another_host_is_refused(devcloud, creds):
    other = devcloud.url.replace("127.0.0.1", "localhost") + "/steal"
    devcloud.login_form_action = other
    with pytest.raises(cloud.UnsafeLogin) as err:
        client().connect()
    text = str(err.value)
    assert_one_line_without_secrets(err.value)
    assert "http://localhost:" in text and "/steal" in text and "no credentials were sent" in text
    # the server saw no request carrying the password, and nothing at all went to /steal
    assert not devcloud.requests_to("/steal")
    assert not [r for r in devcloud.requests if PASSWORD.encode() in r.body or b"password=" in r.body]


def test_login_form_scheme_and_port_must_match(devcloud, creds):
    devcloud.login_form_action = devcloud.url.replace("http://", "https://") + "/cas/login?x=1"
    with pytest.raises(cloud.UnsafeLogin) as err:
        client().connect()
    assert "https://127.0.0.1:" in str(err.value) and "?x=1" not in str(err.value)  # no query string
    assert not [r for r in devcloud.requests if b"password=" in r.body]


def test_plain_http_login_only_on_loopback():
    c = CloudClient(endpoints=Endpoints.from_env({"SSO_URL": "http://sso.example.com"}))
    with pytest.raises(cloud.UnsafeLogin, match="http://sso.example.com/cas/login"):
        c._check_login_target("http://sso.example.com/cas/login")
    c = CloudClient(endpoints=Endpoints.from_env({}))
    c._check_login_target("https://sso.st.com:443/cas/login;jsessionid=1?service=x")
    c._check_login_target("https://my.st.com/cas/login")  # ST's login pages on another host of st.com
    for url in ("https://sso.st.com.evil.example/cas/login", "http://sso.st.com/cas/login",
                "https://sso.st.com:8443/cas/login", "javascript:alert(1)", "https://evil.example/cas/login",
                "https://evilst.com/cas/login", "http://my.st.com/cas/login"):
        with pytest.raises(cloud.UnsafeLogin):
            c._check_login_target(url)


def test_unsafe_login_is_not_a_silent_fallback(devcloud, creds, tmp_path):
    from stmclf.benchmark.run import cloud_login_first
    from stmclf.config import load_config

    devcloud.login_form_action = devcloud.url.replace("127.0.0.1", "localhost") + "/steal"
    path = tmp_path / "cfg.yaml"
    path.write_text(f"tools:\n  stedgeai:\n    on_cloud: True\n    version: '10.0.0'\nbenchmarking:\n  board: {BOARD}\n")
    cfg = load_config(["--config", str(path)])
    with pytest.raises(cloud.UnsafeLogin):
        cloud_login_first(cfg, offline=False)


def test_drip_reply_stops_at_the_deadline(devcloud, creds, monkeypatch):
    monkeypatch.setenv(cloud.DEADLINE_ENV, "2")
    devcloud.hostile["/assets/versions.json"] = "drip"
    start = time.monotonic()
    with pytest.raises(ServiceUnreachable) as err:
        client().connect()
    assert time.monotonic() - start < 8
    text = str(err.value)
    assert "\n" not in text and f"{devcloud.url}/assets/versions.json" in text and "within 2 s" in text


def test_deadline_env_must_be_a_positive_number(monkeypatch):
    monkeypatch.setenv(cloud.DEADLINE_ENV, "soon")
    with pytest.raises(CloudError, match="STMCLF_CLOUD_DEADLINE"):
        CloudClient()


def test_endless_body_is_capped(devcloud, creds):
    import tracemalloc

    devcloud.hostile["/assets/versions.json"] = "endless"
    start = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(ServiceUnreachable) as err:
            client(max_json_bytes=2 ** 20).connect()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 10
    assert "more than the 1,048,576 bytes allowed" in str(err.value) and "/assets/versions.json" in str(err.value)
    assert peak < 16 << 20, peak  # what was read stops near the cap (the test process's own size does not count)


def test_download_is_capped(devcloud, creds, model, tmp_path):
    c = client(max_download_bytes=100).connect()
    c.upload_model(model)
    with pytest.raises(ServiceUnreachable, match="more than the 100 bytes allowed|2,052 bytes announced"):
        c.download_model(model.name, tmp_path / "out" / "m.nb")
    assert not list((tmp_path / "out").iterdir())  # no partial file left


@pytest.mark.parametrize("route,mode", [("/as/authorization.oauth2", "redirect_loop"),
                                        ("/as/authorization.oauth2", "redirect_file"),
                                        ("/api/benchmark/boards", "redirect_loop"),
                                        ("/api/benchmark/boards", "redirect_file"),
                                        ("/assets/versions.json", "deep_json")])
def test_hostile_replies_are_one_line(devcloud, creds, route, mode):
    devcloud.hostile[route] = mode
    with pytest.raises(CloudError) as err:
        client().connect().boards()
    text = str(err.value)
    assert "\n" not in text and text.startswith("unexpected reply from http://127.0.0.1:") or "login failed" in text
    assert "code=" not in text


def _patch(change):
    def patch(result):
        info = result["benchmark"]["info"]
        change(result, info, result["memoryMapping"]["memoryFootprint"])
    return patch


@pytest.mark.parametrize("change", [
    lambda r, info, mf: mf.update(activations=float("nan")),
    lambda r, info, mf: mf.update(weights=float("inf")),
    lambda r, info, mf: r.update(benchmark=["x"]),
    lambda r, info, mf: r["benchmark"].update(info="garbage"),
    lambda r, info, mf: info.update(buffers="nope"),
], ids=["nan", "inf", "bench_list", "info_str", "buffers_str"])
def test_malformed_board_results_fall_back_to_analyze(devcloud, creds, model, change):
    devcloud.result_patch = _patch(change)
    fp = cloud_footprint(model, BOARD, client=client())
    assert fp.cloud_mode == "analyze" and fp.ram_size == ACTIVATIONS
    assert "unexpected reply from" in fp.notes[0] and "\n" not in fp.notes[0]


def test_absurd_board_numbers_are_dropped_and_json_is_strict(devcloud, creds, model, tmp_path, caplog):
    def change(r, info, mf):
        mf.update(activations=-5_000_000, weights=10 ** 400)
        info["graphs"][0]["exec_time"]["duration_ms"] = -3.0
        info["graphs"][0]["exec_time"]["cycles"] = "1e999"
    devcloud.result_patch = _patch(change)
    fp = cloud_footprint(model, BOARD, client=client())
    assert fp.cloud_mode == "board"
    assert fp.ram_size is None and fp.rom_size is None and fp.duration_ms is None and fp.cycles is None
    assert "ram_size = -5000000 is not a plausible value" in caplog.text
    data = _strict_json(fp.write_json(tmp_path / "benchmark.json").read_text())
    assert "ram_size" not in data and "RAM Activations KiB" not in data


def test_benchmark_json_never_holds_nan(tmp_path):
    fp = Footprint(source="estimate", ram_size=1024, duration_ms=float("nan"), cycles_by_macc=float("inf"))
    assert fp.duration_ms is None and fp.cycles_by_macc is None
    fp.latency = {"ms": float("nan"), "inferences_per_s": 1.0}
    with pytest.raises(UserError, match="not a finite number"):
        fp.write_json(tmp_path / "benchmark.json")
