"""Tasks of the fake service: a cursor moving along a fixed list of states, and their replies.

Upload and train tasks go `pending`, then `processing` (train: `percentage` a string such as
`"33"`), then `finished` (train: `percentage` the number 100) or `failed`. An asynchronous
generation goes `processing`, then `finished` or `failed`; a synchronous one is created at
its end. The cursor is the index of the state a task is in; `steps` is the index of the
terminal state.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import attrs

from apiframe_async.testing._validation import Webhook

JSONObject = dict[str, Any]


class Kind(enum.StrEnum):
    """The endpoint that created a task (also its `task_type`)."""

    UPLOAD = "ai-photo-upload"
    TRAIN = "ai-photo-train"
    GENERATE = "ai-photo-generate"


@attrs.define
class UploadDetail:
    """What an upload task needs for its replies and for training."""

    image_count: int
    expires_at: float | None = None


@attrs.define
class TrainDetail:
    """What a train task needs for its replies."""

    images_id: str
    trigger_word: str


@attrs.frozen
class ImageSpec:
    """Everything needed to render one generated image again."""

    prompt: str
    seed: int | None
    index: int
    width: int
    height: int


@attrs.define
class GenerateDetail:
    """What a generation needs for its replies and images."""

    prompt: str
    images: tuple[ImageSpec, ...]
    image_urls: tuple[str, ...]


@attrs.define
class Task:
    """One task of the fake service."""

    task_id: str
    kind: Kind
    steps: int
    created_at: float
    failure: str | None
    webhook: Webhook | None
    detail: UploadDetail | TrainDetail | GenerateDetail
    cursor: int = 0

    @property
    def terminal(self) -> bool:
        """Whether the task is finished or failed."""
        return self.cursor >= self.steps

    @property
    def status(self) -> str:
        """The wire status of the current state."""
        if self.terminal:
            return "failed" if self.failure is not None else "finished"
        if self.cursor == 0 and self.kind is not Kind.GENERATE:
            return "pending"
        return "processing"

    @property
    def succeeded(self) -> bool:
        """Whether the task is finished without failure."""
        return self.terminal and self.failure is None

    def advance(self) -> bool:
        """Move one state on; False when the task was already terminal."""
        if self.terminal:
            return False
        self.cursor += 1
        return True

    def payload(self) -> JSONObject:
        """The JSON `/fetch` answers for the current state."""
        body: JSONObject = {"task_id": self.task_id, "status": self.status}
        if self.kind is Kind.GENERATE:
            body["task_type"] = Kind.GENERATE.value
        if self.failure is not None and self.terminal:
            return body | {"message": self.failure, "error": self.failure}
        if isinstance(self.detail, UploadDetail):
            return body | self._upload(self.detail)
        if isinstance(self.detail, TrainDetail):
            return body | self._train(self.detail)
        if self.terminal:
            body["image_urls"] = list(self.detail.image_urls)
        return body

    def _upload(self, detail: UploadDetail) -> JSONObject:
        if not self.terminal:
            message = "Images are queued" if self.status == "pending" else "Preparing images"
            return {"message": message}
        return {"message": "Images ready for training", "expires_at": iso(detail.expires_at or 0)}

    def _train(self, detail: TrainDetail) -> JSONObject:
        if self.terminal:
            return {
                "message": "Training completed",
                "percentage": 100,
                "trigger_word": detail.trigger_word,
            }
        if self.status == "pending":
            return {"message": "Training is queued", "percentage": "0"}
        percentage = round(100 * self.cursor / self.steps)
        return {"message": "Training is in progress", "percentage": str(percentage)}


def iso(timestamp: float) -> str:
    """ISO-8601 in UTC with milliseconds and a `Z`, as JavaScript's `toISOString()`."""
    moment = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
