"""``t5ort serve`` on a shared network, as users meet it: API keys, probes, TLS, CORS, request ids and logs.

Every test starts a real server process on a free loopback port and drives it with real clients
(httpx, the openai client, huggingface_hub's InferenceClient, a headless browser for the playground).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from t5ort.demo import PREFIX
from test_playground import browser  # noqa: F401 (the fixture: headless chromium)
from test_serve import MODEL, Server, free_port

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

TEXT = PREFIX + "three hundred forty-two"
GERMAN = "dreihundertzweiundvierzig"


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


GENERATE = {"inputs": TEXT, "parameters": {"max_new_tokens": 12}}
SCORE = {"pairs": [{"source": TEXT, "target": GERMAN}]}
COMPLETION = {"model": "numbers", "prompt": TEXT, "max_tokens": 12, "temperature": 0}
# every model route: method, path, body
MODEL_ROUTES = [
    ("POST", "/generate", GENERATE), ("POST", "/generate_stream", GENERATE), ("POST", "/", GENERATE),
    ("POST", "/logits", GENERATE), ("POST", "/score", SCORE), ("POST", "/v1/completions", COMPLETION),
    ("GET", "/v1/models", None), ("GET", "/info", None),
]
OPEN_ROUTES = ["/live", "/ready", "/v2/health/live", "/v2/health/ready", "/health", "/docs", "/openapi.json",
               "/playground", "/metrics"]

# ---- API keys ------------------------------------------------------------------------------------------

KEY_FLAG, KEY_FILE, KEY_ENV = "flag-key-0123456789", "file-key-abcdefghij", "env-key-ABCDEFGHIJ"
WRONG = "wrong-key-zzzzzzzzzz"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server with a key from each source: --api-key, --api-key-file and T5ORT_API_KEY."""
    root = tmp_path_factory.mktemp("keyed")
    key_file = root / "keys.txt"
    key_file.write_text(f"# the keys of the numbers service\n\n  {KEY_FILE}  \n")
    s = Server(root / "server.log", "--api-key", KEY_FLAG, "--api-key-file", str(key_file),
               env={"T5ORT_API_KEY": KEY_ENV})
    yield s
    s.stop()


def assert_refused(r: httpx.Response, path: str, *, wrong_key: bool) -> None:
    assert r.status_code == 401, (path, r.status_code, r.text)
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert ('error="invalid_token"' in r.headers["www-authenticate"]) == wrong_key
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    if path.startswith("/v1/"):  # OpenAI's error object
        assert body["error"]["code"] == "invalid_api_key" and body["error"]["type"] == "invalid_request_error"
        assert "API key" in body["error"]["message"]
    else:  # TGI's
        assert body["error_type"] == "unauthorized" and "API key" in body["error"]
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])


@pytest.mark.parametrize("method, path, body", MODEL_ROUTES, ids=[f"{m} {p}" for m, p, _ in MODEL_ROUTES])
def test_model_routes_refuse_a_missing_or_wrong_key_and_take_each_configured_one(keyed, method, path, body):
    with keyed.client() as c:
        assert_refused(c.request(method, path, json=body), path, wrong_key=False)
        assert_refused(c.request(method, path, json=body, headers=bearer(WRONG)), path, wrong_key=True)
        assert_refused(c.request(method, path, json=body, headers={"Authorization": KEY_FLAG}), path,
                       wrong_key=False)  # not the Bearer scheme
        assert_refused(c.request(method, path, json=body, headers={"Authorization": f"Basic {KEY_FLAG}"}), path,
                       wrong_key=False)
        for key in (KEY_FLAG, KEY_FILE, KEY_ENV):
            r = c.request(method, path, json=body, headers=bearer(key))
            assert r.status_code == 200, (path, r.text)
        r = c.request(method, path, json=body, headers={"authorization": f"bearer  {KEY_ENV}"})
        assert r.status_code == 200, "the scheme is case-insensitive, extra spaces do not count"


def test_refusal_comes_before_reading_the_body(keyed):
    """Without a key, a malformed, oversized or unknown request learns nothing but 401."""
    with keyed.client() as c:
        for path, content in [("/generate", b'{"inputs": '), ("/v1/completions", b"x" * (2 << 20)),
                              ("/nope", b"{}"), ("/generate", '{"inputs": "\u00e9"}'.encode())]:
            r = c.post(path, content=content, headers={"content-type": "application/json"})
            assert_refused(r, path, wrong_key=False)
        r = c.post("/generate", json=GENERATE, headers={"Authorization": b"Bearer \xff\xfe"})
        assert_refused(r, "/generate", wrong_key=True)
        r = c.post("/generate", content=b'{"inputs": ', headers={"content-type": "application/json",
                                                                 **bearer(KEY_FLAG)})
        assert r.status_code == 422 and "not valid JSON" in r.json()["error"]  # with the key: the usual answer


def test_probes_docs_playground_and_metrics_stay_open(keyed):
    with keyed.client() as c:
        for path in OPEN_ROUTES:
            r = c.get(path)
            assert r.status_code == 200, (path, r.text)
        assert c.get("/health").json() == {"status": "ok"}


def test_refusals_are_counted_in_metrics(keyed):
    with keyed.client() as c:
        before = c.get("/metrics").text
        for _ in range(3):
            c.post("/generate", json=GENERATE, headers=bearer(WRONG))
        c.get("/v1/models")
        after = c.get("/metrics").text
    reason = 'reason="unauthorized"'
    assert metric(after, "t5ort_request_failures_total", reason) - metric(before, "t5ort_request_failures_total",
                                                                         reason) == 4
    for labels, n in [('route="/generate",status="401"', 3), ('route="/v1/models",status="401"', 1)]:
        assert metric(after, "t5ort_requests_total", labels) - metric(before, "t5ort_requests_total", labels) == n


