"""``edged run``: the daemon's lifecycle.

probe -> profile -> engine/pool -> warm-up -> scheduler, request server, publisher, streams
-> ``READY=1``. The main thread then only watches: it pets the systemd watchdog when the
scheduler proves progress, publishes stats, and handles signals. SIGTERM drains (sources
stop, queued jobs are handed back, running jobs get ``service.drain_timeout_s``) and exits 0;
SIGHUP reloads the config and restarts only the streams whose settings changed.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from types import FrameType
from typing import Any

from edged.config import Settings, StreamSettings, load_settings
from edged.daemon.request_jobs import submit_request
from edged.daemon.scheduler import REQUESTS, Job, Scheduler
from edged.daemon.sdnotify import Notifier
from edged.daemon.streams import StreamRunner
from edged.daemon.warmup import warm_up
from edged.engine import Engine, LoadedModel
from edged.errors import EdgedError
from edged.log import get_logger
from edged.tasks.base import ProgressFn, TaskRequest, TaskResult
from edged.wire.context import flush_and_term

log = get_logger("service")

QUIET_STREAM_PROGRESS_S = 1.0
"""Stream frames publish progress events only after running this long (see _on_job_progress)."""


class Service:
    """The running daemon; ``run()`` blocks until SIGTERM/SIGINT and returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_file: Path | None = None,
        overrides: dict[str, Any] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self._config_file = config_file
        self._overrides = dict(overrides or {})
        self.notifier = notifier or Notifier()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._streams: dict[str, StreamRunner] = {}
        self._started_at = time.monotonic()
        self.engine: Engine | None = None
        self.scheduler: Scheduler | None = None
        self.publisher: Any = None
        self.server: Any = None

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        self._install_signals()
        try:
            self.start()
            self._main_loop()
        finally:
            clean = self.shutdown()
        if not clean:
            # A job is still inside native code after the drain time: interpreter teardown
            # under it could crash, so leave now (inbox files are recovered at next start).
            sys.stderr.flush()
            os._exit(0)
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def start(self) -> None:
        from edged.daemon.publisher import Publisher
        from edged.daemon.server import RequestServer
        from edged.pool.model_pool import ModelPool
        from edged.profiles import choose

        svc = self.settings.service
        self.notifier.status("probing hardware")
        choice = choose(self.settings)
        log.info("profile", profile=choice.profile.name, reasons=choice.reasons)
        self.settings.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        # Bound before warm-up so subscribers also see the warm-up loads as events.model.
        self.publisher = Publisher(self.settings)
        pool: ModelPool[LoadedModel] = ModelPool.from_settings(
            self.settings,
            profile_budget=choice.profile.memory_budget,
            cgroup_max=choice.hardware.cgroup_memory_max,
            on_event=self._on_pool_event,
        )
        self.engine = Engine(self.settings, profile=choice, pool=pool)
        self.notifier.status("warming up models")
        self._warm_up(self.settings.warmup_models)
        self.scheduler = Scheduler(
            self._run_job,
            workers=svc.workers,
            request_queue=self.settings.zmq.max_queue,
            requests_first=svc.requests_first,
            on_progress=self._on_job_progress,
        )
        self.scheduler.start()
        self.server = RequestServer(
            self.settings,
            self._handle_request,
            stats_fn=self.stats,
            models_fn=self._models,
            memory_budget=self.engine.pool.budget,
            # Untrusted requests are received in a memory-limited child (edged.daemon.receiver).
            receiver=self.settings.zmq.receiver,
            on_event=self.publish_event,
        )
        self.server.start()
        for cfg in self.settings.streams:
            self._add_stream(cfg)
        status = self._status()
        self.notifier.ready(status)
        self.publish_event("service", {"state": "ready", "pid": os.getpid()})
        log.info("ready", status=status)

    def shutdown(self) -> bool:
        """Bounded: sources stop, queued work is handed back, running jobs get the drain time.

        Returns False when a job was still running at the end of the drain time.
        """
        self.notifier.stopping()
        log.info("stopping")
        # In parallel: N wedged cameras cost one timeout, not N.
        stoppers = [
            threading.Thread(target=runner.stop, kwargs={"timeout": 1.0}, daemon=True)
            for runner in self._streams.values()
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(2.0)
        self._streams.clear()
        finished = True
        if self.scheduler is not None:
            finished = self.scheduler.stop(self.settings.service.drain_timeout_s)
            log.info("drained", all_finished=finished)
        if self.server is not None:
            self.server.stop()
        if self.publisher is not None:
            self.publisher.close()
        # Replies and results queued on the closed sockets must reach their peers before exit.
        flush_and_term(self.settings.zmq.linger_ms / 1000 + 0.5)
        if self.engine is not None and finished:
            # Never free sessions under a job that is still running native code: the process
            # exit reclaims them instead.
            self.engine.close()
        self.notifier.close()
        log.info("stopped", all_jobs_finished=finished)
        return finished

    def _install_signals(self) -> None:
        def on_term(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    def _main_loop(self) -> None:
        assert self.scheduler is not None
        interval = self.notifier.watchdog_interval_s
        next_ping = time.monotonic()
        next_stats = time.monotonic() + self.settings.zmq.stats_interval_s
        while not self._stop.wait(0.2):
            now = time.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if interval is not None and now >= next_ping:
                self._pet_watchdog(interval)
                next_ping = now + interval
            if now >= next_stats:
                self.publish_stats()
                next_stats = now + self.settings.zmq.stats_interval_s

    def _pet_watchdog(self, interval: float) -> None:
        assert self.scheduler is not None
        # Only a scheduler that moved recently earns the ping: wedged workers let systemd
        # restart us instead of being hidden by a healthy main thread.
        age = time.monotonic() - self.scheduler.last_progress
        # A source thread that died beyond its restarts (or a dead worker) will not come back
        # inside this process: withholding the ping lets systemd restart the unit.
        dead = [name for name, runner in self._streams.items() if runner.dead]
        workers_dead = self.scheduler.dead_workers()
        link = getattr(self.server, "_link", None)
        if link is not None and link.dead:
            dead.append("receiver")
        if dead or workers_dead:
            log.error("thread dead; withholding watchdog ping", streams=dead, workers=workers_dead)
        elif age < 2 * interval:
            self.notifier.watchdog()
        else:
            log.error("no scheduler progress; withholding watchdog ping", age_s=round(age, 1))

    # ------------------------------------------------------------------ reload

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_settings(self._config_file, self._overrides)
        except EdgedError as exc:
            log.error("reload failed; keeping the running config", error=str(exc))
            self.publish_event("service", {"state": "reload_failed", "error": str(exc)})
            self.notifier.ready(f"reload failed: {str(exc).splitlines()[0]}; " + self._status())
            return
        old = {s.name: s for s in self.settings.streams}
        wanted = {s.name: s for s in new.streams}
        for name, cfg in old.items():
            if wanted.get(name) != cfg:
                self._remove_stream(name)
        self.settings = new
        if self.server is not None:  # a new request endpoint: rebind, or stats say restart
            self.server.rebind(new)
        self._warm_up([m for m in new.warmup_models if m])
        for name, cfg in wanted.items():
            if name not in self._streams:
                self._add_stream(cfg)
        status = self._status()
        self.publish_event("service", {"state": "reloaded", "streams": sorted(self._streams)})
        self.notifier.ready(status)
        log.info("reloaded", status=status)

    # ------------------------------------------------------------------ streams

    def _add_stream(self, cfg: StreamSettings) -> None:
        assert self.scheduler is not None
        try:
            runner = StreamRunner(
                cfg,
                self.settings.service,
                self.scheduler,
                self.publish_result,
                self.publish_event,
                outbox_dir=self.settings.outbox_dir,
                limits=self.settings.zmq,
            )
            runner.start(self.settings.service.stream_queue)
        except EdgedError as exc:
            # One bad stream must not keep the others (or the request server) from running.
            log.error("stream not started", stream=cfg.name, error=str(exc))
            self.publish_event("stream", {"stream": cfg.name, "state": "down", "error": str(exc)})
            return
        self._streams[cfg.name] = runner

    def _remove_stream(self, name: str) -> None:
        runner = self._streams.pop(name, None)
        if runner is not None:
            runner.stop(timeout=1.0)
            self.publish_event("stream", {"stream": name, "state": "removed"})

    # ------------------------------------------------------------------ jobs

    def _run_job(
        self, request: TaskRequest, progress: ProgressFn, cancel: threading.Event
    ) -> TaskResult:
        assert self.engine is not None
        return self.engine.run(request, progress=progress, cancel=cancel)

    def _handle_request(self, request: Any) -> Future[Any]:
        """RequestServer handler: queue the job, resolve to a ``Reply`` (never raises)."""
        assert self.scheduler is not None
        return submit_request(self.scheduler, self.settings.model_search_path, request)

    def _warm_up(self, models: list[str]) -> None:
        assert self.engine is not None
        warm_up(self.engine, self.settings, models, self.publish_event)

    # ------------------------------------------------------------------ publishing

    def publish_result(self, stream: str, seq: int, result: TaskResult, captured_at: float) -> None:
        if self.publisher is None:
            return
        # The publisher serialises its own sends; encoding runs on the caller's thread.
        encoding = next((s.encoding for s in self.settings.streams if s.name == stream), "png")
        self.publisher.publish_result(
            stream, seq, result, captured_at=captured_at, payload_encoding=encoding
        )

    def publish_event(self, name: str, data: dict[str, Any]) -> None:
        if self.publisher is None:
            return
        # The publisher serialises its own sends; encoding runs on the caller's thread.
        self.publisher.publish_event(name, data)

    def _on_job_progress(self, job: Job, step: int, total: int, message: str) -> None:
        """``events.{task}`` (e.g. ``events.generation``) so clients can show progress.

        Every step of a request; a stream frame's steps only once its job has run for
        ``QUIET_STREAM_PROGRESS_S``: a 2 ms selfie frame's "0/1" and "1/1" would triple the
        messages of a 400 fps stream and say nothing its published result does not.
        """
        if job.stream != REQUESTS and time.monotonic() - job.started_at < QUIET_STREAM_PROGRESS_S:
            return
        data = {"id": job.meta.get("id"), "stream": job.stream or None, "step": step}
        self.publish_event(job.request.task, {**data, "total": total, "message": message})

    def _on_pool_event(self, event: str, fields: dict[str, Any]) -> None:
        self.publish_event("model", {"state": event, **fields})

    def publish_stats(self) -> None:
        if self.publisher is None:
            return
        data = self.stats()
        # The publisher serialises its own sends; encoding runs on the caller's thread.
        self.publisher.publish_stats(data)
        sched = data["scheduler"]
        jobs = [sched["requests"], *sched["streams"].values()]
        done, failed = sum(q["done"] for q in jobs), sum(q["failed"] for q in jobs)
        dropped = sum(q["dropped"] for q in jobs)
        # `systemctl status edged` shows this line.
        self.notifier.status(
            f"{len(self._streams)} stream(s), {done} jobs done, {failed} failed, "
            f"{dropped} frames dropped, {sched['busy_workers']}/{sched['workers']} workers busy"
        )

    def stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "rss_max_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "scheduler": self.scheduler.stats() if self.scheduler else {},
            "streams": {name: r.stats() for name, r in self._streams.items()},
            "dead_threads": sorted(n for n, r in self._streams.items() if r.dead),
            "pool": self.engine.stats() if self.engine else {},
        }

    def _models(self) -> list[dict[str, Any]]:
        if self.engine is None:
            return []
        return [
            {"name": e.name, "task": e.task, "family": e.family, "licence": e.licence}
            for e in self.engine.catalog
        ]

    def _status(self) -> str:
        streams = ", ".join(sorted(self._streams)) or "none"
        bound = self.server.endpoint if self.server is not None else self.settings.requests_endpoint
        restart = getattr(self.server, "_rebinder", None)
        note = f" ({restart.restart_needed})" if restart and restart.restart_needed else ""
        return f"ready: {len(self._streams)} stream(s) [{streams}], requests on {bound}{note}"
