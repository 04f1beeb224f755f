"""modelserve: the Python client and the `modelserve` command of the modelserve platform.

from modelserve import Client, AsyncClient
"""

from modelserve.client import AsyncClient, Client
from modelserve.errors import (
    ApiError,
    AuthError,
    ConfigError,
    ConflictError,
    ConnectError,
    ModelServeError,
    NotFoundError,
    ServerError,
    ValidationError,
    WaitTimeout,
)

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "AsyncClient",
    "AuthError",
    "Client",
    "ConfigError",
    "ConflictError",
    "ConnectError",
    "ModelServeError",
    "NotFoundError",
    "ServerError",
    "ValidationError",
    "WaitTimeout",
    "__version__",
]