def test_openai_and_huggingface_clients_send_their_key(keyed):
    openai = pytest.importorskip("openai")
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import TextGenerationError

    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY_FILE, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["numbers"]
    out = client.completions.create(model="numbers", prompt=TEXT, max_tokens=12, temperature=0)
    assert out.choices[0].text == GERMAN
    chunks = client.completions.create(model="numbers", prompt=TEXT, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in chunks) == GERMAN
    stranger = openai.OpenAI(base_url=keyed.url + "/v1", api_key=WRONG, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.completions.create(model="numbers", prompt=TEXT, max_tokens=4, temperature=0)
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"

    tgi = InferenceClient(model=keyed.url, token=KEY_ENV)
    assert tgi.text_generation(TEXT, max_new_tokens=12) == GERMAN
    assert "".join(list(tgi.text_generation(TEXT, max_new_tokens=12, stream=True))[:-1]) == GERMAN  # [-1]: EOS
    with pytest.raises(TextGenerationError, match="API key is not valid") as refused:  # TGI's error body, parsed
        InferenceClient(model=keyed.url, token=WRONG).text_generation(TEXT, max_new_tokens=4)
    assert refused.value.__cause__.response.status_code == 401


def test_keys_never_reach_the_log_or_info(keyed):
    with keyed.client() as c:
        c.post("/generate", json=GENERATE, headers=bearer(WRONG))
        info = c.get("/info", headers=bearer(KEY_FLAG)).text
        c.post("/generate", json=GENERATE, headers=bearer(KEY_FILE))
    log = keyed.output()
    assert "refused POST /generate: an API key that is not valid" in log  # refusals are logged ...
    for key in (KEY_FLAG, KEY_FILE, KEY_ENV, WRONG):  # ... the keys are not
        assert key not in log and key not in info


@pytest.fixture(scope="module")
def metrics_keyed(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("metrics_keyed") / "server.log", "--metrics-api-key", "scrape-key-123",
               env={"T5ORT_API_KEY": KEY_ENV})
    yield s
    s.stop()


def test_metrics_key_guards_metrics_only(metrics_keyed):
    with metrics_keyed.client() as c:
        assert_refused(c.get("/metrics"), "/metrics", wrong_key=False)
        assert_refused(c.get("/metrics", headers=bearer(KEY_ENV)), "/metrics", wrong_key=True)  # an API key is not it
        r = c.get("/metrics", headers=bearer("scrape-key-123"))
        assert r.status_code == 200 and "t5ort_request_failures_total" in r.text
        assert c.post("/generate", json=GENERATE, headers=bearer(KEY_ENV)).json()["generated_text"] == GERMAN
        assert_refused(c.post("/generate", json=GENERATE, headers=bearer("scrape-key-123")), "/generate",
                       wrong_key=True)


def test_bad_key_and_origin_settings_are_refused_at_start_without_showing_the_key(tmp_path):
    def serve(*args, env=None):
        return subprocess.run([sys.executable, "-m", "t5ort.cli", "serve", str(MODEL), "--port", "1", *args],
                              capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})

    empty = tmp_path / "empty.txt"
    empty.write_text("# no keys yet\n\n")
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("secret part-two\n")
    for args, env, said in [
        (("--api-key", " "), None, "--api-key #1: an API key must be non-empty"),
        (("--api-key-file", str(empty)), None, "holds no key"),
        (("--api-key-file", str(tmp_path / "missing.txt")), None, "cannot read it"),
        (("--api-key-file", str(spaced)), None, "line 1: an API key must be non-empty visible ASCII without spaces"),
        ((), {"T5ORT_API_KEY": ""}, "T5ORT_API_KEY (set, so it must hold a key)"),
        (("--api-key", "k", "--ray"), None, "not applied by --ray"),
        (("--cors-allow-origin", "app.example.com"), None, "'app.example.com' is not an origin"),
    ]:
        out = serve(*args, env=env)
        assert out.returncode == 2 and said in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and "part-two" not in out.stderr


def test_a_non_loopback_host_without_a_key_warns(tmp_path):
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning prints, then binding fails, so
    # nothing ever listens beyond loopback.
    out = subprocess.run([sys.executable, "-m", "t5ort.cli", "serve", str(MODEL), "--host", "192.0.2.1", "--port",
                          str(free_port()), "--threads", "1"], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "T5ORT_API_KEY"})
    assert "warning: --host 192.0.2.1" in out.stderr and "--api-key" in out.stderr, out.stderr
    assert out.returncode != 0
    quiet = subprocess.run([sys.executable, "-m", "t5ort.cli", "serve", str(MODEL), "--host", "192.0.2.1", "--port",
                            str(free_port()), "--threads", "1", "--api-key", "k"], capture_output=True, text=True,
                           timeout=60)
    assert "warning" not in quiet.stderr


# ---- the playground asks for the key ----------------------------------------------------------------------


def test_playground_asks_for_the_key_and_sends_it(browser, keyed):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(keyed.url + "/playground")
    wait = WebDriverWait(browser, 20)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "needs an API key"))
    field = browser.find_element(By.ID, "api_key")
    assert field.get_attribute("type") == "password" and "needed" in field.get_attribute("class")
    field.send_keys(WRONG, Keys.TAB)
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "API key is not valid"))
    field.clear()
    field.send_keys(KEY_FILE, Keys.TAB)
    wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "vocab 179"))
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: d.find_element(By.ID, "tokens").get_attribute("data-done") == "true")
    assert browser.find_element(By.ID, "text").text == "\u2192 " + GERMAN
    # kept for this tab only: in sessionStorage (a reload keeps it), never in localStorage or the URL
    assert browser.execute_script("return sessionStorage.getItem('t5ort.apiKey')") == KEY_FILE
    assert browser.execute_script("return localStorage.length") == 0 and KEY_FILE not in browser.current_url
    browser.refresh()
    wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "vocab 179"))


