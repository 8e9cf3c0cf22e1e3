"""A small S3 client of our own for snapshot repositories: AWS Signature V4 over ``http.client``.

Why it exists: s3fs and aiobotocore take about 0.3 s to import and to build a client, close to
half of an unchanged snapshot on S3. This back end needs only the standard library and keeps
one keep-alive connection per thread (packs are uploaded from a pool of threads).

What it does: the operations of ``_backend.Backend`` -- PUT from bytes or streamed from a file
(signed with the body's real SHA-256, so the server checks what it stored), ranged GET, HEAD,
DELETE, ListObjectsV2 page by page -- with retries of transient failures (connection errors,
timeouts, HTTP 5xx, SlowDown) and a switch to the bucket's region when AWS names another one.

What it does not do: no multipart upload (one PUT takes up to 5 GB, far above a pack's ~16 MiB);
no IAM roles, SSO, assumed roles, credential processes or instance metadata -- only static keys
from the environment or the shared credentials file. Without those ``s3_backend`` returns None
and the caller falls back to s3fs, which knows all the rest.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import hmac
import http.client
import os
import re
import ssl
import tempfile
import threading
import time
import urllib.parse
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from cargohold.snapshots._backend import REMOTE_HINT, RepositoryError, _missing, _short, pack_file

__all__ = [
    "Credentials",
    "S3Backend",
    "canonical_query",
    "canonical_request",
    "error_info",
    "find_credentials",
    "find_endpoint",
    "find_region",
    "s3_address",
    "s3_backend",
    "sign",
    "uri_encode",
]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ATTEMPTS = 4  # of one request, with BACKOFF, 2 x BACKOFF, 4 x BACKOFF seconds between them
BACKOFF = 0.2
TIMEOUT = 60.0  # seconds a socket may wait for the server
_BLOCK = 1 << 20  # hashing and sending a file body
_TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
_TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"})
_VIRTUAL_HOST = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")  # a bucket name fit for DNS
_REGION = re.compile(r"[a-z0-9-]{1,40}")
# In a profile of ~/.aws/config, what the AWS SDKs prefer to the shared credentials file.
_NOT_STATIC = ("role_arn", "web_identity_token_file", "sso_session", "sso_start_url")


# -- signing (AWS Signature Version 4) --------------------------------------------------------


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """SigV4's encoding: every byte but A-Z a-z 0-9 - _ . ~ as %XX (and '/' in a path)."""
    return urllib.parse.quote(text, safe="/" if keep_slash else "")


def canonical_query(query: Mapping[str, str]) -> str:
    pairs = sorted((uri_encode(k), uri_encode(v)) for k, v in query.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def canonical_request(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], payload: str
) -> tuple[str, str]:
    """The canonical request and its signed headers. ``path`` is already URI-encoded (as sent);
    every header given is signed."""
    canonical = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    names = sorted(canonical)
    signed = ";".join(names)
    lines = [method, path, canonical_query(query), *(f"{n}:{canonical[n]}" for n in names)]
    return "\n".join([*lines, "", signed, payload]), signed


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


def sign(
    credentials: Credentials,
    region: str,
    method: str,
    host: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload: str,
    now: datetime,
) -> dict[str, str]:
    """The headers of the signed request: ``headers`` plus host, x-amz-date,
    x-amz-content-sha256 (``payload``, the body's SHA-256 in hex), x-amz-security-token with a
    session token, and authorization."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = {k.lower(): v for k, v in headers.items()}
    out.update({"host": host, "x-amz-date": stamp, "x-amz-content-sha256": payload})
    if credentials.token:
        out["x-amz-security-token"] = credentials.token
    request, signed = canonical_request(method, path, query, out, payload)
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    digest = hashlib.sha256(request.encode()).hexdigest()
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{digest}"
    key = f"AWS4{credentials.secret_key}".encode()
    for part in (stamp[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope},"
        f"SignedHeaders={signed},Signature={signature}"
    )
    return out


# -- where to send, as whom -------------------------------------------------------------------


def _ini_section(path: str, section: str) -> dict[str, str]:
    parser = configparser.RawConfigParser()
    try:
        parser.read(os.path.expanduser(path), encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return {}
    return dict(parser[section]) if parser.has_section(section) else {}


def _profile() -> str:
    return os.environ.get("AWS_PROFILE") or "default"


def _profile_config() -> dict[str, str]:
    """The profile's section of ~/.aws/config (``[default]`` or ``[profile NAME]``)."""
    profile = _profile()
    path = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    return _ini_section(path, "default" if profile == "default" else f"profile {profile}")


