"""The app gate's decision: the installed ClientApp runs for approved FABs only."""

import hashlib
from types import SimpleNamespace

import pytest

from fedsys.deploy import executor

APPROVED_FAB = b"the approved bundle"
APPROVED = frozenset({hashlib.sha256(APPROVED_FAB).hexdigest()})


@pytest.fixture
def calls(monkeypatch):
    seen = {"app": 0, "refused": []}

    def fake_app(message, context):
        seen["app"] += 1
        return "reply"

    monkeypatch.setattr(executor, "load_client_app", lambda ref: fake_app)
    monkeypatch.setattr(
        executor, "_error_reply", lambda m, code, reason: seen["refused"].append((code, reason))
    )
    return seen


def _task(content, claimed=None):
    digest = hashlib.sha256(content).hexdigest()
    run = SimpleNamespace(run_id=7, fab_id="fedsys/fedsys", fab_version="0.1.0", fab_hash=claimed or digest)
    message = SimpleNamespace(metadata=SimpleNamespace(message_type="train"))
    return message, object(), run, SimpleNamespace(content=content)


def test_an_approved_fab_runs_the_installed_client_app(calls):
    reply, status, _ = executor._answer(*_task(APPROVED_FAB), APPROVED, "clients.app:app")

    assert (reply, status, calls["app"]) == ("reply", "completed", 1)


def test_other_code_is_refused_and_never_loaded(calls):
    _, status, details = executor._answer(*_task(b"someone else's bundle"), APPROVED, "clients.app:app")

    assert status == "failed" and calls["app"] == 0
    [(code, reason)] = calls["refused"]
    assert code == "invalid-fab" and reason == details
    assert "refused by the data holder" in reason and "fedsys/fedsys==0.1.0" in reason


def test_a_run_claiming_an_approved_hash_for_other_content_is_refused(calls):
    approved_hash = next(iter(APPROVED))

    _, status, _ = executor._answer(*_task(b"tampered", claimed=approved_hash), APPROVED, "clients.app:app")

    assert status == "failed" and calls["app"] == 0


def test_refusal_names_the_offending_and_the_approved_hashes():
    reason = executor.refusal_reason("f" * 64, frozenset({"a" * 64}), app="x/y==1")

    assert "f" * 12 in reason and "a" * 12 in reason and "x/y==1" in reason


def test_only_a_client_app_is_loaded():
    assert type(executor.load_client_app("clients.app:app")).__name__ == "ClientApp"
    with pytest.raises(TypeError, match="is not a flwr ClientApp"):
        executor.load_client_app("fedsys.config:RunConfig")