# ---- probes: /live, /ready, draining ---------------------------------------------------------------------


def test_probes_of_a_ready_server(keyed):
    with keyed.client() as c:
        assert c.get("/live").json() == {"status": "live"}
        assert c.get("/ready").json() == {"status": "ready"}
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True, "status": "ready"}
        assert c.get("/health").json() == {"status": "ok"}  # TGI's, unchanged


def padded_export(root: Path, pad_mib: int, *, record_checksum: bool = True) -> Path:
    """The bundled export with ``pad_mib`` MiB of zeros after its weights (a sparse hole: no disk used).

    The graphs read their weights at recorded offsets, so the model is the same; but ``t5ort.load``
    checks the file's sha256 first, so loading takes as long as a model that size (about 2 s per GiB
    here): long enough to watch a server load. Without ``record_checksum`` the check fails.
    """
    out = root / "padded"
    shutil.copytree(MODEL, out)
    weights = out / "weights.bin"
    data = weights.read_bytes()
    with open(weights, "r+b") as f:
        f.truncate(len(data) + (pad_mib << 20))
    if record_checksum:
        digest, zeros = hashlib.sha256(data), bytes(1 << 20)
        for _ in range(pad_mib):
            digest.update(zeros)
        manifest = json.loads((out / "t5ort.json").read_text())
        manifest["weights"].update(sha256=digest.hexdigest(), bytes=len(data) + (pad_mib << 20))
        (out / "t5ort.json").write_text(json.dumps(manifest))
    return out


def test_ready_is_503_while_the_model_loads_and_live_is_200(tmp_path):
    s = Server(tmp_path / "server.log", model=padded_export(tmp_path, 768), wait=False)
    try:
        with s.client() as c:
            deadline = time.monotonic() + 60
            while True:  # the port opens before the model is loaded
                try:
                    live = c.get("/live", timeout=1)
                    break
                except httpx.TransportError:
                    assert s.process.poll() is None and time.monotonic() < deadline, s.output()
                    time.sleep(0.02)
            assert live.status_code == 200
            ready = c.get("/ready")
            assert ready.status_code == 503 and ready.json() == {"status": "loading"}, ready.text
            v2 = c.get("/v2/health/ready")
            assert v2.status_code == 503 and v2.json() == {"ready": False, "status": "loading"}
            assert c.get("/health").status_code == 503
            r = c.post("/generate", json=GENERATE)
            assert r.status_code == 503 and r.json()["error_type"] == "loading" and r.headers["retry-after"] == "1"
            r = c.post("/v1/completions", json=COMPLETION)
            assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
            assert c.get("/info").status_code == 503
            assert c.get("/metrics").status_code == 200
            while c.get("/ready").status_code != 200:
                assert s.process.poll() is None and time.monotonic() < deadline, s.output()
                time.sleep(0.05)
            assert c.post("/generate", json=GENERATE).json()["generated_text"] == GERMAN
    finally:
        assert s.stop() == 0


def test_a_model_that_fails_to_load_stops_the_server_with_its_error(tmp_path):
    s = Server(tmp_path / "server.log", model=padded_export(tmp_path, 64, record_checksum=False), wait=False)
    assert s.process.wait(60) == 2
    out = s.output()
    assert "t5ort serve: error:" in out and "checksum differs" in out and "Traceback" not in out, out
    s.stop()


def test_sigterm_drains_ready_503_while_requests_are_still_served(tmp_path):
    s = Server(tmp_path / "server.log", "--drain-delay", "3", "--api-key", KEY_FLAG)
    long = {"inputs": TEXT, "parameters": {"max_new_tokens": 150, "min_new_tokens": 150, "details": True}}
    events, started = [], threading.Event()

    def stream():
        with s.client(headers=bearer(KEY_FLAG)) as c, c.stream("POST", "/generate_stream", json=long) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(30)
    signalled = time.monotonic()
    s.process.send_signal(signal.SIGTERM)
    with s.client() as c:
        deadline = time.monotonic() + 10
        while (ready := c.get("/ready")).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ready.status_code == 503 and ready.json() == {"status": "draining"}
        assert c.get("/v2/health/ready").json() == {"ready": False, "status": "draining"}
        assert c.get("/live").status_code == 200
        late = c.post("/generate", json=GENERATE, headers=bearer(KEY_FLAG))  # a request sent before the LB noticed
        assert late.status_code == 200 and late.json()["generated_text"] == GERMAN
    assert s.process.wait(30) == 0
    assert time.monotonic() - signalled >= 3
    reader.join(10)
    assert len(events) == 150 and events[-1]["details"]["finish_reason"] == "length"
    assert "draining: /ready answers 503" in s.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/live", timeout=2)
    s.stop()


# ---- TLS -------------------------------------------------------------------------------------------------


def _pem_pair(root: Path, name: str, *, issuer=None, server: bool = False) -> tuple[Path, Path, object, object]:
    """A certificate and its key: self-signed (a CA) without ``issuer``, else signed by ``issuer`` = (cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
    if issuer is None:
        builder = builder.issuer_name(subject).add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                                             critical=True)
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
        signer = key
    else:
        issuer_cert, signer = issuer
        builder = builder.issuer_name(issuer_cert.subject).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(signer, hashes.SHA256())
    cert_path, key_path = root / f"{name}.pem", root / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA with a server certificate (127.0.0.1) and a client certificate; another CA with its own client."""
    pytest.importorskip("cryptography")
    root = tmp_path_factory.mktemp("pki")
    ca, _, ca_cert, ca_key = _pem_pair(root, "ca")
    server_cert, server_key, _, _ = _pem_pair(root, "server", issuer=(ca_cert, ca_key), server=True)
    client_cert, client_key, _, _ = _pem_pair(root, "client", issuer=(ca_cert, ca_key))
    _, _, other_cert, other_key = _pem_pair(root, "other-ca")
    stranger_cert, stranger_key, _, _ = _pem_pair(root, "stranger", issuer=(other_cert, other_key))
    return {"ca": ca, "server": (server_cert, server_key), "client": (client_cert, client_key),
            "stranger": (stranger_cert, stranger_key)}


