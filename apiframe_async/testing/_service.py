"""The fake service's business logic: tasks, credits and images; synchronous and locked.

Every operation runs under one lock and never awaits, so the service is safe to share
between the caller's event loop and a server thread. Operations return an `Outcome`: the
reply, the webhooks to deliver, and what to record.
"""

from __future__ import annotations

import math
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs

from apiframe_async._pricing import TRAIN_COST_PER_IMAGE, UPLOAD_COST, generation_cost
from apiframe_async.testing import _validation as v
from apiframe_async.testing._tasks import (
    GenerateDetail,
    ImageSpec,
    JSONObject,
    Kind,
    Task,
    TrainDetail,
    UploadDetail,
)

#: The layout of `Service.state()`; a state of another version is not restored.
STATE_VERSION = 1
_state_converter = cattrs.Converter(forbid_extra_keys=True)
_FAILURES = {
    Kind.UPLOAD: "Could not detect a face in enough of the images",
    Kind.TRAIN: "Training failed",
    Kind.GENERATE: "The prompt was rejected by the safety filter",
}


@attrs.frozen
class Settings:
    """How the fake service behaves (see `FakeApiframe` for each knob)."""

    fetches_to_finish: int = 4
    generate_fetches: int = 0
    step_seconds: float | None = None
    failure_rate: float = 0.0
    image_size: int = 64
    upload_ttl: float = 7 * 24 * 3600.0
    unknown_task_status: int = 404
    enforce_credits: bool = True
    trigger_word_override: str | None = None

    def __attrs_post_init__(self) -> None:
        """Reject settings that make no sense."""
        if self.fetches_to_finish < 1 or self.generate_fetches < 0:
            raise ValueError("fetches_to_finish must be >= 1 and generate_fetches >= 0")
        if self.step_seconds is not None and self.step_seconds <= 0:
            raise ValueError("step_seconds must be positive")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        if self.image_size < 1:
            raise ValueError("image_size must be positive")


@attrs.frozen
class WebhookEvent:
    """A webhook to deliver: the task's state at one step."""

    webhook: v.Webhook
    task_id: str
    payload: JSONObject


@attrs.frozen
class Outcome:
    """What one operation answers and what it did."""

    status: int
    body: Any
    events: tuple[WebhookEvent, ...] = ()
    task_id: str | None = None
    created: bool = False
    charged: int = 0


def invalid(errors: list[v.ErrorItem]) -> Outcome:
    """A 400 with the contract's error body."""
    return Outcome(400, {"errors": errors})


