"""Which environment variables are credentials, and keeping credentials out of what is
recorded (MLflow params and tags) and of what Ray ships and stores (runtime envs, task
arguments, pickled filesystems).

Every process takes its credentials from its own environment or the standard files and roles:
AWS's default chain (variables, ~/.aws, the node's instance role or the pod's service-account
role), MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN. On a cluster that is the node or pod
definition; on the local stack, the environment the Ray head starts with. What a driver hands
its workers says *where* (endpoints, regions, tracking URI, this project's MMDIFF_* switches),
never *who*. Besides those, training workers get the collective-communication and network
fabric settings (`FABRIC_PREFIXES`) and any prefix the user names (`--forward-env`), with the
same rule: credentials by name are never forwarded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

SECRET_NAME_PARTS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "API_KEY", "PRIVATE_KEY")
"""A variable whose name holds one of these is a secret: never forwarded, its value never recorded."""

IDENTITY_NAME_PARTS = ("ACCESS_KEY", "KEY_ID", "USERNAME", "PROFILE", "CREDENTIAL", "CERT")
"""A variable whose name holds one of these says who a process is or where its credentials
are: never forwarded (it would override the worker's own), though its value is not secret."""

FABRIC_PREFIXES = ("NCCL_", "TORCH_NCCL_", "FI_")
"""NCCL's settings (`NCCL_SOCKET_IFNAME`, `NCCL_IB_*`, `NCCL_DEBUG`), PyTorch's NCCL process
group's (`TORCH_NCCL_*`) and libfabric's (`FI_*`, EFA): set on the driver for a cluster's
network, needed in every worker process that joins the process group."""

MIN_PREFIX_CHARS = 2
"""A forwarded prefix this short or shorter would sweep in unrelated variables (`A`, `_`)."""

_VARIABLE_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

REDACTED = "***"

MIN_SECRET_CHARS = 8
"""Secret values shorter than this are not searched for in recorded text (they would match
ordinary words); URIs lose their user information whatever its length."""

_URI_USER_INFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]+@")


def is_secret(name: str) -> bool:
    return any(part in name.upper() for part in SECRET_NAME_PARTS)


def is_credential(name: str) -> bool:
    """A secret, or a variable that selects an identity (key id, user, profile, credentials file)."""
    return is_secret(name) or any(part in name.upper() for part in IDENTITY_NAME_PARTS)


def forwarded_settings(prefixes: tuple[str, ...], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables with these prefixes that a driver may hand its workers: all but credentials."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items() if name.startswith(prefixes) and not is_credential(name)}


def prefix_problems(prefixes: tuple[str, ...], flag: str = "--forward-env") -> list[str]:
    """What is wrong with prefixes a user asks to forward, each named with `flag`: not the start
    of a variable name, or too short to mean anything in particular."""
    found = []
    for prefix in prefixes:
        if not isinstance(prefix, str) or not _VARIABLE_PREFIX.match(prefix):
            found.append(f"{flag} {prefix!r} is not the start of an environment variable name")
        elif len(prefix) < MIN_PREFIX_CHARS:
            found.append(f"{flag} {prefix!r} is too broad: give at least {MIN_PREFIX_CHARS} characters")
    return found


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with the user information of every URI in it (`s3://KEY:SECRET@bucket`,
    `https://user:password@host`) and the value of every secret variable of the environment
    replaced by REDACTED."""
    environ = os.environ if environ is None else environ
    text = _URI_USER_INFO.sub(rf"\g<scheme>{REDACTED}@", text)
    for name, value in environ.items():
        if is_secret(name) and len(value) >= MIN_SECRET_CHARS:
            text = text.replace(value, REDACTED)
    return text


def redacted(values: Mapping[str, object]) -> dict[str, str]:
    """`values` as MLflow params or tags: each value as text, redacted."""
    return {name: redact(str(value)) for name, value in values.items()}