def tls_client_context(ca: Path, cert: tuple[Path, Path] | None = None):
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def test_https_with_a_client_that_trusts_the_ca_and_plain_http_fails_cleanly(tmp_path, pki):
    openai = pytest.importorskip("openai")
    cert, key = pki["server"]
    s = Server(tmp_path / "server.log", "--ssl-keyfile", str(key), "--ssl-certfile", str(cert), "--api-key", KEY_FLAG,
               scheme="https", client={"verify": tls_client_context(pki["ca"])})
    try:
        with s.client(headers=bearer(KEY_FLAG)) as c:
            assert c.get("/ready").json() == {"status": "ready"}
            assert c.post("/generate", json=GENERATE).json()["generated_text"] == GERMAN
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # the system CAs do not know it
            httpx.get(s.url + "/live")
        for _ in range(3):  # plain http to the TLS port: the client gets an error, the server goes on
            with pytest.raises(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{s.port}/live", timeout=5)
        with httpx.Client(verify=tls_client_context(pki["ca"])) as http:
            client = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY_FLAG, max_retries=0, http_client=http)
            assert client.completions.create(model="numbers", prompt=TEXT, max_tokens=12,
                                             temperature=0).choices[0].text == GERMAN
        assert "https://127.0.0.1" in s.output()
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.output()


def test_client_certificates_required_with_ssl_ca_certs(tmp_path, pki):
    cert, key = pki["server"]
    s = Server(tmp_path / "server.log", "--ssl-keyfile", str(key), "--ssl-certfile", str(cert),
               "--ssl-ca-certs", str(pki["ca"]), scheme="https",
               client={"verify": tls_client_context(pki["ca"], pki["client"])})
    try:
        for refused in (tls_client_context(pki["ca"]), tls_client_context(pki["ca"], pki["stranger"])):
            with pytest.raises(httpx.TransportError):  # no certificate, or one from another CA
                with httpx.Client(verify=refused) as c:
                    c.get(s.url + "/live", timeout=5)
        with s.client() as c:
            assert c.get("/ready").status_code == 200
            assert c.post("/generate", json=GENERATE).json()["generated_text"] == GERMAN
    finally:
        assert s.stop() == 0


def test_bad_tls_settings_are_refused_at_start(tmp_path, pki):
    cert, key = pki["server"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for args, said in [
        (("--ssl-certfile", str(cert)), "TLS needs both --ssl-keyfile"),
        (("--ssl-ca-certs", str(pki["ca"])), "give --ssl-keyfile and --ssl-certfile too"),
        (("--ssl-keyfile", str(key), "--ssl-certfile", str(garbage)), f"--ssl-certfile {garbage}"),
        (("--ssl-keyfile", str(key), "--ssl-certfile", str(cert), "--ssl-ca-certs", str(tmp_path / "none.pem")),
         "--ssl-ca-certs"),
    ]:
        out = subprocess.run([sys.executable, "-m", "t5ort.cli", "serve", str(MODEL), "--port", "1", *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)


# ---- CORS ------------------------------------------------------------------------------------------------

ALLOWED_ORIGIN = "https://app.example.com"


def preflight(c: httpx.Client, origin: str, path: str = "/generate") -> httpx.Response:
    return c.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                    "Access-Control-Request-Headers": "authorization, content-type"})


def test_cors_is_off_by_default(keyed):
    with keyed.client() as c:
        for r in (preflight(c, ALLOWED_ORIGIN),
                  c.post("/generate", json=GENERATE, headers={"Origin": ALLOWED_ORIGIN, **bearer(KEY_FLAG)})):
            assert not [h for h in r.headers if h.startswith("access-control-")], r.headers
        assert preflight(c, ALLOWED_ORIGIN).status_code == 401  # an OPTIONS request like any other: no key, no entry


@pytest.fixture(scope="module")
def cors(tmp_path_factory):
    """Allows ALLOWED_ORIGIN and a loopback origin where the browser test serves a page (``page_port``)."""
    page_port = free_port()
    s = Server(tmp_path_factory.mktemp("cors") / "server.log", "--api-key", KEY_FLAG,
               "--cors-allow-origin", ALLOWED_ORIGIN, "--cors-allow-origin", f"http://127.0.0.1:{page_port}")
    s.page_port = page_port
    yield s
    s.stop()


def test_cors_preflight_from_an_allowed_and_a_disallowed_origin(cors):
    with cors.client() as c:
        ok = preflight(c, ALLOWED_ORIGIN)  # no key needed: browsers send none with a preflight
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert {"authorization", "content-type"} <= {h.strip().lower() for h in
                                                     ok.headers["access-control-allow-headers"].split(",")}
        assert "POST" in ok.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in ok.headers
        bad = preflight(c, "https://evil.example.com")
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers

        r = c.post("/generate", json=GENERATE, headers={"Origin": ALLOWED_ORIGIN, **bearer(KEY_FLAG)})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        refused = c.post("/generate", json=GENERATE, headers={"Origin": ALLOWED_ORIGIN})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        other = c.post("/generate", json=GENERATE, headers={"Origin": "https://evil.example.com", **bearer(KEY_FLAG)})
        assert "access-control-allow-origin" not in other.headers


