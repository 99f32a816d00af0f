"""apiframe-async: the asyncio- and trio-native client for APIFRAME's AI Photos API.

Example:
    ```python
    from apiframe_async import AsyncApiframe

    async with AsyncApiframe() as client:  # the key from APIFRAME_API_KEY
        gen = await client.generate(training_id="...", prompt="a portrait of TOKMSN man")
    ```
"""

from importlib.metadata import version as _version

from ._client import DEFAULT_BASE_URL, DEFAULT_MAX_CONCURRENCY, DEFAULT_TIMEOUT, AsyncApiframe
from ._errors import (
    APIConnectionError,
    ApiframeError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    RequestValidationError,
    ResponseValidationError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
)
from ._fanout import BulkJob, Outcome, Progress, RequestLike
from ._models import (
    ASPECT_RATIOS,
    Account,
    AspectRatio,
    GenerateRequest,
    Generation,
    Task,
    TaskStatus,
)
from ._retry import RetryPolicy
from ._waiting import PollPolicy

__version__ = _version("apiframe-async")

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_TIMEOUT",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Account",
    "ApiframeError",
    "AspectRatio",
    "AsyncApiframe",
    "AuthenticationError",
    "BadRequestError",
    "BulkJob",
    "GenerateRequest",
    "Generation",
    "NotFoundError",
    "Outcome",
    "PermissionDeniedError",
    "PollPolicy",
    "Progress",
    "RateLimitError",
    "RequestLike",
    "RequestTimeoutError",
    "RequestValidationError",
    "ResponseValidationError",
    "RetryPolicy",
    "ServerError",
    "Task",
    "TaskFailedError",
    "TaskStatus",
    "TaskTimeoutError",
    "__version__",
]

# Tracebacks show `apiframe_async.RateLimitError`, not the private module it lives in.
# Only exceptions: attrs classes resolve their annotations through `__module__`.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and issubclass(_obj, BaseException):
        _obj.__module__ = __name__
