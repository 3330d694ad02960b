"""The operator's app gate: the SuperLink starts a ServerApp only for an approved FAB.

Flower's Control API (``flwr run``) shares the SuperLink's port with the Fleet API and has
no account authentication in the open-source edition: whoever reaches the port and trusts
the CA (whose certificate every data holder has) can submit a run, and a stock SuperLink
then executes that run's ServerApp code on the operator's host. fedsys runs the SuperLink
with ``--isolation process`` and this gate as its only executor: it takes ServerApp tasks
from the SuperLink's Runtime API (authenticated with the SuperExec shared secret) and

- for an approved FAB hash starts the stock ``flwr-serverapp`` process, exactly as Flower's
  own SuperExec would;
- for any other FAB fails the task with a reason, so the run ends ``finished:failed`` and
  no code of it runs (``flwr ls`` shows the reason; the gate logs it).

Data holders do not depend on this gate: their own (:mod:`fedsys.deploy.executor`) refuses
unapproved code independently.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from fedsys.deploy.executor import runtime_client

log = logging.getLogger("fedsys.deploy")


@dataclass(frozen=True)
class ServerGateSettings:
    """What the operator's gate needs."""

    runtime_api_address: str
    approved: frozenset[str]
    root_certificates: str | None  # None: the SuperLink runs --insecure
    secret: bytes | None = None
    poll_interval: float = 0.2


def serve_server_apps(settings: ServerGateSettings, stop: threading.Event | None = None) -> None:
    """Acquire ServerApp tasks until ``stop`` is set; start approved ones, fail the others."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import ExecutionSpec
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    stop = stop or threading.Event()
    certificates = _read(settings.root_certificates)
    client = runtime_client(
        settings.runtime_api_address,
        component="SuperExec",
        secret=settings.secret,
        root_certificates=certificates,
    )
    launcher = SubprocessExecutor()
    request = AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP])
    log.info("server app gate ready; approved FAB hashes: %s", ", ".join(sorted(settings.approved)))
    try:
        while not stop.is_set():
            response = client.AcquireTask(request)
            if not (response.HasField("task") and response.token):
                stop.wait(settings.poll_interval)
                continue
            task = response.task
            if task.fab_hash not in settings.approved:
                reason = refusal_reason(task.fab_hash, settings.approved)
                log.warning("run %d: %s", task.run_id, reason)
                fail_task(settings, response.token, reason)
                continue
            log.info("run %d: starting the approved ServerApp (FAB %s)", task.run_id, task.fab_hash)
            spec = ExecutionSpec(
                task_type=TaskType.SERVER_APP,
                runtime_api_address=settings.runtime_api_address,
                token=response.token,
                insecure=settings.root_certificates is None,
                root_certificates_path=settings.root_certificates,
                runtime_dependency_install=False,
                parent_pid=os.getpid(),
                suppress_output=True,
                task_id=task.task_id,
                fab_hash=task.fab_hash,
            )
            launcher.launch(spec)
    finally:
        client.close()
        launcher.close()


def refusal_reason(fab_hash: str, approved: frozenset[str]) -> str:
    """Why the operator's SuperLink will not run this app."""
    allowed = ", ".join(h[:12] for h in sorted(approved)) or "none"
    return (
        f"refused by the operator: FAB hash {fab_hash[:12]} is not an approved fedsys app "
        f"(approved: {allowed}); no code of this run was executed"
    )


def fail_task(settings: ServerGateSettings, token: str, reason: str) -> None:
    """End a refused ServerApp task as failed, with ``reason`` as its details."""
    from flwr.common.constant import SubStatus
    from flwr.proto.runtime_pb2 import PullTaskInputRequest, PushTaskOutputRequest

    client = runtime_client(
        settings.runtime_api_address,
        component="flwr-serverapp",
        token=token,
        root_certificates=_read(settings.root_certificates),
    )
    try:
        client.PullTaskInput(PullTaskInputRequest())  # activates the task, so it can be finished
        client.PushTaskOutput(PushTaskOutputRequest(sub_status=SubStatus.FAILED, details=reason))
    finally:
        client.close()


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as fh:
        return fh.read()
