"""The data holder's app gate: it runs the node's own installed ClientApp, and only for approved runs.

A stock SuperNode executes whatever app the server submits (the FAB is unpacked and imported).
Flower's own remedy, ``--trusted-entities``, only accepts FABs signed through Flower Hub, which
a federation without Internet access cannot use. fedsys instead runs the SuperNode with
``--isolation process`` and this gate as its only executor (SuperExec):

- it acquires ClientApp tasks from the SuperNode's local Runtime API (authenticated with the
  SuperExec shared secret, so no other local process can take them);
- for each task it pulls the run's FAB and compares ``sha256(FAB)`` with the hashes the data
  holder approved (by default: the FAB of its own installed fedsys, see :mod:`fedsys.deploy.app`);
- an approved task runs the *installed* ClientApp (never code from the FAB); any other task is
  answered with an ``INVALID_FAB`` error reply and logged, so the server drops that node.

Tasks run in processes forked from a forkserver that has imported torch, Opacus and fedsys
once, which removes the ~4 s of imports a fresh ``flwr-clientapp`` process pays per message.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import multiprocessing
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # flwr is imported lazily: the CLI must start fast
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp
    from flwr.supercore.fab import Fab
    from flwr.supercore.run import Run
    from flwr.supercore.runtime import RuntimeHttpClient

log = logging.getLogger("fedsys.deploy")
ACQUIRE_TASK_METHOD = "/flwr.proto.Runtime/AcquireTask"
DEFAULT_PRELOAD = ("torch", "opacus", "fedsys.node.handlers", "fedsys.privacy")


@dataclass(frozen=True)
class GateSettings:
    """What the gate needs; everything here is the data holder's own choice."""

    runtime_api_address: str
    approved: frozenset[str]
    client_app: str  # "module:attribute" of the installed ClientApp
    secret: bytes | None = None
    poll_interval: float = 0.05  # a local call; every exchange of a round waits up to one tick
    preload: Sequence[str] = DEFAULT_PRELOAD


def serve(settings: GateSettings, stop: threading.Event | None = None) -> None:
    """Acquire and run ClientApp tasks until ``stop`` is set (or the process is signalled)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType

    stop = stop or threading.Event()
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*settings.preload, settings.client_app.partition(":")[0]])
    _warm_up(context)
    client = runtime_client(settings.runtime_api_address, component="SuperExec", secret=settings.secret)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    running: list[BaseProcess] = []
    log.info("app gate ready; approved FAB hashes: %s", ", ".join(sorted(settings.approved)))
    try:
        while not stop.is_set():
            running = [p for p in running if p.is_alive()]
            response = client.AcquireTask(request)
            if not (response.HasField("task") and response.token):
                stop.wait(settings.poll_interval)
                continue
            task = response.task
            verdict = "approved" if task.fab_hash in settings.approved else "NOT approved, refusing it"
            log.info("run %d task %d: app FAB %s is %s", task.run_id, task.task_id, task.fab_hash, verdict)
            process: BaseProcess = context.Process(
                target=run_task,
                args=(settings.runtime_api_address, response.token, settings.approved, settings.client_app),
                name=f"fedsys-task-{task.task_id}",
            )
            process.start()
            running.append(process)
    finally:
        client.close()
        for process in running:
            process.terminate()


def run_task(address: str, token: str, approved: frozenset[str], client_app: str) -> None:
    """Run one task (in a child process): pull it, check its FAB, answer it."""
    from flwr.common.constant import SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    _configure_child_logging()
    client = runtime_client(address, component="flwr-clientapp", token=token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message: Message | None = None
    context: Context | None = None
    reply: Message | None = None
    status, details = SubStatus.FAILED, "the task failed before it started"
    try:
        message, context, run, fab = pull_task_input(client)
        reply, status, details = _answer(message, context, run, fab, approved, client_app)
    except Exception as err:  # the reply must carry any failure back to the server
        log.exception("task failed")
        details = f"{type(err).__name__}: {err}"
        if message is not None:
            reply = _error_reply(message, code="raised", reason=details)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        finally:
            push_task_output(client=client, context=context, sub_status=status, details=details)
            heartbeat.stop()
            client.close()


def _answer(
    message: Message, context: Context, run: Run, fab: Fab, approved: frozenset[str], client_app: str
) -> tuple[Message, str, str]:
    from flwr.common.constant import SubStatus

    digest = hashlib.sha256(fab.content).hexdigest()
    if digest not in approved or run.fab_hash != digest:
        reason = refusal_reason(digest, approved, app=f"{run.fab_id}=={run.fab_version}")
        log.warning("run %d: %s", run.run_id, reason)
        return _error_reply(message, code="invalid-fab", reason=reason), SubStatus.FAILED, reason
    app = load_client_app(client_app)
    started = time.perf_counter()
    reply = app(message=message, context=context)
    log.info(
        "run %d: %s task answered in %.2f s",
        run.run_id,
        message.metadata.message_type,
        time.perf_counter() - started,
    )
    return reply, SubStatus.COMPLETED, ""


def refusal_reason(fab_hash: str, approved: frozenset[str], *, app: str) -> str:
    """The message a refused run gets (and the data holder's log shows)."""
    allowed = ", ".join(h[:12] for h in sorted(approved)) or "none"
    return (
        f"refused by the data holder: app {app} with FAB hash {fab_hash[:12]} is not approved "
        f"(this node runs only its installed fedsys ClientApp; approved: {allowed})"
    )


def load_client_app(reference: str) -> ClientApp:
    """Import ``module:attribute`` and check it is a ClientApp."""
    from flwr.clientapp import ClientApp

    module_name, _, attribute = reference.partition(":")
    app = getattr(importlib.import_module(module_name), attribute or "app")
    if not isinstance(app, ClientApp):
        raise TypeError(f"{reference} is not a flwr ClientApp")
    return app


def _error_reply(message: Message, *, code: str, reason: str) -> Message:
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.constant import ErrorCode

    number = ErrorCode.INVALID_FAB if code == "invalid-fab" else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    return Message(Error(code=number, reason=reason), reply_to=message)


def runtime_client(
    address: str,
    *,
    component: str,
    token: str | None = None,
    secret: bytes | None = None,
    root_certificates: bytes | None = None,
) -> RuntimeHttpClient:
    """A Runtime API client: TLS if ``root_certificates`` are given (the SuperLink), else plain
    HTTP (a SuperNode's loopback-only Runtime API, see :mod:`fedsys.deploy.client`)."""
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.protobuf.client import ProtobufClientInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[ProtobufClientInterceptor] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    if secret is not None:
        interceptors.append(
            SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE_TASK_METHOD})
        )
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=root_certificates is None,
        root_certificates=root_certificates,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def _warm_up(context: multiprocessing.context.BaseContext) -> None:
    started = time.perf_counter()
    process: BaseProcess = context.Process(target=_noop)  # type: ignore[attr-defined]
    process.start()
    process.join()
    log.info("task processes preloaded in %.1f s", time.perf_counter() - started)


def _noop() -> None:
    """Target of the warm-up process (starting it makes the forkserver import the preload)."""


def _configure_child_logging() -> None:
    # A forkserver child starts without the gate's logging set-up; fedsys' own records must
    # still reach the data holder's log (refusals, budget decisions).
    logger = logging.getLogger("fedsys")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
