"""What each stage of a job does, given only the job id: claim it under a lease, do the work, record the outcome
in one transaction, and hand the job to its next stage after the commit. Safe to run twice for the same id.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tasks.analysis import outfits
from tasks.analysis.ai import (
    ItemAnalyzer,
    LimiterUnavailable,
    PermanentAIError,
    RateLimited,
    TransientAIError,
)
from wardrobe.clients.images import ImageError, ImageStore, StoreUnavailable
from wardrobe.store.capsules import Capsules
from wardrobe.store.items import Items
from wardrobe.store.jobs import JobLedger
from wardrobe.store.users import Users

log = logging.getLogger(__name__)


class PermanentError(Exception):
    """Retrying cannot help (corrupt input, missing row); the job fails at once with this message."""


class Superseded(Exception):
    """This run's lease expired and another run claimed the job: what this one did is not recorded."""


def backoff(
    attempt: int, base: float = 5.0, cap: float = 300.0, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with full jitter around the midpoint: base * 2^(n-1), times 0.5..1.5, capped."""
    return min(cap, base * 2 ** max(attempt - 1, 0)) * (0.5 + rand())


@dataclass
class StageRunner:
    items: Items
    capsules: Capsules
    users: Users
    store: ImageStore  # or objectstore.S3ImageStore
    ledger: JobLedger
    send: Callable[..., Any]  # Dispatcher.send
    lease_seconds: int = 300
    remover: Any = None  # BackgroundRemover, images workers only
    analyzer: ItemAnalyzer | None = None
    observe: Callable[[str, str, float], None] = field(default=lambda kind, outcome, seconds: None)
    report: Callable[..., None] = field(default=lambda *args, **kwargs: None)  # to Sentry

    # --- the stages -----------------------------------------------------------------------------------------

    def cutout(self, job_id: str) -> str:
        return self._run(job_id, "cutout", self._cutout)

    def analyze(self, job_id: str) -> str:
        return self._run(job_id, "analyze", self._analyze)

    def capsule(self, job_id: str) -> str:
        return self._run(job_id, "capsule", self._capsule)

    def _cutout(self, job: dict[str, Any]) -> dict[str, Any] | None:
        item = self.items.for_job(job["item_id"])
        if item is None:
            raise PermanentError("the item was deleted")
        if not item["cutout_key"]:
            try:
                original = self.store.read(item["image_key"])
            except FileNotFoundError:
                raise PermanentError("the uploaded image is missing from storage") from None
            try:
                png = self.remover.cutout(original)
            except (ImageError, OSError, ValueError) as exc:
                raise PermanentError(f"the image could not be processed: {exc}") from None
            key = self.store.put(png, "png")  # content-addressed: a rerun writes the same file
        else:
            key = item["cutout_key"]  # a rerun after a crash: the cutout is already there
        if not self.items.cutout_done(item, job, key):
            raise Superseded
        self.send([{"id": job["id"], "stage": "analyze"}])
        return None  # not finished: the analysis stage completes the job

    def _analyze(self, job: dict[str, Any]) -> dict[str, Any] | None:
        item = self.items.for_job(job["item_id"])
        if item is None:
            raise PermanentError("the item was deleted")
        try:
            cutout = self.store.read(item["cutout_key"] or item["image_key"])
        except FileNotFoundError:
            raise PermanentError("the cutout is missing from storage") from None
        attributes = self.analyzer.analyze_item(cutout)
        result = {"item_id": str(item["id"]), "source": attributes.get("source")}
        if not self.items.analysis_done(item, job, attributes, result):
            raise Superseded
        return result

    def _capsule(self, job: dict[str, Any]) -> dict[str, Any] | None:
        capsule = self.capsules.for_job(job["capsule_id"])
        if capsule is None:
            raise PermanentError("the capsule was deleted")
        # The version first: items that change meanwhile make the capsule older than them, never newer.
        user = self.users.capsule_context(capsule["user_id"])
        wardrobe = self.items.ready_for_capsules(capsule["user_id"])
        request = {"occasion": capsule["occasion"], "season": capsule["season"], "size": capsule["size"]}
        proposed = outfits.candidates(
            wardrobe,
            occasion=capsule["occasion"],
            season=capsule["season"],
            preferred_styles=(user.get("profile") or {}).get("style"),
            limit=max(capsule["size"] * 3, 6),
        )
        if not proposed:
            raise PermanentError(
                "not enough ready items for an outfit: add at least a top and a bottom, or a dress"
            )
        chosen = self.analyzer.choose_capsules(proposed, wardrobe, request)
        if not chosen:
            raise PermanentError("no proposed outfit could be used")
        by_ids = {tuple(str(i) for i in o["item_ids"]): o for o in proposed}
        outfit_rows = [
            {
                "name": c["name"],
                "description": c["description"],
                "item_ids": [str(i) for i in c["item_ids"]],
                "slots": by_ids.get(tuple(str(i) for i in c["item_ids"]), {}).get("slots", {}),
            }
            for c in chosen
        ]
        source = chosen[0].get("source") or self.analyzer.source
        label = (capsule["occasion"] or "everyday").capitalize()
        season = f" · {capsule['season']}" if capsule["season"] else ""
        completed = self.capsules.complete(
            capsule,
            job,
            name=f"{label} capsule{season}",
            description=f"{len(outfit_rows)} outfits from your wardrobe.",
            outfits=outfit_rows,
            source=source,
            version=user["wardrobe_version"],
            result={"capsule_id": str(capsule["id"]), "outfits": len(outfit_rows)},
        )
        if not completed:
            raise Superseded
        return {"capsule_id": str(capsule["id"])}

    # --- the common frame: lease, outcome, retries ------------------------------------------------------------

    def _run(self, job_id: str, stage: str, work: Callable[[dict[str, Any]], Any]) -> str:
        job = self.ledger.claim(job_id, stage, self.lease_seconds)
        if job is None:
            log.info("job %s (%s): not ours to run (duplicate delivery, finished or not due)", job_id, stage)
            return "skipped"
        started = time.monotonic()
        kind = job["kind"]
        try:
            done = work(job)
            outcome = "succeeded" if done is not None else "advanced"
        except Superseded:
            outcome = "superseded"
        except StoreUnavailable as exc:
            # The image store is down for every job alike: not this job's fault, so no attempt is used up and
            # nothing goes to Sentry per job; it runs again once the store answers (the reaper resends it if
            # this send is lost).
            log.warning("job %s (%s): image store unavailable, retrying: %s", job_id, stage, exc)
            delay = backoff(job["attempts"])
            retried = self._retry(job, f"image store unavailable: {exc}", delay, count_attempt=False)
            outcome = "retrying" if retried else "superseded"
        except LimiterUnavailable as exc:
            # Redis (the shared OpenAI budget) is away, a failover under way: not this job's fault either, so like
            # the image store above no attempt is used up and no traceback is logged; the retry's send may fail too
            # while Redis is away, and then the reaper resends the job.
            log.warning("job %s (%s): %s, retrying", job_id, stage, exc)
            retried = self._retry(job, str(exc), backoff(job["attempts"]), count_attempt=False)
            outcome = "retrying" if retried else "superseded"
        except RateLimited as exc:
            # Not the job's fault: try again when a key has budget, without using up an attempt.
            deferred = self._retry(job, str(exc), exc.retry_after + random.uniform(0, 1), count_attempt=False)
            outcome = "deferred" if deferred else "superseded"
        except (PermanentError, PermanentAIError) as exc:
            if self._fail(job, str(exc)):
                self.report(
                    message=f"{kind} job failed: {exc}",
                    job_id=job_id,
                    kind=kind,
                    request_id=job["request_id"],
                )
                outcome = "failed"
            else:
                outcome = "superseded"
        except Exception as exc:  # any other failure, TransientAIError too: retried a bounded number of times
            # A timeout or a 5xx from OpenAI is an expected dependency failure: one line. Anything else is a bug
            # until shown otherwise, and keeps its traceback.
            log.warning(
                "job %s (%s, request %s) attempt %s failed: %s",
                job_id,
                stage,
                job["request_id"],
                job["attempts"],
                exc,
                exc_info=not isinstance(exc, TransientAIError),
            )
            if not isinstance(exc, TransientAIError):
                self.report(exc, job_id=job_id, kind=kind, request_id=job["request_id"])
            if job["attempts"] >= job["max_attempts"]:
                failed = self._fail(job, f"gave up after {job['attempts']} attempts: {exc}")
                outcome = "failed" if failed else "superseded"
            else:
                retried = self._retry(
                    job, f"attempt {job['attempts']} failed: {exc}", backoff(job["attempts"])
                )
                outcome = "retrying" if retried else "superseded"
        self.observe(kind, outcome, time.monotonic() - started)
        elapsed = time.monotonic() - started
        log.info("job %s (%s, request %s) %s in %.2fs", job_id, stage, job["request_id"], outcome, elapsed)
        return outcome

    def _retry(self, job: dict[str, Any], error: str, delay: float, *, count_attempt: bool = True) -> bool:
        if not self.ledger.retry_later(job, error, delay, count_attempt=count_attempt):
            log.warning(
                "job %s (%s): a newer run owns it; this run's retry is dropped", job["id"], job["stage"]
            )
            return False
        self.send([job], delay=delay)
        return True

    def _fail(self, job: dict[str, Any], error: str) -> bool:
        return (self.items if job["item_id"] else self.capsules).job_failed(job, error)