def find_credentials() -> Credentials | None:
    """Static keys: the environment's, else the profile's in the shared credentials file; None
    when there are none, or when the profile's config says to use something else (a role,
    SSO) -- s3fs handles those."""
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        token = env.get("AWS_SESSION_TOKEN") or None
        return Credentials(
            _header_safe(env["AWS_ACCESS_KEY_ID"], "AWS_ACCESS_KEY_ID"),
            env["AWS_SECRET_ACCESS_KEY"].strip("\r\n"),  # (only signed with, never sent)
            _header_safe(token, "AWS_SESSION_TOKEN") if token else None,
        )
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or any(k in _profile_config() for k in _NOT_STATIC):
        return None
    path = env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    section = _ini_section(path, _profile())
    key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key or not secret:
        return None
    token = section.get("aws_session_token") or None
    return Credentials(
        _header_safe(key, "aws_access_key_id"),
        secret.strip("\r\n"),
        _header_safe(token, "aws_session_token") if token else None,
    )


def _header_safe(value: str, name: str) -> str:
    """A credential without surrounding blanks (a CRLF file leaves a \r), or an error that
    names the variable and never shows its value: http.client's own error would."""
    value = value.strip()
    if not value or any(not 0x20 <= ord(c) <= 0x7E for c in value):
        raise RepositoryError(
            f"{name} holds a character that cannot be sent to S3 (a control character or a "
            "non-ASCII letter).",
            hint="Check how the credential was set: a file with Windows line ends leaves a \\r.",
        )
    return value


def find_region() -> str:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(name):
            return os.environ[name]
    return _profile_config().get("region") or "us-east-1"