def test_cors_in_a_browser_page_from_another_origin(browser, cors):  # noqa: F811 (the fixture)
    """Pages served from two other loopback ports call the server: the listed origin may, the other may not."""
    import http.server

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>another origin</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    call = """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0] + "/generate", {method: "POST", body: JSON.stringify(arguments[1]),
              headers: {"Content-Type": "application/json", "Authorization": "Bearer " + arguments[2]}})
          .then(async (r) => done({status: r.status, id: r.headers.get("X-Request-Id"), body: await r.json()}))
          .catch((e) => done({error: String(e)}));
    """
    results = {}
    for name, port in (("listed", cors.page_port), ("stranger", 0)):
        pages = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
        threading.Thread(target=pages.serve_forever, daemon=True).start()
        try:
            browser.get(f"http://127.0.0.1:{pages.server_address[1]}/")
            results[name] = browser.execute_async_script(call, cors.url, GENERATE, KEY_FLAG)
        finally:
            pages.shutdown()
            pages.server_close()
    assert results["listed"]["status"] == 200 and results["listed"]["body"]["generated_text"] == GERMAN, results
    assert re.fullmatch(r"[0-9a-f]{16}", results["listed"]["id"])  # exposed to the page
    assert "Failed to fetch" in results["stranger"].get("error", ""), results


# ---- request ids and logs --------------------------------------------------------------------------------

JSON_FIELDS = {"time", "level", "logger", "message", "request_id", "method", "path", "status", "duration_ms"}


@pytest.fixture(scope="module")
def json_logged(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("json_logged") / "server.log", "--json-output", "--api-key", KEY_FLAG)
    yield s
    s.stop()


def test_every_response_carries_a_request_id_echoed_when_sane(json_logged):
    with json_logged.client() as c:
        fresh = set()
        for method, path, body, headers, status in [
            ("POST", "/generate", GENERATE, bearer(KEY_FLAG), 200),
            ("POST", "/generate", GENERATE, {}, 401),
            ("POST", "/generate", {"inputs": 3}, bearer(KEY_FLAG), 422),
            ("POST", "/v1/completions", {"model": "numbers"}, bearer(KEY_FLAG), 400),
            ("GET", "/nope", None, bearer(KEY_FLAG), 404),
            ("GET", "/live", None, {}, 200), ("GET", "/ready", None, {}, 200), ("GET", "/metrics", None, {}, 200),
            ("GET", "/docs", None, {}, 200),
        ]:
            r = c.request(method, path, json=body, headers=headers)
            assert r.status_code == status, (path, r.text)
            assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"]), (path, r.headers)
            fresh.add(r.headers["x-request-id"])
            r = c.request(method, path, json=body, headers={**headers, "X-Request-Id": "client-id_7.a"})
            assert r.headers["x-request-id"] == "client-id_7.a", path
        assert len(fresh) == 9  # a new one each time
        big = c.post("/generate", content=b"x" * (2 << 20), headers={**bearer(KEY_FLAG), "X-Request-Id": "big-1",
                                                                      "content-type": "application/json"})
        assert big.status_code == 413 and big.headers["x-request-id"] == "big-1"
        for insane in ("a" * 65, "has space", "semi;colon", "<script>", ""):  # replaced, never echoed
            r = c.get("/live", headers={"X-Request-Id": insane})
            assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"]), insane
        with c.stream("POST", "/generate_stream", json=GENERATE,
                      headers={**bearer(KEY_FLAG), "X-Request-Id": "stream-1"}) as r:
            assert r.headers["x-request-id"] == "stream-1"
            r.read()


def test_json_output_is_one_object_per_line_with_request_fields_and_no_keys(json_logged):
    with json_logged.client() as c:
        assert c.post("/generate", json=GENERATE, headers={**bearer(KEY_FLAG), "X-Request-Id": "trace-abc.1"}
                      ).status_code == 200
        c.post("/score", json=SCORE, headers={**bearer(WRONG), "X-Request-Id": "trace-refused"})
        c.get("/live", headers={"X-Request-Id": "trace-probe"})
        c.get("/generate?api_key=" + KEY_FLAG, headers={"X-Request-Id": "trace-query"})
    time.sleep(0.2)  # the access line is written once the answer is sent
    out = json_logged.output()
    lines = [json.loads(line) for line in out.splitlines()]  # every line is one JSON object
    assert all(set(line) >= JSON_FIELDS for line in lines)
    access = {line["request_id"]: line for line in lines if line["logger"] == "t5ort.serve.access"}
    done = access["trace-abc.1"]
    assert (done["method"], done["path"], done["status"], done["level"]) == ("POST", "/generate", 200, "info")
    assert 0 < done["duration_ms"] < 30_000 and done["message"].startswith("POST /generate 200")
    assert any(line["request_id"] == "trace-abc.1" and line["message"].startswith("finished:") for line in lines)
    refused = access["trace-refused"]
    assert (refused["path"], refused["status"]) == ("/score", 401)
    assert any(line["request_id"] == "trace-refused" and line["level"] == "warning" and line["path"] == "/score"
               for line in lines)
    assert access["trace-query"]["path"] == "/generate"  # the query string is not logged
    assert "trace-probe" not in access  # probes log at debug
    assert any(line["message"].startswith("serving 'numbers'") for line in lines)  # start-up messages too
    assert lines[0]["time"].endswith("+00:00")
    for secret in (KEY_FLAG, WRONG, "Bearer " + KEY_FLAG[:4], "Bearer " + WRONG[:4]):  # nor any header
        assert secret not in out


def test_text_logs_have_an_access_line_per_request(keyed):
    with keyed.client() as c:
        c.post("/generate", json=GENERATE, headers={**bearer(KEY_FLAG), "X-Request-Id": "text-trace-1"})
    time.sleep(0.2)
    assert re.search(r"INFO t5ort\.serve\.access \[text-trace-1\] POST /generate 200 [0-9.]+ ms", keyed.output())


