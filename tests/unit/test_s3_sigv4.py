"""The S3 client of our own (``snapshots/_s3.py``): Signature V4 against the examples AWS
publishes, encodings, where credentials, region and endpoint come from, and -- against a fake
server on loopback -- what goes on the wire, retries and following a bucket's region."""

from __future__ import annotations

import ast
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cargohold.snapshots import _s3
from cargohold.snapshots._backend import RepositoryError
from cargohold.snapshots._s3 import (
    EMPTY_SHA256,
    Credentials,
    S3Backend,
    canonical_query,
    canonical_request,
    error_info,
    find_credentials,
    find_endpoint,
    find_region,
    s3_address,
    s3_backend,
    sign,
    uri_encode,
)

SRC = Path(__file__).resolve().parents[2] / "src"

# The examples of "Signature Calculations for the Authorization Header: Transferring Payload in
# a Single Chunk (AWS Signature Version 4)" in the Amazon S3 API reference.
AWS = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
HOST = "examplebucket.s3.amazonaws.com"
WHEN = datetime(2013, 5, 24, tzinfo=UTC)
SCOPE = "Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"


def _signature(headers: dict[str, str]) -> str:
    return headers["authorization"].rpartition("Signature=")[2]


def test_the_aws_get_object_example() -> None:
    headers = sign(
        AWS, "us-east-1", "GET", HOST, "/test.txt", {}, {"Range": "bytes=0-9"}, EMPTY_SHA256, WHEN
    )
    assert headers["authorization"] == (
        f"AWS4-HMAC-SHA256 {SCOPE},SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert headers["x-amz-date"] == "20130524T000000Z"
    assert headers["x-amz-content-sha256"] == EMPTY_SHA256
    assert EMPTY_SHA256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    request, signed = canonical_request(
        "GET",
        "/test.txt",
        {},
        {
            "host": HOST,
            "range": "bytes=0-9",
            "x-amz-content-sha256": EMPTY_SHA256,
            "x-amz-date": "20130524T000000Z",
        },
        EMPTY_SHA256,
    )
    assert signed == "host;range;x-amz-content-sha256;x-amz-date"
    assert hashlib.sha256(request.encode()).hexdigest() == (
        "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
    )


def test_the_aws_put_object_example_with_a_key_to_encode() -> None:
    body = b"Welcome to Amazon S3."
    payload = hashlib.sha256(body).hexdigest()
    assert payload == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
    path = uri_encode("/test$file.text", keep_slash=True)
    assert path == "/test%24file.text"
    headers = sign(
        AWS,
        "us-east-1",
        "PUT",
        HOST,
        path,
        {},
        {"Date": "Fri, 24 May 2013 00:00:00 GMT", "x-amz-storage-class": "REDUCED_REDUNDANCY"},
        payload,
        WHEN,
    )
    assert headers["authorization"] == (
        f"AWS4-HMAC-SHA256 {SCOPE},"
        "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
        "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
    )


def test_the_aws_examples_with_a_query() -> None:
    lifecycle = sign(AWS, "us-east-1", "GET", HOST, "/", {"lifecycle": ""}, {}, EMPTY_SHA256, WHEN)
    assert _signature(lifecycle) == (
        "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
    )
    # given out of order: the canonical query sorts it
    listing = sign(
        AWS, "us-east-1", "GET", HOST, "/", {"prefix": "J", "max-keys": "2"}, {}, EMPTY_SHA256, WHEN
    )
    assert _signature(listing) == (
        "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    )
    assert listing["authorization"].startswith(
        f"AWS4-HMAC-SHA256 {SCOPE},SignedHeaders=host;x-amz-content-sha256;x-amz-date,"
    )


def test_a_session_token_is_sent_and_signed() -> None:
    temporary = Credentials(AWS.access_key, AWS.secret_key, "the-token")
    headers = sign(temporary, "us-east-1", "GET", HOST, "/test.txt", {}, {}, EMPTY_SHA256, WHEN)
    assert headers["x-amz-security-token"] == "the-token"
    assert (
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
        in headers["authorization"]
    )
    plain = sign(AWS, "us-east-1", "GET", HOST, "/test.txt", {}, {}, EMPTY_SHA256, WHEN)
    assert _signature(plain) != _signature(headers)
    assert AWS.secret_key not in repr(AWS) and "the-token" not in repr(temporary)


def test_encoding_of_keys_and_queries() -> None:
    assert uri_encode("packs/ab/0123abcdef") == "packs%2Fab%2F0123abcdef"
    assert uri_encode("packs/ab/0123abcdef", keep_slash=True) == "packs/ab/0123abcdef"
    assert uri_encode("a b+c=d&e~f_g-h.i*é", keep_slash=True) == (
        "a%20b%2Bc%3Dd%26e~f_g-h.i%2A%C3%A9"
    )
    assert (
        canonical_query(
            {"prefix": "repo/packs/", "list-type": "2", "continuation-token": "1/a+b=", "B": "x y"}
        )
        == "B=x%20y&continuation-token=1%2Fa%2Bb%3D&list-type=2&prefix=repo%2Fpacks%2F"
    )
    assert canonical_query({"lifecycle": ""}) == "lifecycle="
    assert canonical_query({}) == ""
    request, _ = canonical_request("GET", "/", {}, {"X-Odd": "  a   b  c "}, EMPTY_SHA256)
    assert "\nx-odd:a b c\n" in request  # names lower-cased, values trimmed, spaces collapsed


# -- credentials, region, endpoint ----------------------------------------------------------


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No AWS settings from this machine: an empty HOME, none of the variables."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name == "CARGOHOLD_S3_ENDPOINT":
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


def test_credentials_come_from_the_environment_before_the_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n"
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    assert find_credentials() == Credentials("ENVKEY", "envsecret", None)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "envtoken")
    assert find_credentials() == Credentials("ENVKEY", "envsecret", "envtoken")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")  # half a pair is no pair: the file's
    assert find_credentials() == Credentials("FILEKEY", "filesecret", None)


def test_credentials_from_a_named_file_and_profile(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "creds.ini"
    shared.write_text(
        "[default]\naws_access_key_id = DEFKEY\naws_secret_access_key = defsecret\n"
        "[work]\naws_access_key_id = WORKKEY\naws_secret_access_key = worksecret\n"
        "aws_session_token = worktoken\n"
        "[half]\naws_access_key_id = HALFKEY\n"
    )
    assert find_credentials() is None  # ~/.aws/credentials does not exist
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    assert find_credentials() == Credentials("DEFKEY", "defsecret", None)
    monkeypatch.setenv("AWS_PROFILE", "work")
    assert find_credentials() == Credentials("WORKKEY", "worksecret", "worktoken")
    monkeypatch.setenv("AWS_PROFILE", "half")
    assert find_credentials() is None
    monkeypatch.setenv("AWS_PROFILE", "absent")
    assert find_credentials() is None


def test_no_static_credentials_leaves_the_url_to_s3fs(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert s3_backend("s3://bucket/repo") is None
    (clean_env / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = K\naws_secret_access_key = S\n"
    )
    # a profile that assumes a role: the SDKs use the role, so must we (through s3fs)
    (clean_env / ".aws" / "config").write_text(
        "[default]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = default\n"
    )
    assert s3_backend("s3://bucket/repo") is None
    (clean_env / ".aws" / "config").write_text("[default]\nregion = eu-north-1\n")
    backend = s3_backend("s3://bucket/repo")
    assert isinstance(backend, S3Backend)
    try:
        assert backend.credentials == Credentials("K", "S", None)
        assert backend.region == "eu-north-1" and backend.endpoint is None
        assert (backend.bucket, backend.root, backend.url) == ("bucket", "repo", "s3://bucket/repo")
        assert backend.local is False
    finally:
        backend.close()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "K")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "S")
    assert s3_backend("/srv/repo") is None
    assert s3_backend("gs://bucket/repo") is None


def test_region_order(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_region() == "us-east-1"
    config = tmp_path / "config.ini"
    config.write_text("[default]\nregion = eu-west-3\n[profile work]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert find_region() == "eu-west-3"
    monkeypatch.setenv("AWS_PROFILE", "work")
    assert find_region() == "ap-south-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ca-central-1")
    assert find_region() == "ca-central-1"
    monkeypatch.setenv("AWS_REGION", "sa-east-1")
    assert find_region() == "sa-east-1"


def test_endpoint_order(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_endpoint() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://all.example")
    assert find_endpoint() == "https://all.example"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example")
    assert find_endpoint() == "https://s3.example"
    monkeypatch.setenv("CARGOHOLD_S3_ENDPOINT", "http://127.0.0.1:47480")
    assert find_endpoint() == "http://127.0.0.1:47480"


def test_addressing() -> None:
    assert s3_address("my-bucket", "eu-west-1", None) == (
        "https",
        "my-bucket.s3.eu-west-1.amazonaws.com",
        "",
    )
    # dots break the wildcard certificate; capitals and underscores are no DNS names
    for bucket in ("my.bucket", "My_Bucket", "ab"):
        assert s3_address(bucket, "eu-west-1", None) == (
            "https",
            "s3.eu-west-1.amazonaws.com",
            f"/{bucket}",
        )
    assert s3_address("my-bucket", "eu-west-1", "http://127.0.0.1:47480") == (
        "http",
        "127.0.0.1:47480",
        "/my-bucket",
    )
    assert s3_address("b", "us-east-1", "https://store.example/s3/") == (
        "https",
        "store.example",
        "/s3/b",
    )
    with pytest.raises(ValueError, match="not an http"):
        s3_address("b", "us-east-1", "ftp://store.example")
    with pytest.raises(RepositoryError, match="Cannot open repository"):
        S3Backend("s3://b/p", AWS, endpoint="127.0.0.1:47480")  # no scheme


def test_the_region_an_error_names() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is "
        b"malformed; the region 'us-east-1' is wrong; expecting 'eu-central-1'</Message>"
        b"<Region>eu-central-1</Region><RequestId>X</RequestId></Error>"
    )
    code, message, region = error_info(400, {}, body)
    assert (code, region) == ("AuthorizationHeaderMalformed", "eu-central-1")
    assert message.startswith("The authorization header is malformed")
    # a redirect (also the only hint a HEAD gets): the header
    redirect = b"<Error><Code>PermanentRedirect</Code><Message>Go</Message></Error>"
    assert error_info(301, {"x-amz-bucket-region": "ap-northeast-1"}, redirect) == (
        "PermanentRedirect",
        "Go",
        "ap-northeast-1",
    )
    assert error_info(403, {}, b"") == ("HTTP 403", "Forbidden", "")
    assert error_info(502, {}, b"<html>bad gateway") == ("HTTP 502", "Bad Gateway", "")


def test_opening_an_s3_repository_loads_no_s3_library() -> None:
    """The point of this client: a repository at s3:// with keys in the environment is opened
    without boto, s3fs, fsspec or aiohttp (their import and client were half of an unchanged
    snapshot's time); _s3 itself imports only the standard library beside its package."""
    script = """if True:
        import json, sys
        import cargohold.snapshots.repository as repository
        backend = repository._backend("s3://some-bucket/prefix")
        print(json.dumps({"type": type(backend).__name__, "all": sorted(sys.modules)}))
    """
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    loaded = json.loads(done.stdout)
    assert loaded["type"] == "S3Backend"
    everything = {name.split(".")[0] for name in loaded["all"]}
    assert not everything & {"boto3", "botocore", "aiobotocore", "s3fs", "fsspec", "aiohttp",
                             "requests", "urllib3"}
    tree = ast.parse((SRC / "cargohold" / "snapshots" / "_s3.py").read_text())
    imported = {(node.module or "").split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.Import) for alias in node.names}
    assert imported <= {"__future__", "configparser", "contextlib", "hashlib", "hmac", "http",
                        "os", "re", "secrets", "ssl", "tempfile", "threading", "time", "urllib",
                        "weakref", "xml", "collections", "dataclasses", "datetime", "email",
                        "cargohold"}, imported


# -- on the wire: a fake S3 server on loopback ----------------------------------------------


class FakeS3:
    """Answers each request with the next scripted (status, headers, body), else 200; records
    every request. ``"drop"`` as a header closes the connection after answering."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def _answer(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(size) if size else b""
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                status, headers, data = fake.script.pop(0) if fake.script else (200, {}, b"")
                self.send_response(status)
                for name, value in headers.items():
                    if name != "drop":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                if "drop" in headers:
                    self.close_connection = True

            do_GET = do_PUT = do_HEAD = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake() -> Iterator[FakeS3]:
    server = FakeS3()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off sleeps of the client, recorded instead of slept."""
    slept: list[float] = []

    class Clock:
        @staticmethod
        def sleep(seconds: float) -> None:
            slept.append(seconds)

    monkeypatch.setattr(_s3, "time", Clock)
    return slept


def _backend(fake: FakeS3, secret: str = "fakesecret") -> S3Backend:
    return S3Backend("s3://bkt/repo", Credentials("FAKEKEY", secret), endpoint=fake.endpoint)


def _error_xml(code: str, message: str, extra: str = "") -> bytes:
    return f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}</Error>".encode()