def find_endpoint() -> str | None:
    """An S3-compatible server to use instead of AWS (requests then go path-style)."""
    for name in ("CARGOHOLD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return None


def s3_address(bucket: str, region: str, endpoint: str | None) -> tuple[str, str, str]:
    """(scheme, host[:port], path of the bucket) of a bucket: path-style on an endpoint of
    one's own; on AWS virtual-hosted when the name fits in a DNS label, else path-style."""
    if endpoint:
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the S3 endpoint {endpoint!r} is not an http(s) URL")
        return parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{uri_encode(bucket)}"
    if _VIRTUAL_HOST.fullmatch(bucket):
        return "https", f"{bucket}.s3.{region}.amazonaws.com", ""
    return "https", f"s3.{region}.amazonaws.com", f"/{uri_encode(bucket)}"


# -- answers ----------------------------------------------------------------------------------


def _xml(body: bytes) -> ET.Element:
    """The document with namespaces dropped from every tag; ValueError when malformed."""
    try:
        root = ET.fromstring(body)
    except (ET.ParseError, LookupError) as exc:  # (LookupError: an unknown encoding declared)
        raise ValueError(f"malformed XML ({exc})") from None
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    return root


def _text(element: ET.Element, tag: str) -> str:
    found = element.find(tag)
    return (found.text or "") if found is not None else ""


def error_info(status: int, headers: Mapping[str, str], body: bytes) -> tuple[str, str, str]:
    """(code, message, region named by the server or "") of an answer. A HEAD has no body:
    its code is then its HTTP status."""
    code = message = region = ""
    if body:
        with contextlib.suppress(ValueError):
            root = _xml(body)
            code, message, region = (_text(root, t) for t in ("Code", "Message", "Region"))
    code = code or f"HTTP {status}"
    message = " ".join(message.split())[:300] or http.client.responses.get(status, "error")
    return code, message, headers.get("x-amz-bucket-region") or region


@dataclass
class _Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass(frozen=True)
class _File:
    path: str
    size: int
    sha256: str


def _close_all(connections: set[http.client.HTTPConnection], lock: threading.Lock) -> None:
    with lock:  # (a closed connection opens again when its thread sends the next request)
        for connection in connections:
            connection.close()


# -- the back end -----------------------------------------------------------------------------


class S3Backend:
    """A repository in an S3 bucket (``s3://bucket/prefix``), as ``FsspecBackend`` is one.
    Safe for use from several threads at once."""

    local = False

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        *,
        region: str = "us-east-1",
        endpoint: str | None = None,
        page_size: int = 1000,
        timeout: float = TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        self.bucket, _, root = self.url.removeprefix("s3://").partition("/")
        self.root = root.strip("/")
        self.credentials = credentials
        self.region = region
        self.endpoint = endpoint
        self.page_size = page_size  # keys per ListObjectsV2 page
        self.timeout = timeout
        try:
            if not self.url.startswith("s3://") or not self.bucket:
                raise ValueError("an S3 URL is s3://bucket/prefix")
            self._scheme, self._host, self._base = s3_address(self.bucket, region, endpoint)
            self._tls = None
            if self._scheme == "https":
                self._tls = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE"))
        except (ValueError, OSError) as exc:  # ssl.SSLError is an OSError
            message = f"Cannot open repository {url}: {exc}."
            raise RepositoryError(message, hint=REMOTE_HINT) from None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._connections: set[http.client.HTTPConnection] = set()
        self._closer = weakref.finalize(self, _close_all, self._connections, self._lock)
        self._tmp = tempfile.mkdtemp(prefix="cargohold-packs-")

    def close(self) -> None:
        """Close every thread's connection (a later request opens it again)."""
        _close_all(self._connections, self._lock)
        with contextlib.suppress(OSError):
            os.rmdir(self._tmp)  # only when empty

    # -- requests --------------------------------------------------------------------------

    def _connection(self, scheme: str, host: str) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to ``host``, and whether it served a request already."""
        held = getattr(self._local, "held", None)
        if held is not None and held[:2] == (scheme, host):
            return held[2], True
        self._drop()
        parts = urllib.parse.urlsplit(f"{scheme}://{host}")
        hostname, port = parts.hostname or host, parts.port
        connection = (
            http.client.HTTPSConnection(
                hostname, port, timeout=self.timeout, context=self._tls, blocksize=1 << 16
            )
            if scheme == "https"
            else http.client.HTTPConnection(hostname, port, timeout=self.timeout, blocksize=1 << 16)
        )
        with self._lock:
            self._connections.add(connection)
        self._local.held = (scheme, host, connection)
        return connection, False

    def _drop(self) -> None:
        held = getattr(self._local, "held", None)
        if held is not None:
            self._local.held = None
            held[2].close()
            with self._lock:
                self._connections.discard(held[2])

    def _switch_region(self, region: str) -> bool:
        """Follow the bucket to ``region``: False when that changes nothing."""
        with self._lock:
            if region == self.region or not _REGION.fullmatch(region):
                return False
            self.region = region
            self._scheme, self._host, self._base = s3_address(self.bucket, region, self.endpoint)
            return True

    def _path(self, base: str, name: str | None) -> str:
        """The URI-encoded path of ``name`` (of the bucket itself for None)."""
        if name is None:
            return base or "/"
        key = f"{self.root}/{name}" if self.root else name
        return f"{base}/{uri_encode(key, keep_slash=True)}"

    def _error(self, what: str, detail: str) -> RepositoryError:
        return RepositoryError(f"{what} {self.url} failed: {detail}.", hint=REMOTE_HINT)

    def _fail(self, what: str, response: _Response) -> RepositoryError:
        code, message, _ = error_info(response.status, response.headers, response.body)
        return self._error(what, f"{code} ({message})")

    def _request(
        self,
        what: str,
        method: str,
        name: str | None,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | _File | None = None,
    ) -> _Response:
        """One request, retried while it fails for a passing reason; any other answer is
        returned, whatever its status. A file body is read from disk anew for each attempt."""
        query = query or {}
        extra = dict(headers or {})
        if isinstance(body, _File):
            payload = body.sha256
            extra["content-length"] = str(body.size)
        elif body is not None:
            payload = hashlib.sha256(body).hexdigest()
            extra["content-length"] = str(len(body))
        else:
            payload = EMPTY_SHA256
        attempt, stale_retried, redirected = 0, False, False
        while True:
            with self._lock:  # (another thread may move the back end to the bucket's region)
                region, scheme, host, base = self.region, self._scheme, self._host, self._base
            connection, reused = self._connection(scheme, host)
            path = self._path(base, name)
            target = f"{path}?{canonical_query(query)}" if query else path
            now = datetime.now(UTC)
            signed = sign(self.credentials, region, method, host, path, query, extra, payload, now)
            try:
                response = self._exchange(what, connection, method, target, signed, body)
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                if isinstance(exc, ssl.SSLCertVerificationError):
                    raise self._error(what, f"TLS ({exc.verify_message})") from None
                if reused and isinstance(exc, ConnectionError) and not stale_retried:
                    stale_retried = True  # the server had closed an idle connection: again
                    continue
                failure = f"{type(exc).__name__} ({getattr(exc, 'strerror', None) or exc})"
            else:
                if response.status < 300:
                    return response
                code, message, named = error_info(response.status, response.headers, response.body)
                if response.status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
                    failure = f"{code} ({message})"
                elif response.status in (301, 307, 400) and named and not redirected:
                    if not self._switch_region(named):
                        return response
                    redirected = True  # the bucket lives in another region: once more there
                    continue
                else:
                    return response
            attempt += 1
            if attempt >= ATTEMPTS:
                raise self._error(what, failure)
            time.sleep(BACKOFF * 2 ** (attempt - 1))

    def _exchange(
        self,
        what: str,
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | _File | None,
    ) -> _Response:
        """Send once and read the whole answer (a file body streamed from disk)."""
        try:
            if not isinstance(body, _File):
                connection.request(method, target, body=body, headers=headers)
            else:
                try:
                    stream = open(body.path, "rb")  # noqa: SIM115 (the with below closes it)
                except OSError as exc:  # the local file, not the network: not worth retrying
                    raise self._error(what, f"cannot read {body.path} ({exc.strerror})") from None
                with stream:
                    connection.request(method, target, body=stream, headers=headers)
        except ValueError:  # http.client refusing a header value: never echo it (a secret)
            detail = "a header value cannot be sent (check the credentials)"
            raise self._error(what, detail) from None
        answer = connection.getresponse()
        data = answer.read()
        return _Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)

    # -- the Backend interface -------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists."""
        response = self._request("Reaching", "HEAD", None)
        if response.status == 200:
            return
        if response.status != 404:
            raise self._fail("Reaching", response)
        body = b""
        if self.endpoint is None and self.region != "us-east-1":
            body = (
                '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<LocationConstraint>{self.region}</LocationConstraint>"
                "</CreateBucketConfiguration>"
            ).encode()
        response = self._request("Creating the bucket of", "PUT", None, body=body)
        code = error_info(response.status, response.headers, response.body)[0]
        if response.status != 200 and code != "BucketAlreadyOwnedByYou":
            raise self._fail("Creating the bucket of", response)

    def put(self, name: str, data: bytes) -> None:
        response = self._request("Writing to", "PUT", name, body=data)
        if response.status != 200:
            raise self._fail("Writing to", response)

    def put_file(self, name: str, path: str) -> None:
        """Upload a local file, then remove it (whether the upload worked or not)."""
        try:
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    while block := f.read(_BLOCK):
                        digest.update(block)
            except OSError as exc:
                raise self._error("Uploading to", f"cannot read {path} ({exc.strerror})") from None
            body = _File(path, size, digest.hexdigest())
            response = self._request("Uploading to", "PUT", name, body=body)
            if response.status != 200:
                raise self._fail("Uploading to", response)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def read(self, name: str, offset: int = 0, length: int = -1) -> bytes:
        if length == 0:
            return b""
        headers = {}
        if length > 0:
            headers["range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset > 0:
            headers["range"] = f"bytes={offset}-"
        response = self._request("Reading from", "GET", name, headers=headers)
        data = response.body
        if response.status == 404:
            raise _missing(self.url, name)
        if response.status == 200 and headers:  # a server that ignored the range
            data = data[offset : offset + length] if length > 0 else data[offset:]
        elif response.status not in (200, 206, 416):
            raise self._fail("Reading from", response)
        if response.status == 416 or (length > 0 and len(data) != length):
            raise _short(self.url, name)
        return data

    def exists(self, name: str) -> bool:
        response = self._request("Reaching", "HEAD", name)
        if response.status in (200, 404):
            return response.status == 200
        raise self._fail("Reaching", response)

    def list(self, folder: str) -> list[tuple[str, int]]:
        """(name, size) of every object under ``folder``, names relative to the root."""
        strip = f"{self.root}/" if self.root else ""
        prefix = f"{strip}{folder.strip('/')}/" if folder.strip("/") else strip
        found: list[tuple[str, int]] = []
        token = ""
        seen: set[str] = set()
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(self.page_size)}
            if token:
                query["continuation-token"] = token
            response = self._request("Listing", "GET", None, query=query)
            if response.status == 404:  # no bucket: nothing in it
                return []
            if response.status != 200:
                raise self._fail("Listing", response)
            try:
                page = _xml(response.body)
                for item in page.iter("Contents"):
                    key = _text(item, "Key")
                    if key.startswith(prefix) and not key.endswith("/"):  # no folder markers
                        found.append((key.removeprefix(strip), int(_text(item, "Size") or 0)))
                token = _text(page, "NextContinuationToken")
                more = _text(page, "IsTruncated") == "true"
                if more and (not token or token in seen):
                    raise ValueError("truncated without a new continuation token")
                seen.add(token)
            except ValueError as exc:  # (int() of a bad Size included)
                raise self._error("Listing", f"the server's answer is malformed ({exc})") from None
            if not more:
                return sorted(found)

    def delete(self, name: str) -> None:
        response = self._request("Deleting from", "DELETE", name)
        if response.status not in (200, 204, 404):
            raise self._fail("Deleting from", response)

    def mtime(self, name: str) -> float:
        response = self._request("Reaching", "HEAD", name)
        if response.status == 404:
            raise _missing(self.url, name)
        if response.status != 200:
            raise self._fail("Reaching", response)
        try:
            return parsedate_to_datetime(response.headers["last-modified"]).timestamp()
        except (KeyError, TypeError, ValueError):
            raise self._error("Reaching", "the server's answer has no Last-Modified") from None

    def temp_file(self, session: str) -> str:
        return pack_file(self._tmp, session)


def s3_backend(url: str) -> S3Backend | None:
    """The back end of an ``s3://`` URL when static credentials exist; None otherwise (the
    caller then uses s3fs, which knows IAM roles, SSO and the rest)."""
    if not url.startswith("s3://"):
        return None
    credentials = find_credentials()
    if credentials is None or _proxied():
        return None
    return S3Backend(url, credentials, region=find_region(), endpoint=find_endpoint())


def _proxied() -> bool:
    """Whether the environment names an HTTP proxy (``HTTPS_PROXY`` and the like): s3fs goes
    through it, ``http.client`` would not -- so s3fs it is."""
    return any(
        os.environ.get(name)
        for name in (
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        )
    )