class Service:
    """The state behind the fake API."""

    def __init__(
        self,
        settings: Settings,
        *,
        credits: int,  # noqa: A002 - the account field's name in the API
        account: JSONObject,
        seed: int | None,
        clock: Callable[[], float],
    ) -> None:
        """Start with no tasks and `credits` credits."""
        self.settings = settings
        self.credits = credits
        self.total_images = 0
        self.clock = clock
        self.lock = threading.RLock()
        self._account = account
        self._rng = random.Random(seed)  # noqa: S311 - test data, not crypto
        self._seeded = seed is not None
        self._tasks: dict[str, Task] = {}
        self._images: dict[str, ImageSpec] = {}
        self._forced_failures: dict[Kind, deque[str]] = {kind: deque() for kind in Kind}
        self._events: list[WebhookEvent] = []

    # -- endpoints ---------------------------------------------------------------------

    def upload(self, request: v.UploadRequest) -> Outcome:
        """`POST /ai-photo-upload`."""
        detail = UploadDetail(request.image_count)
        return self._create(Kind.UPLOAD, UPLOAD_COST, detail, request.webhook)

    def train(self, request: v.TrainRequest) -> Outcome:
        """`POST /ai-photo-train`."""
        with self.lock:
            upload = self._finished(request.training_images_id, Kind.UPLOAD, "training_images_id")
            if isinstance(upload, v.Invalid):
                return self._flush(invalid(upload.errors))
            assert isinstance(upload.detail, UploadDetail)  # noqa: S101 - narrowed by kind
            trigger_word = self.settings.trigger_word_override or request.trigger_word
            detail = TrainDetail(upload.task_id, trigger_word)
            cost = TRAIN_COST_PER_IMAGE * upload.detail.image_count
            return self._create(Kind.TRAIN, cost, detail, request.webhook)

    def generate(self, request: v.GenerateRequest, base_url: str) -> Outcome:
        """`POST /ai-photo-generate`: the finished result, or `processing` when asynchronous."""
        with self.lock:
            training = self._finished(request.training_id, Kind.TRAIN, "training_id")
            if isinstance(training, v.Invalid):
                return self._flush(invalid(training.errors))
            task_id = self._new_id()
            width, height = self._dimensions(request)
            count = request.number_of_images
            specs = tuple(
                ImageSpec(request.prompt, request.seed, i, width, height) for i in range(count)
            )
            urls = tuple(f"{base_url}/images/{task_id}-{i}.png" for i in range(count))
            detail = GenerateDetail(request.prompt, specs, urls)
            outcome = self._create(Kind.GENERATE, generation_cost(count), detail, None, task_id)
            if not outcome.created:
                return outcome
            return attrs.evolve(outcome, body=self._report(self._tasks[task_id]))

    def fetch(self, task_id: str) -> Outcome:
        """`POST /fetch`: report the task's state, then move it one step on."""
        with self.lock:
            task = self._tasks.get(task_id)
            if task is None:
                error = v.error("task_id", "Task not found", task_id)
                return Outcome(self.settings.unknown_task_status, {"errors": [error]})
            self._catch_up(task)
            return self._flush(Outcome(200, self._report(task), task_id=task_id))

    def fetch_many(self, task_ids: list[str]) -> Outcome:
        """`POST /fetch-many`: as `fetch` for each known id; unknown ids are left out."""
        with self.lock:
            tasks = [self._tasks[i] for i in task_ids if i in self._tasks]
            for task in tasks:
                self._catch_up(task)
            return self._flush(Outcome(200, {"tasks": [self._report(task) for task in tasks]}))

    def account(self) -> Outcome:
        """`GET /account`."""
        with self.lock:
            body = self._account | {"credits": self.credits, "total_images": self.total_images}
            return Outcome(200, body)

    def image(self, name: str) -> ImageSpec | None:
        """The image called `<task_id>-<index>`, once its generation finished."""
        with self.lock:
            return self._images.get(name)

    # -- helpers for tests ---------------------------------------------------------------

    def peek(self, task_id: str) -> JSONObject | None:
        """The task's current reply, without moving it on (wall-clock steps are not applied)."""
        with self.lock:
            task = self._tasks.get(task_id)
            return None if task is None else task.payload()

    def advance(self, task_id: str | None) -> tuple[WebhookEvent, ...]:
        """Move one task (or every unfinished one) a step on; returns the webhooks due."""
        with self.lock:
            if task_id is not None and task_id not in self._tasks:
                raise KeyError(task_id)
            tasks = [self._tasks[task_id]] if task_id is not None else list(self._tasks.values())
            for task in tasks:
                self._step(task)
            return self._flush(Outcome(200, None)).events

    def catch_up(self, task_id: str) -> tuple[tuple[WebhookEvent, ...], float | None]:
        """Apply the wall-clock steps due; returns the webhooks and when the next step is due."""
        with self.lock:
            task = self._tasks[task_id]
            self._catch_up(task)
            due = None
            if self.settings.step_seconds is not None and not task.terminal:
                due = task.created_at + (task.cursor + 1) * self.settings.step_seconds
            return self._flush(Outcome(200, None)).events, due

    def fail_next(self, kind: Kind, reason: str | None) -> None:
        """Make the next task of `kind` end `failed` with `reason`."""
        with self.lock:
            self._forced_failures[kind].append(reason or _FAILURES[kind])

    def ticking(self, task_id: str) -> bool:
        """Whether the task needs a wall-clock ticker to send its webhooks unasked."""
        with self.lock:
            task = self._tasks.get(task_id)
            timed = self.settings.step_seconds is not None
            return timed and task is not None and task.webhook is not None and not task.terminal

    def add_trained_model(
        self, trigger_word: str, image_count: int, training_id: str | None = None
    ) -> str:
        """A finished upload and training, free of charge; returns the training's id."""
        with self.lock:
            if training_id is not None and training_id in self._tasks:
                return training_id
            now = self.clock()
            upload = UploadDetail(image_count, now + self.settings.upload_ttl)
            images = Task(self._new_id(), Kind.UPLOAD, 0, now, None, None, upload)
            trigger_word = self.settings.trigger_word_override or trigger_word
            detail = TrainDetail(images.task_id, trigger_word)
            training = Task(training_id or self._new_id(), Kind.TRAIN, 0, now, None, None, detail)
            self._tasks[images.task_id] = images
            self._tasks[training.task_id] = training
            return training.task_id

    def ids(self, kind: Kind | None = None) -> list[str]:
        """The ids of the tasks (of `kind`), in creation order."""
        with self.lock:
            return [t.task_id for t in self._tasks.values() if kind in {None, t.kind}]

    def generations(self) -> list[GenerateDetail]:
        """Every generation created, in order."""
        with self.lock:
            return [t.detail for t in self._tasks.values() if isinstance(t.detail, GenerateDetail)]

    # -- state, to carry the fake from one process to the next -----------------------------

    def state(self) -> JSONObject:
        """Tasks, credits and images as JSON-ready data (see `restore`).

        Webhooks are left out: a restored task reports to nobody, and no webhook secret
        is ever written down.
        """
        with self.lock:
            tasks = [attrs.evolve(task, webhook=None) for task in self._tasks.values()]
            return {
                "version": STATE_VERSION,
                "credits": self.credits,
                "total_images": self.total_images,
                "tasks": _state_converter.unstructure(tasks),
                "images": _state_converter.unstructure(self._images),
            }

    def restore(self, state: object) -> None:
        """Take over the tasks, credits and images of `state()`, replacing the current ones.

        Raises:
            ValueError: `state` is not what `state()` writes.
        """
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a fake state of version {STATE_VERSION}")
        try:
            tasks = _state_converter.structure(state["tasks"], list[Task])
            images = _state_converter.structure(state["images"], dict[str, ImageSpec])
            credits_, total = int(state["credits"]), int(state["total_images"])
        except (KeyError, TypeError, ValueError, cattrs.BaseValidationError) as exc:
            raise ValueError(f"not a usable fake state: {exc}") from None
        with self.lock:
            self._tasks = {task.task_id: task for task in tasks}
            self._images = images
            self.credits, self.total_images = credits_, total

    # -- internals -------------------------------------------------------------------------

    def _create(
        self,
        kind: Kind,
        cost: int,
        detail: UploadDetail | TrainDetail | GenerateDetail,
        webhook: v.Webhook | None,
        task_id: str | None = None,
    ) -> Outcome:
        with self.lock:
            if self.settings.enforce_credits and cost > self.credits:
                msg = (
                    f"Not enough credits: this request costs {cost}, the account has {self.credits}"
                )
                return self._flush(Outcome(402, {"errors": [v.error(None, msg)]}))
            task = Task(
                task_id=task_id or self._new_id(),
                kind=kind,
                steps=self._steps(kind),
                created_at=self.clock(),
                failure=self._failure(kind),
                webhook=webhook,
                detail=detail,
            )
            self._tasks[task.task_id] = task
            self.credits -= cost
            self._on_step(task)
            outcome = Outcome(200, {"task_id": task.task_id}, task_id=task.task_id)
            return self._flush(attrs.evolve(outcome, created=True, charged=cost))

    def _steps(self, kind: Kind) -> int:
        if kind is Kind.GENERATE:
            return self.settings.generate_fetches
        return self.settings.fetches_to_finish - 1

    def _failure(self, kind: Kind) -> str | None:
        if self._forced_failures[kind]:
            return self._forced_failures[kind].popleft()
        if self.settings.failure_rate and self._rng.random() < self.settings.failure_rate:
            return _FAILURES[kind]
        return None

    def _new_id(self) -> str:
        if self._seeded:
            return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        return str(uuid.uuid4())

    def _dimensions(self, request: v.GenerateRequest) -> tuple[int, int]:
        if request.width is not None and request.height is not None:
            across, down = request.width, request.height
        elif request.aspect_ratio == "custom":
            across, down = 1, 1
        else:
            across, down = (int(part) for part in request.aspect_ratio.split(":"))
        size = self.settings.image_size
        scale = size / max(across, down)
        return max(1, round(across * scale)), max(1, round(down * scale))

    def _finished(self, task_id: str, kind: Kind, field: str) -> Task | v.Invalid:
        task = self._tasks.get(task_id)
        noun = "upload" if kind is Kind.UPLOAD else "training"
        if task is None or task.kind is not kind:
            return v.Invalid([v.error(field, f"{field} is not a known {noun} task", task_id)])
        self._catch_up(task)
        if not task.terminal:
            msg = f"the {noun} task is not finished yet (status: {task.status})"
            return v.Invalid([v.error(field, msg, task_id)])
        if task.failure is not None:
            return v.Invalid([v.error(field, f"the {noun} task failed", task_id)])
        detail = task.detail
        if isinstance(detail, UploadDetail) and (detail.expires_at or 0) <= self.clock():
            return v.Invalid([v.error(field, "the prepared images have expired", task_id)])
        return task

    def _report(self, task: Task) -> JSONObject:
        """The task's current reply; then it moves one step on."""
        payload = task.payload()
        self._step(task)
        return payload

    def _catch_up(self, task: Task) -> None:
        step = self.settings.step_seconds
        if step is None:
            return
        due = math.floor((self.clock() - task.created_at) / step)
        while task.cursor < min(due, task.steps):
            self._step(task)

    def _step(self, task: Task) -> None:
        if task.advance():
            self._on_step(task)

    def _on_step(self, task: Task) -> None:
        if task.terminal and task.failure is None:
            self._finish(task)
        if task.webhook is not None and (task.cursor > 0 or task.terminal):
            self._events.append(WebhookEvent(task.webhook, task.task_id, task.payload()))

    def _finish(self, task: Task) -> None:
        detail = task.detail
        if isinstance(detail, UploadDetail):
            detail.expires_at = self.clock() + self.settings.upload_ttl
        elif isinstance(detail, GenerateDetail):
            self.total_images += len(detail.images)
            for spec, url in zip(detail.images, detail.image_urls, strict=True):
                self._images[url.rsplit("/", 1)[1].removesuffix(".png")] = spec

    def _flush(self, outcome: Outcome) -> Outcome:
        events, self._events = tuple(self._events), []
        return attrs.evolve(outcome, events=outcome.events + events)