def test_what_goes_on_the_wire(fake: FakeS3, tmp_path: Path) -> None:
    backend = _backend(fake)
    try:
        backend.put("packs/ab/x y+z~", b"pack bytes")
        pack = tmp_path / "pack"
        pack.write_bytes(b"p" * (3 << 20))
        backend.put_file("index/0123", str(pack))
        assert not pack.exists()
        fake.script.append(
            (200, {}, b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")
        )
        assert backend.list("packs") == []
    finally:
        backend.close()
    put, put_file, listing = fake.requests
    assert (put["method"], put["path"]) == ("PUT", "/bkt/repo/packs/ab/x%20y%2Bz~")
    assert put["body"] == b"pack bytes"
    assert put["headers"]["content-length"] == "10"
    assert put["headers"]["x-amz-content-sha256"] == hashlib.sha256(b"pack bytes").hexdigest()
    assert put["headers"]["host"] == fake.endpoint.removeprefix("http://")
    assert (
        "SignedHeaders=content-length;host;x-amz-content-sha256;x-amz-date,"
        in put["headers"]["authorization"]
    )
    assert put_file["path"] == "/bkt/repo/index/0123" and put_file["body"] == b"p" * (3 << 20)
    assert put_file["headers"]["content-length"] == str(3 << 20)
    assert put_file["headers"]["x-amz-content-sha256"] == (
        hashlib.sha256(b"p" * (3 << 20)).hexdigest()
    )
    assert "transfer-encoding" not in put_file["headers"]
    assert listing["path"] == "/bkt?list-type=2&max-keys=1000&prefix=repo%2Fpacks%2F"


def test_transient_failures_are_retried_with_backoff(fake: FakeS3, sleeps: list[float]) -> None:
    fake.script += [
        (503, {}, _error_xml("SlowDown", "Reduce your request rate.")),
        (500, {}, _error_xml("InternalError", "Oops")),
        (200, {}, b""),
    ]
    backend = _backend(fake)
    try:
        backend.put("snapshots/one", b"record")
        assert len(fake.requests) == 3 and sleeps == [0.2, 0.4]
        fake.script += [(503, {}, _error_xml("SlowDown", "Reduce your request rate."))] * 4
        with pytest.raises(RepositoryError) as failed:
            backend.put("snapshots/two", b"record")
        assert str(failed.value) == (
            "Writing to s3://bkt/repo failed: SlowDown (Reduce your request rate.)."
        )
        assert len(fake.requests) == 7 and sleeps == [0.2, 0.4, 0.2, 0.4, 0.8]
    finally:
        backend.close()


def test_a_refusal_is_not_retried_and_never_shows_the_secret(
    fake: FakeS3, sleeps: list[float]
) -> None:
    fake.script.append((403, {}, _error_xml("AccessDenied", "Access Denied")))
    backend = _backend(fake, secret="s3cr3t-never-shown")
    try:
        with pytest.raises(RepositoryError) as failed:
            backend.put("repository.json", b"{}")
    finally:
        backend.close()
    assert str(failed.value) == "Writing to s3://bkt/repo failed: AccessDenied (Access Denied)."
    assert failed.value.hint == (
        "Check the URL, the credentials (AWS_ACCESS_KEY_ID, …) and CARGOHOLD_S3_ENDPOINT."
    )
    assert "s3cr3t" not in f"{failed.value} {failed.value.hint} {failed.value!r}"
    assert len(fake.requests) == 1 and sleeps == []


def test_the_bucket_is_followed_to_its_region(fake: FakeS3, sleeps: list[float]) -> None:
    fake.script += [
        (301, {"x-amz-bucket-region": "eu-west-2"}, _error_xml("PermanentRedirect", "Go")),
        (200, {}, b""),
        (
            400,
            {},
            _error_xml(
                "AuthorizationHeaderMalformed", "Wrong region", "<Region>ap-southeast-2</Region>"
            ),
        ),
        (200, {}, b"the record"),
    ]
    backend = _backend(fake)
    try:
        backend.put("snapshots/one", b"record")
        assert backend.region == "eu-west-2"
        assert backend.read("snapshots/one") == b"the record"
        assert backend.region == "ap-southeast-2"
    finally:
        backend.close()
    scopes = [r["headers"]["authorization"].split("/")[2] for r in fake.requests]
    assert scopes == ["us-east-1", "eu-west-2", "eu-west-2", "ap-southeast-2"]
    assert sleeps == []
    # a redirect to where we already are is an error, once
    fake.script += [
        (301, {"x-amz-bucket-region": "us-east-1"}, _error_xml("PermanentRedirect", "Elsewhere"))
    ]
    again = _backend(fake)
    try:
        with pytest.raises(RepositoryError, match=r"failed: PermanentRedirect \(Elsewhere\)\."):
            again.put("snapshots/two", b"record")
    finally:
        again.close()


def test_a_keep_alive_connection_the_server_closed_is_opened_again(
    fake: FakeS3, sleeps: list[float]
) -> None:
    fake.script.append((200, {"drop": "yes"}, b""))
    backend = _backend(fake)
    try:
        backend.put("packs/ab/one", b"1")
        backend.put("packs/ab/two", b"2")  # on the connection the server has closed
    finally:
        backend.close()
    assert [r["path"] for r in fake.requests] == [
        "/bkt/repo/packs/ab/one",
        "/bkt/repo/packs/ab/two",
    ]
    assert sleeps == []


def test_reading_a_range_missing_and_short(fake: FakeS3) -> None:
    fake.script += [
        (206, {}, b"world"),
        (404, {}, _error_xml("NoSuchKey", "The specified key does not exist.")),
        (206, {}, b"wor"),
        (200, {}, b"hello world"),  # a server that ignores Range
    ]
    backend = _backend(fake)
    try:
        assert backend.read("packs/ab/p", 6, 5) == b"world"
        with pytest.raises(RepositoryError, match=r"^packs/ab/q is missing from the repository"):
            backend.read("packs/ab/q", 0, 5)
        with pytest.raises(RepositoryError, match="shorter than its index says"):
            backend.read("packs/ab/p", 6, 5)
        assert backend.read("packs/ab/p", 6, 5) == b"world"
    finally:
        backend.close()
    ranges = [r["headers"].get("range") for r in fake.requests]
    assert ranges == ["bytes=6-10", "bytes=0-4", "bytes=6-10", "bytes=6-10"]


# -- hostile answers and settings (a review's findings) ---------------------------------------


def test_an_answer_declaring_an_unknown_encoding_is_malformed_not_a_traceback() -> None:
    body = b'<?xml version="1.0" encoding="bogus"?><Error><Code>X</Code></Error>'
    assert error_info(500, {}, body)[0] == "HTTP 500"


def test_a_listing_that_repeats_its_continuation_token_stops_with_an_error(
    fake: FakeS3,
) -> None:
    page = (b"<ListBucketResult><IsTruncated>true</IsTruncated>"
            b"<NextContinuationToken>same</NextContinuationToken></ListBucketResult>")
    fake.script = [(200, {}, page)] * 3
    with pytest.raises(RepositoryError, match="malformed"):
        _backend(fake).list("index")
    assert len(fake.requests) == 2  # the second page gave the same token: stopped there


def test_credentials_lose_a_stray_carriage_return_and_a_control_character_is_named_not_shown(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "KEYID\r")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t\r\n")
    found = find_credentials()
    assert found is not None and (found.access_key, found.secret_key) == ("KEYID", "s3cr3t")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok\x01en-value")
    with pytest.raises(RepositoryError) as refused:
        find_credentials()
    assert "AWS_SESSION_TOKEN" in refused.value.message
    assert "en-value" not in refused.value.message + (refused.value.hint or "")


def test_a_proxy_in_the_environment_leaves_the_url_to_s3fs(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "KEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert s3_backend("s3://bkt/repo") is not None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert s3_backend("s3://bkt/repo") is None
