"""Commands from the cloud: request on ``<prefix>/<device-id>/cmd/<name>``, one reply each.

A reply goes to the MQTT 5 Response Topic with the request's Correlation Data, or (MQTT 3.1.1)
to ``reply_to`` in the payload, or else to ``<prefix>/<device-id>/reply``; only topics under the
device's own ``reply`` are used, so a request cannot make the device publish elsewhere.

A command is executed at most once, and never late: it must carry an expiry (MQTT 5 Message
Expiry, which the broker enforces, or ``expires_at`` in the payload, checked against the
device's clock) of at most ``MAX_EXPIRY``; one that arrives expired, or as a retained message,
is answered with an error and not run; a repeated ``id`` (a QoS 1 redelivery) gets the first
reply again, or, once that is forgotten, ``already_done``: ids are remembered until their
command expires, across restarts (``seen``). A device that runs only signed configs
(``[remote] public_key_file``) answers only the commands that change nothing (``READ_ONLY``):
an unsigned request must not do what an unsigned config may not. Unknown commands,
bad arguments, a handler that fails or takes longer than ``TIMEOUT``: an error reply, counted,
never a crash. At most ``CONCURRENT`` run at once; more get ``busy``.

A reply that finds the link down (a reconnect while the command ran: a link judged dead, a
broker restart) is not dropped: it waits, and goes out when the link is back, unless its command
has expired by then (``UNSENT`` at most).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import __version__, codec
from agent.health.lognames import current_names
from agent.health.status import read_status
from agent.remote.seen import SeenCommands
from cloud_sync import protocol
from cloud_sync.protocol import Command, ProtocolError

if TYPE_CHECKING:
    from agent.remote.control import AgentControl

log = logging.getLogger(__name__)

SCOPE = "remote"
TIMEOUT = 15.0
CONCURRENT = 4
REMEMBERED = 256
"""Replies remembered, to answer a redelivery with the first reply (the ids themselves are
remembered longer: ``seen``)."""
UNSENT = 64
"""Replies kept while the link is down, for the next connection."""
MAX_EXPIRY = 3600.0
"""The longest a command may wait for the device: a command for later is not a command."""
READ_ONLY = frozenset({"ping", "status"})


class CommandFailed(Exception):
    """A command cannot be done; ``code`` is a short label, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _RestartArgs(_Args):
    name: str = Field(min_length=1, max_length=64)
    """The module instance to restart."""


class _LogLevelArgs(_Args):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    logger: str | None = Field(default=None, max_length=200)
    """One logger (``agent.modules.win``); the whole agent when left out."""
    duration: float | None = Field(default=None, gt=0, le=86400)
    """Seconds after which the level goes back to what it was."""


Handler = Callable[[Any], Awaitable[Any]]