def test_json_output_errors_are_json_lines_too(tmp_path):
    out = subprocess.run([sys.executable, "-m", "t5ort.cli", "serve", str(tmp_path / "missing"), "--json-output"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    line = json.loads(out.stderr.strip())
    assert line["level"] == "error" and "no such directory" in line["message"]


# ---- --help ------------------------------------------------------------------------------------------------


def test_help_groups_the_flags():
    out = subprocess.run([sys.executable, "-m", "t5ort.cli", "serve", "--help"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0
    groups, current = {}, None
    for line in out.stdout.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):  # a group's heading
            current = line.split(" (")[0].rstrip(":")
        elif current and (flag := re.match(r"^\s+(--[a-z-]+)", line)):
            groups.setdefault(current, []).append(flag.group(1))
    assert groups["server"] == ["--host", "--port", "--shutdown-grace", "--drain-delay", "--sse-keepalive"]
    assert groups["model and runtime"] == ["--model-name", "--provider", "--threads", "--spin"]
    assert groups["limits"] == ["--max-queue", "--max-input-tokens", "--max-new-tokens", "--max-top-n-tokens",
                                "--request-timeout"]
    assert groups["batching"] == ["--batching", "--max-batch-rows", "--max-batch-tokens", "--max-speculative-rows",
                                  "--max-batch-size", "--batch-window-ms", "--encoder-cache-mb"]
    assert groups["security"] == ["--api-key", "--api-key-file", "--metrics-api-key", "--ssl-keyfile",
                                  "--ssl-certfile", "--ssl-ca-certs", "--cors-allow-origin"]
    assert groups["logging"] == ["--log-level", "--json-output", "--quiet", "--otlp-endpoint", "--otlp-service-name"]


# ---- the deployment files (docs/deploy/, Dockerfile) ------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions() -> dict[str, str]:
    """The Dockerfile's last value of each instruction (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.strip().partition(" ")
            out[name.upper()] = value.strip()
    return out


def test_deploy_files_agree_with_the_server(tmp_path):
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((ROOT / "docs" / "deploy" / "kubernetes.yaml").read_text()))
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"Secret", "Deployment", "Service"}
    secret, deployment, service = by_kind["Secret"], by_kind["Deployment"], by_kind["Service"]
    docker = dockerfile_instructions()
    entrypoint, cmd = json.loads(docker["ENTRYPOINT"]), json.loads(docker["CMD"])
    healthcheck = json.loads(docker["HEALTHCHECK"].split(" CMD ", 1)[1])

    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    image_port = entrypoint[entrypoint.index("--port") + 1]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(image_port)}
    assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert f"127.0.0.1:{image_port}/ready" in healthcheck[-1]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"].items()
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    flags = dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--") and "=" in a)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (key_volume,) = [name for name, v in volumes.items() if "secret" in v]
    assert volumes[key_volume]["secret"]["secretName"] == secret["metadata"]["name"]
    key_name = Path(flags["api-key-file"]).name
    assert flags["api-key-file"] == f"{mounts[key_volume]}/{key_name}" and key_name in secret["stringData"]
    assert pod["securityContext"]["runAsUser"] == int(docker["USER"].split(":")[0]) and pod["securityContext"][
        "runAsNonRoot"]
    assert pod["terminationGracePeriodSeconds"] > float(flags["drain-delay"]) + float(flags["shutdown-grace"])
    assert container["resources"]["requests"]["cpu"] == flags["threads"]

    # the image's command line and the Deployment's args, run for real (paths mapped, host on loopback)
    keys_file = tmp_path / key_name
    keys_file.write_text(secret["stringData"][key_name])
    key = next(line for line in secret["stringData"][key_name].splitlines() if line and not line.startswith("#"))
    mapped = [str(MODEL) if a == "/models/numbers" else a.replace(flags["api-key-file"], str(keys_file))
              for a in [*entrypoint[2:], *cmd, *args[1:]]]
    assert args[0] == cmd[0] == "/models/numbers"
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "t5ort.cli", *entrypoint[1:2], *mapped, "--host", "127.0.0.1",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        assert healthcheck[:2] == ["python", "-c"]
        check = [sys.executable, "-c", healthcheck[2].replace(f":{image_port}/", f":{port}/")]
        while subprocess.run(check, capture_output=True).returncode != 0:  # the HEALTHCHECK, until ready
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert httpx.get(url + "/live").status_code == 200 and httpx.get(url + "/ready").status_code == 200
        assert httpx.post(url + "/generate", json=GENERATE).status_code == 401
        r = httpx.post(url + "/generate", json=GENERATE, headers=bearer(key), timeout=30)
        assert r.json()["generated_text"] == GERMAN
        assert httpx.get(url + "/v1/models", headers=bearer(key)).json()["data"][0]["id"] == "numbers"
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0
    assert all(json.loads(line) for line in err.splitlines())  # --json-output
    assert "no API key is set" not in err

    kubectl = shutil.which("kubectl")
    if kubectl:  # offline: decode into the typed Deployment; an unknown or misspelt field would be dropped
        typed = subprocess.run([kubectl, "set", "env", "--local", "-o", "json", "-f", "-", "T5ORT_PROBE=1"],
                               input=json.dumps(deployment), capture_output=True, text=True, timeout=60)
        assert typed.returncode == 0, typed.stderr
        back = json.loads(typed.stdout)

        def subset(mine, theirs, where="") -> None:
            if isinstance(mine, dict):
                for k, v in mine.items():
                    assert k in theirs, f"{where}.{k} was dropped by kubectl: not a field of a Deployment"
                    subset(v, theirs[k], f"{where}.{k}")
            elif isinstance(mine, list):
                for i, (a, b) in enumerate(zip(mine, theirs)):
                    subset(a, b, f"{where}[{i}]")

        subset(deployment, back)


# ---- SSE keepalive -----------------------------------------------------------------------------------------


def test_a_waiting_stream_gets_keepalive_comments_that_clients_skip(tmp_path):
    openai = pytest.importorskip("openai")
    from huggingface_hub import InferenceClient

    s = Server(tmp_path / "server.log", "--sse-keepalive", "0.2", "--max-batch-rows", "1", "--max-new-tokens",
               "5000")
    long = {"inputs": TEXT, "parameters": {"max_new_tokens": 3000, "min_new_tokens": 3000}}
    started = threading.Event()

    def hog():  # holds the one row for a few seconds
        with s.client() as c, c.stream("POST", "/generate_stream", json=long) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    started.set()

    try:
        threads = [threading.Thread(target=hog)]
        threads[0].start()
        assert started.wait(30)
        with s.client() as c, c.stream("POST", "/generate_stream", json=GENERATE) as r:
            lines = [line for line in r.iter_lines() if line]
        first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
        assert first_data >= 2 and set(lines[:first_data]) == {": keepalive"}, lines[:5]  # while queued
        events = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
        assert events[-1]["generated_text"] == GERMAN
        # the clients skip the comments (the row is still busy, so these streams wait too)
        started.clear()
        threads.append(threading.Thread(target=hog))
        threads[1].start()
        assert started.wait(30)
        tgi = InferenceClient(model=s.url)
        assert "".join(list(tgi.text_generation(TEXT, max_new_tokens=12, stream=True))[:-1]) == GERMAN
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0)
        chunks = client.completions.create(model="numbers", prompt=TEXT, max_tokens=12, temperature=0, stream=True)
        assert "".join(c.choices[0].text for c in chunks) == GERMAN
        for t in threads:
            t.join(60)
    finally:
        assert s.stop() == 0


# ---- fuzzed headers and paths: never a 5xx, never an echoed bad id -------------------------------------


def test_fuzzed_auth_request_id_and_origin_headers_never_get_a_5xx(cors):
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
                          max_size=80).map(str.strip)
    authorization = st.one_of(st.none(), header_text, st.just(f"Bearer {KEY_FLAG}"), st.just(f"bearer {KEY_FLAG}x"),
                              header_text.map(lambda t: ("Bearer " + t).strip()), st.just("Bearer"))
    request_id = st.one_of(st.none(), header_text, st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z"))
    origin = st.one_of(st.none(), st.just(ALLOWED_ORIGIN), header_text, st.just("null"))
    paths = st.sampled_from(["/generate", "/generate_stream", "/", "/logits", "/score", "/v1/completions",
                             "/v1/models", "/info", "/live", "/ready", "/metrics", "/playground", "/nope",
                             "/v1/nope", "//generate", "/generate/", "/%2e%2e/live"])
    methods = st.sampled_from(["GET", "POST", "OPTIONS", "PUT", "DELETE", "HEAD"])
    seen = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(methods, paths, authorization, request_id, origin)
    def check(method, path, auth, rid, org):
        headers = {k: v.encode("latin-1") for k, v in (("Authorization", auth), ("X-Request-Id", rid),
                                                      ("Origin", org)) if v is not None}
        body = GENERATE if path != "/v1/completions" else COMPLETION
        with httpx.Client(base_url=cors.url, timeout=30) as c:
            r = c.request(method, path, headers=headers, json=body if method in ("POST", "PUT") else None)
        assert r.status_code < 500, (method, path, headers, r.text)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        if rid is not None and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", rid):
            assert r.headers["x-request-id"] == rid
        else:
            assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"]), rid
        if r.status_code == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert method == "HEAD" or "error" in r.json()
        if r.status_code >= 400 and method != "HEAD" and r.headers.get("content-type") == "application/json":
            assert "error" in r.json(), r.text

    check()
    assert seen.get(401, 0) > 20 and seen.get(200, 0) > 5, seen


# ---- soak: a bounded mixed load, then no leaks --------------------------------------------------------------


def process_figures(pid: int) -> tuple[float, int, int]:
    """RSS in MB, open file descriptors and threads of ``pid`` (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir())), threads


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_soak_mixed_load_leaves_no_rows_fds_or_growing_memory(tmp_path):
    """Two equal phases of a mixed load (answers, streams read to the end or dropped early, OpenAI calls,
    scoring, refusals, bad bodies, a full queue) from 8 threads; bounded by T5ORT_SOAK_SECONDS (default 16) and
    2000 requests per phase. Then: no 5xx, nothing left in flight, descriptors and threads back where they
    were, and memory no longer growing in the second phase."""
    seconds = float(os.environ.get("T5ORT_SOAK_SECONDS", "16"))
    s = Server(tmp_path / "server.log", "--api-key", KEY_FLAG, "--max-queue", "6", "--max-batch-rows", "8",
               "--request-timeout", "20", "--sse-keepalive", "0.5")
    auth = bearer(KEY_FLAG)
    numbers = ["three hundred forty-two", "nineteen", "seventy-one thousand nine", "eight", "sixty-six"]

    def one(c: httpx.Client, rng) -> int:
        text = PREFIX + numbers[rng.randrange(len(numbers))]
        kind = rng.randrange(9)
        if kind == 0:
            return c.post("/generate", json={"inputs": text}).status_code  # no key
        if kind == 1:
            return c.post("/generate", json={"inputs": 3}, headers=auth).status_code
        if kind == 2:
            return c.post("/v1/completions", json={"model": "numbers", "prompt": [text, text], "max_tokens": 8,
                                                   "temperature": 0}, headers=auth).status_code
        if kind == 3:
            return c.post("/score", json={"pairs": [{"source": text, "target": "acht"}]}, headers=auth).status_code
        if kind in (4, 5):
            with c.stream("POST", "/generate_stream", headers=auth, json={"inputs": text, "parameters": {
                    "max_new_tokens": rng.choice([8, 64, 200]), "top_n_tokens": 2}}) as r:
                for i, _ in enumerate(r.iter_lines()):
                    if kind == 5 and i >= 3:
                        break  # leaves mid-stream
                return r.status_code
        return c.post("/generate", headers=auth, json={"inputs": text, "parameters": {
            "max_new_tokens": rng.choice([4, 16, 120]), "details": True, "num_beams": rng.choice([1, 1, 2])}}
                      ).status_code

    def phase(duration: float) -> dict[int, int]:
        import random

        stop, codes, lock = time.monotonic() + duration, {}, threading.Lock()
        budget = iter(range(2000))

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            with s.client() as c:
                while time.monotonic() < stop and next(budget, None) is not None:
                    code = one(c, rng)
                    with lock:
                        codes[code] = codes.get(code, 0) + 1

        workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(duration + 120)
        return codes

    def settled() -> tuple[float, int, int]:
        deadline = time.monotonic() + 30
        with s.client() as c:
            while True:
                text = c.get("/metrics").text
                if metric(text, "t5ort_batch_current_rows") == 0 and metric(text, "t5ort_queue_depth") == 0:
                    break
                assert time.monotonic() < deadline, "rows or queued requests left after the load"
                time.sleep(0.2)
        time.sleep(1.0)  # closed connections and finished threads are reaped
        return process_figures(s.process.pid)

    try:
        phase(2.0)  # warm-up: buffers, pools, the first batches
        rss0, fds0, threads0 = settled()
        first = phase(seconds / 2)
        rss1, fds1, threads1 = settled()
        second = phase(seconds / 2)
        rss2, fds2, threads2 = settled()
        codes = {k: first.get(k, 0) + second.get(k, 0) for k in {*first, *second}}
        assert all(code < 500 for code in codes), codes
        assert set(codes) <= {200, 400, 401, 422, 429}, codes
        assert codes.get(200, 0) > 100 and codes.get(401, 0) > 10, codes
        assert fds2 <= fds0 + 4 and fds1 <= fds0 + 4, (fds0, fds1, fds2)
        assert threads2 <= threads0 + 2, (threads0, threads1, threads2)
        assert rss2 - rss1 < 25, f"RSS {rss0:.0f} -> {rss1:.0f} -> {rss2:.0f} MB: still growing"
        with s.client() as c:  # still right
            assert c.post("/generate", json=GENERATE, headers=auth).json()["generated_text"] == GERMAN
        print(f"soak: {sum(codes.values())} requests {codes}; RSS {rss0:.0f}/{rss1:.0f}/{rss2:.0f} MB, "
              f"fds {fds0}/{fds1}/{fds2}, threads {threads0}/{threads1}/{threads2}")
    finally:
        assert s.stop() == 0
    assert "Traceback" not in s.output()


# ---- OpenTelemetry traces --------------------------------------------------------------------------------


def test_otlp_spans_join_the_callers_trace_and_hold_no_keys(tmp_path):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    import http.server

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    )

    received = []

    class Collector(http.server.BaseHTTPRequestHandler):  # a fake OTLP/HTTP collector
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, ExportTraceServiceRequest.FromString(body)))
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    try:
        s = Server(tmp_path / "server.log", "--api-key", KEY_FLAG, "--otlp-endpoint",
                   f"http://127.0.0.1:{collector.server_address[1]}", "--otlp-service-name", "numbers-svc")
        with s.client() as c:
            r = c.post("/generate", json=GENERATE, headers={**bearer(KEY_FLAG), "X-Request-Id": "traced-1",
                                                            "traceparent": f"00-{trace_id}-{parent_id}-01"})
            assert r.json()["generated_text"] == GERMAN
            c.post("/score", json=SCORE, headers={**bearer(WRONG), "X-Request-Id": "traced-refused"})
            with c.stream("POST", "/generate_stream", json=GENERATE,
                          headers={**bearer(KEY_FLAG), "X-Request-Id": "traced-stream"}) as stream:
                stream.read()
        assert s.stop() == 0  # the last spans are sent at shutdown
    finally:
        collector.shutdown()
        collector.server_close()
    assert received and all(path == "/v1/traces" for path, _ in received)
    spans = {}
    for _, export in received:
        for resource_spans in export.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            assert service == "numbers-svc"
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = {a.key: (a.value.string_value or a.value.int_value or a.value.double_value)
                                  for a in span.attributes}
                    spans[attributes.get("t5ort.request_id")] = (span, attributes)
    span, attributes = spans["traced-1"]
    assert span.name == "POST /generate" and span.kind == span.SPAN_KIND_SERVER
    assert span.trace_id.hex() == trace_id and span.parent_span_id.hex() == parent_id  # the caller's trace
    assert attributes["http.route"] == "/generate" and attributes["http.response.status_code"] == 200
    assert attributes["t5ort.time_to_first_byte_ms"] > 0
    span, attributes = spans["traced-refused"]
    assert attributes["http.response.status_code"] == 401 and span.parent_span_id == b""  # a new trace
    assert spans["traced-stream"][1]["http.route"] == "/generate_stream"
    everything = b"".join(export.SerializeToString() for _, export in received)
    assert KEY_FLAG.encode() not in everything and WRONG.encode() not in everything


def test_otlp_endpoint_without_opentelemetry_or_with_a_bad_url_is_refused(tmp_path):
    out = subprocess.run([sys.executable, "-m", "t5ort.cli", "serve", str(MODEL), "--port", "1", "--otlp-endpoint",
                          "127.0.0.1:4318"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "give the collector's OTLP/HTTP base URL" in out.stderr, out.stderr
    blocker = tmp_path / "sitecustomize.py"  # as if OpenTelemetry's SDK were not installed
    blocker.write_text("import sys\nsys.modules['opentelemetry.sdk'] = None\n")
    out = subprocess.run([sys.executable, "-m", "t5ort.cli", "serve", str(MODEL), "--port", "1", "--otlp-endpoint",
                          "http://127.0.0.1:4318"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert out.returncode == 2 and "pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http" in \
        out.stderr, out.stderr
