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
from ._download import DEFAULT_MAX_DOWNLOAD_BYTES, download, download_all
from ._errors import (
    APIConnectionError,
    ApiframeError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ClientClosedError,
    ClientError,
    DownloadError,
    InsufficientCreditsError,
    JournalError,
    JournalInUseError,
    NoImagesError,
    NotFoundError,
    NotSentError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    RequestValidationError,
    ResponseValidationError,
    ServerError,
    TaskFailedError,
    TaskPollError,
    TaskTimeoutError,
    TaskWaitError,
    UncertainSubmissionError,
)
from ._fanout import BulkJob, Outcome, Progress, RequestLike
from ._images import DEFAULT_MAX_IMAGE_BYTES, ImageSource
from ._journal import Journal, ReplayPolicy, UncertainPolicy
from ._models import (
    ASPECT_RATIOS,
    ETHNICITIES,
    GENDERS,
    Account,
    AspectRatio,
    Ethnicity,
    Gender,
    GenerateRequest,
    Generation,
    SubmittedTask,
    Task,
    TaskBatch,
    TaskStatus,
    TrainRequest,
    UploadRequest,
)
from ._observe import configure_from_env as _configure_logging_from_env
from ._retry import RetryPolicy
from ._waiting import PollPolicy
from ._webhooks import WEBHOOK_SECRET_HEADER, WebhookReceiver, parse_webhook, verify_webhook

__version__ = _version("apiframe-async")

_configure_logging_from_env()

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_TIMEOUT",
    "ETHNICITIES",
    "GENDERS",
    "WEBHOOK_SECRET_HEADER",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "Account",
    "ApiframeError",
    "AspectRatio",
    "AsyncApiframe",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceededError",
    "BulkJob",
    "ClientClosedError",
    "ClientError",
    "DownloadError",
    "Ethnicity",
    "Gender",
    "GenerateRequest",
    "Generation",
    "ImageSource",
    "InsufficientCreditsError",
    "Journal",
    "JournalError",
    "JournalInUseError",
    "NoImagesError",
    "NotFoundError",
    "NotSentError",
    "Outcome",
    "PermissionDeniedError",
    "PollPolicy",
    "Progress",
    "RateLimitError",
    "ReplayPolicy",
    "RequestLike",
    "RequestTimeoutError",
    "RequestValidationError",
    "ResponseValidationError",
    "RetryPolicy",
    "ServerError",
    "SubmittedTask",
    "Task",
    "TaskBatch",
    "TaskFailedError",
    "TaskPollError",
    "TaskStatus",
    "TaskTimeoutError",
    "TaskWaitError",
    "TrainRequest",
    "UncertainPolicy",
    "UncertainSubmissionError",
    "UploadRequest",
    "WebhookReceiver",
    "__version__",
    "download",
    "download_all",
    "parse_webhook",
    "verify_webhook",
]

# Tracebacks show `apiframe_async.RateLimitError`, not the private module it lives in.
# Only exceptions: attrs classes resolve their annotations through `__module__`.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and issubclass(_obj, BaseException):
        _obj.__module__ = __name__
