"""Optional extras: which import comes from which extra, and one clear line when one is missing.

A command that needs an optional dependency calls ``require_or_exit`` before it imports it, so
that an install without the extra prints one line naming the extra to install and exits 2,
never a ``ModuleNotFoundError`` traceback. Config validators use
``MissingExtra`` too: it is a ``ValueError``, so ``check`` reports it beside the key that asked
for the dependency.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from typing import NoReturn

DISTRIBUTION = "tidegate"
"""The name the package is installed by (``pip install 'NAME[extra]'``)."""

EXTRAS: dict[str, tuple[str, ...]] = {
    # extra -> the top-level modules it provides (pyproject.toml's optional-dependencies)
    "cloud": ("starlette", "uvicorn", "jinja2", "argon2", "psycopg", "orjson"),
    "nats": ("nats",),
    "signing": ("cryptography",),
    "ml": ("onnxruntime", "numpy"),
    "zstd": ("zstandard",),
    "fast": ("orjson",),
    "sparkplug": ("google.protobuf",),
    "modbus": ("pymodbus", "serial"),
    "serial": ("serial", "serial_asyncio_fast"),
    "http": ("httpx",),
    "opcua": ("asyncua",),
}


def install_command(extra: str) -> str:
    """The pip command that adds ``extra`` to this installation.

    Inside a venv (scripts/install.sh makes one under /opt) it is the venv's own pip: the
    system's ``pip`` on Debian refuses to install (PEP 668) or would install elsewhere.
    """
    pip = f"{sys.prefix}/bin/pip" if sys.prefix != sys.base_prefix else "pip"
    return f"{pip} install '{DISTRIBUTION}[{extra}]'"


class MissingExtra(ValueError):
    """``what`` needs ``module``, which comes with the optional ``extra`` and is not installed."""

    def __init__(self, extra: str, module: str, what: str) -> None:
        self.extra, self.module, self.what = extra, module, what
        super().__init__(
            f"{what} needs the '{extra}' extra ({module} is not installed): {install_command(extra)}"
        )


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed package
        return False


def require(extra: str, what: str, modules: Iterable[str] | None = None) -> None:
    """Return if ``modules`` (default: everything ``extra`` provides) can be imported;
    ``MissingExtra`` naming the first that cannot otherwise."""
    for module in EXTRAS[extra] if modules is None else modules:
        if not is_installed(module):
            raise MissingExtra(extra, module, what)


def fail(prog: str, exc: MissingExtra) -> NoReturn:
    """The one line on stderr, and exit status 2 (the usage-error status of every command)."""
    print(str(exc) if exc.what == prog else f"{prog}: {exc}", file=sys.stderr)
    sys.exit(2)


def require_or_exit(prog: str, extra: str, modules: Iterable[str] | None = None,
                    what: str | None = None) -> None:
    """``require`` for a command: the one line and exit 2 when something is missing."""
    try:
        require(extra, what or prog, modules)
    except MissingExtra as exc:
        fail(prog, exc)
