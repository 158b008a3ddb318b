"""The desired config from the cloud: checked, run in place, kept across reboots, rolled back.

A document on ``<prefix>/<device-id>/config/desired`` goes through, in order: decoding, the
device it names, its signature (when ``[remote] public_key_file`` is set), its version (it must
be newer than every version acted on before), then the same two-stage validation as
``edge-agent check`` plus the rules of ``agent.remote.rules``. A valid one is run in place with
``Agent.apply`` and watched for ``grace_period``: a module of it that fails to start, restarts
after errors or hangs, or a changed ``[cloud]`` that does not connect, and the agent goes back to
the config it ran before. Each outcome is reported, retained, on ``.../config/reported``.

Precedence with the operator's file (docs/security.md, docs/operations.md): the last change
wins. A remote config that was applied runs from then on, across restarts, *until the
operator's file changes*; then the file runs and the remote version is reported ``superseded``
(it is not taken again; a newer version is). The state lives in ``<data_dir>/remote-config.json``
(mode 600): the good config, one on trial, the highest version acted on, the last report, and
the document being checked: one that stops the agent while it is checked (whatever the cause)
is refused from then on, so a retained document can never crash-loop a device.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import LoadedConfig, RemoteSettings
from agent.errors import ConfigError
from agent.remote.rules import validate_remote
from cloud_sync import protocol
from cloud_sync.protocol import ConfigReport, DesiredConfig, ProtocolError

if TYPE_CHECKING:
    from agent.remote.control import AgentControl
    from agent.runtime.pipeline import Change

log = logging.getLogger(__name__)

STATE_FILE = "remote-config.json"
SCOPE = "remote"
POISONED_KEPT = 32
"""Digests of documents that stopped the agent while checked, remembered (the newest)."""


class RemoteConfig:
    """The device's handler for desired configs (one per agent, when ``allow_config`` is on)."""

    def __init__(self, agent: AgentControl, settings: RemoteSettings) -> None:
        self.agent = agent
        self.settings = settings
        self.path = agent.file_loaded.agent.data_dir / STATE_FILE
        self.state: dict[str, Any] = {
            "good": None, "trial": None, "floor": 0, "report": None, "checking": None, "poisoned": [],
        }
        self._key: Any = None
        if settings.public_key_file is not None:
            from cloud_sync.signing import load_public_key

            self._key = load_public_key(settings.public_key_file)
        self._pending: bytes | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- start-up, reload, stop -------------------------------------------------------------------

    async def startup(self, file_loaded: LoadedConfig) -> LoadedConfig:
        """The config to start with: the persisted remote one, unless the file changed since."""
        self.state = await asyncio.to_thread(self._load_state)
        checking = self.state["checking"]
        if checking is not None:
            self.state["checking"] = None
            self.state["poisoned"] = [*self.state["poisoned"], checking["digest"]][-POISONED_KEPT:]
            self._report(checking["version"], "rejected", checking["digest"], [
                {"path": "", "reason": "the agent stopped while checking this document"}
            ], "refused from now on; nothing changed")
            log.error("remote config v%s stopped the agent while it was checked: refused from now on",
                      checking["version"])
        trial = self.state["trial"]
        if trial is not None:
            self.state["trial"] = None
            self._report(trial["version"], "rolled_back", trial["digest"],
                         detail="the agent stopped during the grace period; back to the last good config")
        chosen = self._choose(file_loaded)
        await asyncio.to_thread(self._save_state)
        self._task = asyncio.create_task(self._worker(), name="remote:config")
        return chosen

    def reloaded(self, file_loaded: LoadedConfig) -> LoadedConfig:
        """What SIGHUP runs: the remote config if the file is unchanged, else the file."""
        chosen = self._choose(file_loaded)
        self._save_state()
        return chosen

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _choose(self, file_loaded: LoadedConfig) -> LoadedConfig:
        good = self.state["good"]
        if good is None:
            return file_loaded
        doc = _desired(good["doc"])
        if good["file_digest"] != file_digest(file_loaded.path):
            self.state["good"] = None
            self._report(doc.version, "superseded", good["digest"], detail=(
                "the operator's file changed after this config was applied; running the file"
            ))
            log.warning("the config file changed since remote config v%d was applied: running it",
                        doc.version)
            return file_loaded
        try:
            loaded = validate_remote(doc, file_loaded)
        except ConfigError as exc:
            self.state["good"] = None
            self._report(doc.version, "rejected", good["digest"], _errors(exc),
                         "no longer valid on this device; running the operator's file")
            log.error("remote config v%d is no longer valid; running the file:\n%s", doc.version, exc)
            return file_loaded
        log.info("running remote config v%d (applied %s)", doc.version, time.ctime(good["at"]))
        return loaded

    # -- documents --------------------------------------------------------------------------------

    def received(self, payload: bytes) -> None:
        """A desired config arrived; the newest waiting one is handled once the last is done."""
        if not payload:
            return  # the retained document was cleared: nothing to do
        self._pending = payload
        self._wake.set()

    async def _worker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            payload, self._pending = self._pending, None
            if payload is None:
                continue
            try:
                await self._handle(payload)
            except asyncio.CancelledError:
                raise
            except BaseException:  # a bug, or a SystemExit from code a document reached: go on
                self.agent.counters.incr(SCOPE, "internal_errors")
                log.exception("handling a desired config failed")

    async def _handle(self, payload: bytes) -> None:
        counters = self.agent.counters
        try:
            doc = protocol.decode_desired(payload)
        except ProtocolError as exc:
            counters.incr(SCOPE, "bad_documents")
            log.error("refused a desired config: %s", exc.detail)
            await self._refuse(None, None, [{"path": "", "reason": exc.detail}], "cannot be read")
            return
        digest = doc.digest()
        problem = self._refusal(doc, digest)
        if problem is not None:
            counters.incr(SCOPE, "configs_refused")
            log.error("refused remote config v%d: %s", doc.version, problem)
            await self._refuse(doc.version, digest, [{"path": "", "reason": problem}], problem)
            return
        if self._already(doc, digest):
            return
        try:
            async with self.agent.apply_lock:
                await self._apply(doc, digest)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # nothing a document reaches may stop the daemon
            self.agent.counters.incr(SCOPE, "internal_errors")
            log.exception("remote config v%d: checking or applying it failed", doc.version)
            self.state.update(checking=None, trial=None)
            reason = f"checking it failed: {exc!r}"[:500]
            await self._refuse(doc.version, digest, [{"path": "", "reason": reason}], "nothing changed")

    def _refusal(self, doc: DesiredConfig, digest: str) -> str | None:
        """Why ``doc`` is refused before its content is looked at, if it is."""
        if digest in self.state["poisoned"]:
            return "this document stopped the agent while it was checked before"
        if doc.device is not None and doc.device != self.agent.file_loaded.agent.device_id:
            return f"device: the document is for {doc.device}"
        if self._key is not None:
            from cloud_sync.signing import SignatureError, verify

            try:
                verify(doc, self._key)
            except SignatureError as exc:
                return exc.reason
        good = self.state["good"]
        same = (good and good["digest"] == digest) or self._last_outcome(doc, digest)
        if doc.version <= self.state["floor"] and not same:
            return f"version {doc.version} is not newer than version {self.state['floor']}, acted on before"
        return None

    def _last_outcome(self, doc: DesiredConfig, digest: str) -> bool:
        """Whether the last report is of this very document, run (a refusal is not sticky: the
        same content may come again, signed this time)."""
        report = self.state["report"]
        return bool(report and report["version"] == doc.version and report["digest"] == digest
                    and report["result"] != "rejected")

    def _already(self, doc: DesiredConfig, digest: str) -> bool:
        """The very document acted on last (a retained message seen again): report it again."""
        if self._last_outcome(doc, digest):
            self._publish()
            return True
        return False

    async def _apply(self, doc: DesiredConfig, digest: str) -> None:
        agent = self.agent
        self.state["checking"] = {"version": doc.version, "digest": digest}
        await asyncio.to_thread(self._save_state)
        try:
            new = await asyncio.to_thread(validate_remote, doc, agent.file_loaded)
        except ConfigError as exc:
            self.state["checking"] = None
            agent.counters.incr(SCOPE, "configs_rejected")
            log.error("remote config v%d is invalid:\n%s", doc.version, exc)
            detail = f"{len(exc.issues)} problems; nothing changed"
            await self._refuse(doc.version, digest, _errors(exc), detail)
            return
        before = agent.loaded
        self.state["checking"] = None
        self.state["trial"] = {
            "version": doc.version, "digest": digest, "doc": _fields(doc), "at": time.time()
        }
        await asyncio.to_thread(self._save_state)
        cloud_changed = new.agent.cloud != before.agent.cloud
        change = await agent.apply(new)
        if change.failed:
            await self._rolled_back(doc, digest, [
                {"path": f"modules.{name}", "reason": f"failed to start: {change.errors.get(name)}"}
                for name in change.failed
            ], "a module failed to start; the running config was kept")
            return
        self._report(doc.version, "applying", digest,
                     detail=f"running it; rolled back if it fails within {self.settings.grace_period:g} s")
        self._publish()
        problem = await self._trial(change, cloud_changed)
        if problem is not None:
            await agent.apply(before)
            await self._rolled_back(doc, digest, [{"path": "", "reason": problem}],
                                    "back to the last good config")
            return
        self.state.update(
            trial=None, floor=max(self.state["floor"], doc.version),
            good={"doc": _fields(doc), "digest": digest, "at": time.time(),
                  "file_digest": file_digest(agent.file_loaded.path)},
        )
        agent.counters.incr(SCOPE, "configs_applied")
        self._report(doc.version, "applied", digest, detail=str(change))
        log.info("remote config v%d applied: %s", doc.version, change)
        await self._commit()

    async def _rolled_back(
        self, doc: DesiredConfig, digest: str, errors: list[dict[str, str]], detail: str
    ) -> None:
        self.agent.counters.incr(SCOPE, "configs_rolled_back")
        log.error("remote config v%d rolled back: %s", doc.version, "; ".join(e["reason"] for e in errors))
        self.state.update(trial=None, floor=max(self.state["floor"], doc.version))
        self._report(doc.version, "rolled_back", digest, errors, detail)
        await self._commit()

    async def _refuse(
        self, version: int | None, digest: str | None, errors: list[dict[str, str]], detail: str
    ) -> None:
        self._report(version, "rejected", digest, errors, detail)
        await self._commit()

    async def _commit(self) -> None:
        await asyncio.to_thread(self._save_state)
        self._publish()

    async def _trial(self, change: Change, cloud_changed: bool) -> str | None:
        """A reason to roll back, seen within the grace period; None if it went well."""
        agent = self.agent
        watched = set(change.started) | set(change.restarted)
        base = {name: _crashes(agent, name) for name in watched}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.grace_period
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(0.2, left))
            for runner in agent.pipeline.runners if agent.pipeline else []:
                name = runner.name
                if name in base and (runner.status == "failed" or _crashes(agent, name) > base[name]):
                    return f"module {runner.name} crashed within the grace period: {runner.last_error}"
        uploader = agent.uploader
        if cloud_changed and uploader is not None and not uploader.connected:
            return f"[cloud] did not connect within the grace period: {uploader.last_error or 'no answer'}"
        return None

    # -- reports and state ------------------------------------------------------------------------

    def _report(
        self, version: int | None, result: str, digest: str | None,
        errors: list[dict[str, str]] | None = None, detail: str = "",
    ) -> None:
        report = ConfigReport(version, result, errors or [], detail, self.running(), digest, time.time())
        self.state["report"] = asdict(report)

    def running(self) -> dict[str, Any]:
        good = self.state["good"]
        trial = self.state["trial"]
        if trial is not None:
            return {"source": "remote", "version": trial["version"], "trial": True}
        if good is not None:
            return {"source": "remote", "version": good["doc"]["version"]}
        return {"source": "file", "version": None}

    def _publish(self) -> None:
        report = self.state["report"]
        uploader = self.agent.uploader
        if report is None or uploader is None:
            return
        device = self.agent.file_loaded.agent.device_id
        topic = protocol.config_topic(uploader.config.prefix, device, "reported")
        if not uploader.publish(topic, ConfigReport(**report).encode(), retain=True):
            log.info("the config report goes out once the cloud link is back")

    def connected(self) -> None:
        """The cloud link is (again) up: the retained report says where things stand."""
        self._publish()

    def summary(self) -> dict[str, Any]:
        """For status: what runs, and the last report."""
        report = self.state["report"]
        return {
            **self.running(),
            "last": None if report is None else {
                key: report[key] for key in ("version", "result", "detail", "errors", "at")
            },
        }

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return self.state
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s); starting without a remote config", self.path, exc)
            return self.state
        return {**self.state, **state} if isinstance(state, dict) else self.state

    def _save_state(self) -> None:
        """Atomically, mode 600 (the config may name secret files), fsynced: it must survive a
        power cut as well as the outbox does."""
        temporary = self.path.with_suffix(".tmp")
        data = json.dumps(self.state, indent=1).encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)


def file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _crashes(agent: AgentControl, name: str) -> int:
    totals = agent.counters.totals
    scope = f"module:{name}"
    return totals.get((scope, "restarts"), 0) + totals.get((scope, "hangs"), 0)


def _fields(doc: DesiredConfig) -> dict[str, Any]:
    return {**doc.fields(), "signature": doc.signature}


def _desired(fields: dict[str, Any]) -> DesiredConfig:
    return DesiredConfig(
        fields["version"], fields["config"], fields.get("device"), fields.get("issued_at"),
        fields.get("issued_by"), fields.get("signature"),
    )


def _errors(exc: ConfigError) -> list[dict[str, str]]:
    return [{"path": issue.path, "reason": issue.reason} for issue in exc.issues]
