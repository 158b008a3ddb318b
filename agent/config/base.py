"""What every config section shares: strict sections, broker logins, topic filters, resolvers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationInfo,
    model_validator,
)

from agent.api import Module, Source
from agent.topics import validate_filter
from agent.units import Name, PositiveDuration

DeviceId = Name
TopicFilter = Annotated[str, AfterValidator(validate_filter)]


def _check_mqtt_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:  # first, so that no message below repeats it
        raise ValueError("put no password in the URL: use password_env or password_file")
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{url!r}: use mqtt://host:port or mqtts://host:port")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    try:
        parts.port  # noqa: B018  # raises on a port that is not a number or out of range
    except ValueError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    return url


MqttUrl = Annotated[str, AfterValidator(_check_mqtt_url)]


class _Section(BaseModel):
    # defer_build: a nested section is validated inside its parent and never needs a validator
    # (and serializer) of its own, which would stay in the daemon's memory for nothing.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class BrokerLogin(_Section):
    """Where and how to reach an MQTT broker. Secrets come from the environment or a file."""

    url: MqttUrl
    username: str | None = None
    password_env: str | None = None
    """Name of an environment variable that holds the password."""
    password_file: Path | None = None
    """A file whose first line is the password (keep it mode 600)."""
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive: PositiveDuration = 30.0

    @model_validator(mode="after")
    def _secrets_resolve(self, info: ValidationInfo) -> BrokerLogin:
        if self.password_env and self.password_file:
            raise ValueError("set password_env or password_file, not both")
        if (info.context or {}).get("resolve_secrets", True):  # the console checks elsewhere
            self.password()  # fail now, not at the first connect
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        return self

    def password(self) -> SecretStr | None:
        if self.password_env:
            if self.password_env not in os.environ:
                raise ValueError(f"password_env: environment variable {self.password_env} is not set")
            return SecretStr(os.environ[self.password_env])
        if self.password_file:
            try:
                return SecretStr(self.password_file.read_text().splitlines()[0])
            except (OSError, IndexError) as exc:
                raise ValueError(f"password_file: cannot read {self.password_file}: {exc}") from None
        return None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts" or self.tls_ca is not None


Resolver = Callable[[str], type[Module[Any]]]
"""A module's class from its ``use`` value, or ``ModuleLoadError`` saying why not."""
SourceResolver = Callable[[str], type[Source[Any]]]
"""A source's class from its ``type`` value, or ``ModuleLoadError`` saying why not."""
