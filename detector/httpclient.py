"""HTTP client settings shared by the reader (Prometheus API) and the writer (remote write).

The keys follow Prometheus' own client configuration (``tls_config``, ``basic_auth``,
``bearer_token_file``), so a block copied from a ``remote_write`` or scrape config reads the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import requests
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _readable(path: str) -> str:
    if not Path(path).is_file():
        raise ValueError(f"{path!r} is not a readable file")
    return path


ReadableFile = Annotated[str, AfterValidator(_readable)]


class TLSConfig(_Strict):
    ca_file: ReadableFile | None = Field(None, description="CA certificate(s) to verify the server with (PEM).")
    cert_file: ReadableFile | None = Field(None, description="Client certificate for mutual TLS (PEM); needs key_file.")
    key_file: ReadableFile | None = Field(None, description="Private key of cert_file (PEM).")
    insecure_skip_verify: bool = Field(False, description="Do not verify the server certificate (testing only).")

    @model_validator(mode="after")
    def _files(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class BasicAuth(_Strict):
    username: str = Field(min_length=1)
    password: str | None = Field(None, description="Prefer password_file: a config file is often world-readable.")
    password_file: ReadableFile | None = Field(None, description="File whose content (stripped) is the password.")

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuth:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        return self


class HttpClientConfig(_Strict):
    """Headers, TLS and credentials of an HTTP client."""

    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers (e.g. tenant IDs).")
    tls_config: TLSConfig = Field(default_factory=TLSConfig)
    basic_auth: BasicAuth | None = Field(None, description="HTTP basic authentication.")
    bearer_token_file: ReadableFile | None = Field(
        None, description="File holding a bearer token, read on every request (rotated tokens are picked up).",
    )

    @model_validator(mode="after")
    def _one_credential(self) -> HttpClientConfig:
        if self.basic_auth is not None and self.bearer_token_file is not None:
            raise ValueError("give basic_auth or bearer_token_file, not both")
        return self


class BearerTokenFile(requests.auth.AuthBase):
    """``Authorization: Bearer <token>`` with the token read from a file at each request."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {Path(self.path).read_text().strip()}"
        return request


def _pin_verify(session: requests.Session) -> None:
    """Make ``session.verify`` win over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``: requests lets those
    variables replace a session's own CA (psf/requests#3829), and container images often set them."""
    merge = session.merge_environment_settings

    def merge_keeping_verify(url, proxies, stream, verify, cert):
        settings = merge(url, proxies, stream, verify, cert)
        if verify is None:
            settings["verify"] = session.verify
        return settings

    session.merge_environment_settings = merge_keeping_verify


def _environment_once(session: requests.Session, url: str) -> None:
    """Take the environment's settings for ``url`` (``*_PROXY``/``NO_PROXY``, ``REQUESTS_CA_BUNDLE``/
    ``CURL_CA_BUNDLE``, ``~/.netrc``) into the session once, and stop requests reading them again.

    requests reads them on every request (about 0.2 ms: the whole environment is scanned for proxies),
    a sizeable share of a small scoring cycle; a service's environment does not change while it runs,
    and every request of the session goes to ``url``'s host.
    """
    settings = session.merge_environment_settings(url, {}, None, None, None)
    session.proxies = settings["proxies"]
    session.verify = settings["verify"]
    session.cert = settings["cert"]
    if session.auth is None:
        session.auth = requests.utils.get_netrc_auth(url)
    session.trust_env = False


def session_for(config: HttpClientConfig, session: requests.Session | None = None) -> requests.Session:
    """A :class:`requests.Session` (``session`` if given) set up with ``config``'s headers, TLS and auth,
    and with the environment's proxy, CA bundle and netrc settings for the config's ``url`` read once."""
    session = session or requests.Session()
    session.headers.update(config.headers)
    tls = config.tls_config
    session.verify = tls.ca_file or not tls.insecure_skip_verify
    if tls.ca_file or tls.insecure_skip_verify:
        _pin_verify(session)
    if tls.cert_file:
        session.cert = (tls.cert_file, tls.key_file)
    auth: Any = None
    if config.basic_auth is not None:
        basic = config.basic_auth
        password = basic.password or ""
        if basic.password_file:
            password = Path(basic.password_file).read_text().strip()
        auth = requests.auth.HTTPBasicAuth(basic.username, password)
    elif config.bearer_token_file:
        auth = BearerTokenFile(config.bearer_token_file)
    session.auth = auth
    url = getattr(config, "url", None)
    if url and session.trust_env:
        _environment_once(session, url)
    return session