class Commands:
    """The device's command handler (one per agent, when ``[remote] allow_commands`` is on)."""

    def __init__(self, agent: AgentControl) -> None:
        self.agent = agent
        self.device_id = agent.file_loaded.agent.device_id
        self._handlers: dict[str, tuple[type[_Args], Handler]] = {
            "ping": (_Args, self._ping),
            "status": (_Args, self._status),
            "sync-now": (_Args, self._sync_now),
            "restart-module": (_RestartArgs, self._restart_module),
            "set-log-level": (_LogLevelArgs, self._set_log_level),
        }
        self._replies: OrderedDict[str, bytes] = OrderedDict()
        self._unsent: OrderedDict[str, tuple[str, bytes | None, bytes, float]] = OrderedDict()
        self._running: set[asyncio.Task[None]] = set()
        remote = agent.file_loaded.agent.remote
        self.signed_only = remote is not None and remote.public_key_file is not None
        self.seen = SeenCommands(agent.file_loaded.agent.data_dir)
        self.seen.load()  # a small file, read once at start-up

    def received(self, prefix: str, name: str, payload: bytes, retain: bool, properties: Any) -> None:
        """A request arrived (on the event loop, from the uploader's reader): answer it."""
        counters = self.agent.counters
        counters.incr(SCOPE, "commands")
        destination, correlation = self._destination(prefix, payload, properties)
        command_id: str | None = None
        try:
            command = protocol.decode_command(name, payload)
            command_id = command.id
            if command_id in self._replies:
                counters.incr(SCOPE, "command_repeats")
                self._send(destination, correlation, self._replies[command_id])
                return
            until = self._admit(command, retain, properties)
        except ProtocolError as exc:
            self._fail(destination, correlation, command_id, name, exc.reason, exc.detail)
            return
        except CommandFailed as exc:
            self._fail(destination, correlation, command_id, name, exc.code, str(exc))
            return
        self.seen.add(command.id, until)
        task = asyncio.create_task(self._run(command, destination, correlation, until), name=f"cmd:{name}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def connected(self) -> None:
        """The link is (back) up: the replies that waited for it go out, those whose commands
        are still alive."""
        waiting, self._unsent = self._unsent, OrderedDict()
        now = time.time()
        for command_id, (topic, correlation, payload, until) in waiting.items():
            if until < now:
                self.agent.counters.incr(SCOPE, "replies_expired")
                log.warning("the reply to command %s is not sent: its command expired while the link "
                            "was down", command_id)
                continue
            self._send(topic, correlation, payload, command_id, until)

    async def stop(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    # -- checks -----------------------------------------------------------------------------------

    def _destination(self, prefix: str, payload: bytes, properties: Any) -> tuple[str, bytes | None]:
        """Where the reply goes, and the correlation data to send with it."""
        wanted = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        if wanted is None:
            wanted = _reply_to(payload)
        default = protocol.reply_topic(prefix, self.device_id)
        if wanted is None:
            return default, correlation
        if not protocol.is_reply_topic(prefix, self.device_id, wanted):
            self.agent.counters.incr(SCOPE, "bad_reply_topics")
            log.warning("a command asked for a reply on %r, outside %s/#: answering there instead",
                        wanted[:200], default)
            return default, correlation
        return wanted, correlation

    def _admit(self, command: Command, retain: bool, properties: Any) -> float:
        """The time after which ``command`` can no longer arrive, if it may run now."""
        if command.name not in self._handlers:
            known = ", ".join(self._handlers)
            raise CommandFailed("unknown_command", f"{command.name}: not a command (known: {known})")
        if self.signed_only and command.name not in READ_ONLY:
            raise CommandFailed("signed_only", "this device runs only signed configs, and answers only "
                                f"{', '.join(sorted(READ_ONLY))}")
        if retain:
            raise CommandFailed("retained", "a retained command is never executed (it could be stale)")
        if command.id in self.seen:
            self.agent.counters.incr(SCOPE, "command_repeats")
            raise CommandFailed("already_done", "this command id was acted on before; not run again")
        now = time.time()
        broker_expiry = getattr(properties, "MessageExpiryInterval", None)
        if command.expires_at is None and broker_expiry is None:
            raise CommandFailed("no_expiry", "give the command an MQTT 5 message expiry or expires_at")
        if command.expires_at is not None and command.expires_at < now:
            late = now - command.expires_at
            raise CommandFailed("expired", f"expired {late:.1f} s ago (device clock); not executed")
        horizon = [t for t in (command.expires_at, now + broker_expiry if broker_expiry else None) if t]
        if max(horizon) > now + MAX_EXPIRY:
            raise CommandFailed("expiry_too_far", f"expires over {MAX_EXPIRY:g} s from now; not executed")
        if len(self._running) >= CONCURRENT or self.seen.full():
            raise CommandFailed("busy", f"{CONCURRENT} commands are running; try again")
        return max(horizon)

    # -- running and replying ---------------------------------------------------------------------

    async def _run(self, command: Command, destination: str, correlation: bytes | None, until: float) -> None:
        model, handler = self._handlers[command.name]
        await asyncio.to_thread(self.seen.save)  # before it runs: at most once, even across a crash
        try:
            try:
                args = model.model_validate(command.args)
            except ValidationError as exc:
                raise CommandFailed("bad_args", _describe(exc)) from None
            async with asyncio.timeout(TIMEOUT):
                result = await handler(args)
        except CommandFailed as exc:
            self._fail(destination, correlation, command.id, command.name, exc.code, str(exc), until)
            return
        except TimeoutError:
            self._fail(destination, correlation, command.id, command.name, "timeout",
                       f"not done within {TIMEOUT:g} s", until)
            return
        except Exception as exc:  # a bug in a handler is an error reply, not a dead agent
            log.exception("command %s failed", command.name)
            self._fail(destination, correlation, command.id, command.name, "internal_error", repr(exc), until)
            return
        log.info("command %s (%s) done", command.name, command.id)
        self._remember(command.id, protocol.encode_reply(command.id, result))
        self._send(destination, correlation, self._replies[command.id], command.id, until)

    def _fail(
        self, destination: str, correlation: bytes | None, command_id: str | None, name: str,
        code: str, message: str, until: float | None = None,
    ) -> None:
        self.agent.counters.incr(SCOPE, "command_errors")
        log.warning("command %s refused (%s): %s", name[:40], code, message)
        reply = protocol.encode_reply(command_id, error=(code, message))
        if command_id is not None and code not in ("busy", "expired"):
            self._remember(command_id, reply)
        self._send(destination, correlation, reply, command_id, until)

    def _remember(self, command_id: str, reply: bytes) -> None:
        self._replies[command_id] = reply
        while len(self._replies) > REMEMBERED:
            self._replies.popitem(last=False)

    def _send(
        self, topic: str, correlation: bytes | None, payload: bytes, command_id: str | None = None,
        until: float | None = None,
    ) -> None:
        """Publish a reply; one that finds the link down waits for the next connection, if its
        command is known and will still be alive (``connected``)."""
        uploader = self.agent.uploader
        if uploader is not None and uploader.publish(topic, payload, correlation=correlation):
            return
        if command_id is None or until is None:
            log.warning("could not send a command reply on %s: not connected", topic)
            return
        self._unsent[command_id] = (topic, correlation, payload, until)
        while len(self._unsent) > UNSENT:
            self._unsent.popitem(last=False)
        log.warning("the reply to command %s waits for the link to the cloud (not connected)", command_id)

    # -- the commands -----------------------------------------------------------------------------

    async def _ping(self, args: _Args) -> dict[str, Any]:
        return {"pong": True, "time": time.time(), "version": __version__,
                "uptime_s": round(time.time() - self.agent.started_at, 1)}

    async def _status(self, args: _Args) -> dict[str, Any]:
        """What ``edge-agent status --json`` says (it holds no secret: only figures and names)."""
        status = await asyncio.to_thread(read_status, self.agent.file_loaded.agent.data_dir)
        return dict(codec.loads(codec.dumps(status)))

    async def _sync_now(self, args: _Args) -> dict[str, Any]:
        uploader = self.agent.uploader
        if uploader is None:
            raise CommandFailed("no_sync", "this agent has no [cloud] section")
        uploader.sync_now()
        return {"connected": uploader.connected, "acked_seq": uploader.tracker.acked,
                "unacked_records": uploader.tracker.unacked}

    async def _restart_module(self, args: _RestartArgs) -> dict[str, Any]:
        status = await self.agent.restart_module(args.name)
        if status is None:
            names = ", ".join(r.name for r in self.agent.pipeline.runners) if self.agent.pipeline else ""
            raise CommandFailed("unknown_module", f"args.name: no module {args.name!r} (running: {names})")
        return {"module": args.name, "status": status}

    async def _set_log_level(self, args: _LogLevelArgs) -> dict[str, Any]:
        names = current_names(args.logger)
        if args.logger is not None and not any(name in logging.Logger.manager.loggerDict for name in names):
            # getLogger creates what it is asked for and keeps it: a name per command would grow
            # the agent's memory without end.
            raise CommandFailed("unknown_logger", f"args.logger: no logger {args.logger!r} in the agent")
        loggers = [logging.getLogger(name) for name in names]
        previous = logging.getLevelName(loggers[-1].getEffectiveLevel())
        for logger in loggers:
            before = logger.level
            logger.setLevel(args.level)
            if args.duration is not None:
                asyncio.get_running_loop().call_later(args.duration, logger.setLevel, before)
        log.warning("log level of %s set to %s by a command%s", args.logger or "the agent", args.level,
                    f" for {args.duration:g} s" if args.duration else "")
        return {"logger": args.logger or "root", "level": args.level, "previous": previous,
                "until": time.time() + args.duration if args.duration else None}


def _reply_to(payload: bytes) -> str | None:
    """``reply_to`` from a payload that may not even be a valid command (to answer the error)."""
    try:
        doc = codec.loads(payload) if len(payload) <= protocol.MAX_COMMAND else None
    except ValueError:
        return None
    reply_to = doc.get("reply_to") if isinstance(doc, dict) else None
    return reply_to if isinstance(reply_to, str) else None


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        reason = "unknown argument" if error["type"] == "extra_forbidden" else error["msg"]
        parts.append(f"args.{where}: {reason}" if where else f"args: {reason}")
    return "; ".join(parts)
