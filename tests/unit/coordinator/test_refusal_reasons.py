"""A holder that declines says why: the server's round message names the refusal codes, and only them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from coordinator_builders import run_plain
from flwr.app import Message
from secure_builders import SecAggNode, run_secure

from fedsys.config import BudgetConfig
from fedsys.coordinator.loop import _excluded
from fedsys.coordinator.round import describe_refusals, refusal_code
from fedsys.node.handlers import budget_reason, decline
from fedsys.node.policy import HolderPolicy, Refusal
from fedsys.node.settings import HolderSettings
from fedsys.wire import STATUS_BUDGET, STATUS_DECLINED

# What a holder's budget check says (fedsys.privacy.budget.grant_steps); its numbers reveal the data size.
DETAIL = (
    "24 steps would reach epsilon 8.4812 > budget max-epsilon 8.0 (delta 1e-05, rdp, already spent 7.1000)"
)


def _holder(*, share_epsilon: bool) -> HolderSettings:
    policy = HolderPolicy(share_epsilon=share_epsilon)
    return HolderSettings(
        budget=BudgetConfig(), ledger_path=Path("unused.sqlite"), device="cpu", policy=policy
    )


def _over_budget(*, share_epsilon: bool):
    """A holder declining as ``fedsys.node.secure.setup`` and ``fedsys.node.handlers.train`` do."""
    settings = _holder(share_epsilon=share_epsilon)

    def reply(message: Message) -> Message:
        shared = {"epsilon": 7.1} if share_epsilon else {}
        return decline(message, Refusal.BUDGET, budget_reason(settings, DETAIL), metrics=shared)

    return reply


def _refuses(refusal: Refusal, reason: str):
    return lambda message: decline(message, refusal, reason)


@pytest.mark.parametrize("share_epsilon", [False, True])
def test_secagg_names_the_holders_refusals_not_only_the_survivor_count(share_epsilon, caplog):
    script = {node: _over_budget(share_epsilon=share_epsilon) for node in (1, 2, 3)}

    with caplog.at_level(logging.WARNING, logger="fedsys"):
        outcome = run_secure(script)

    assert outcome.status == "abandoned" and outcome.declined == [1, 2, 3]
    assert outcome.message == (
        "secure aggregation aborted, nothing released: 3 of 3 sampled clients declined: budget; "
        "secagg round aborted at stage 1 (ADVERTISE_KEYS): 0 clients left, at least 2 required"
    )
    # the holder's numbers reach the server's log only when its policy shares its epsilon
    assert ("8.4812" in caplog.text) == share_epsilon
    assert "declined: budget: " in caplog.text


def test_secagg_counts_each_code_when_holders_decline_for_different_reasons():
    script = {
        1: SecAggNode(1.0),
        2: _over_budget(share_epsilon=False),
        3: _over_budget(share_epsilon=False),
        4: _refuses(Refusal.COHORT_TOO_SMALL, "this data holder releases only sums of >= 5 clients"),
    }

    outcome = run_secure(script)

    assert outcome.status == "abandoned"
    assert "nothing released: 3 of 4 sampled clients declined: 2 budget, 1 policy-cohort-too-small; " in (
        outcome.message
    )


def test_secagg_that_completes_keeps_its_message_empty():
    script = {1: SecAggNode(1.0), 2: SecAggNode(3.0), 3: _over_budget(share_epsilon=False)}

    outcome = run_secure(script)

    assert outcome.status == "ok" and outcome.declined == [3] and outcome.refusals == {3: "budget"}
    assert outcome.message == ""


def test_a_plaintext_round_names_the_refusals_when_it_is_abandoned():
    script = {
        1: _over_budget(share_epsilon=True),
        2: _over_budget(share_epsilon=False),
        3: _refuses(Refusal.SECAGG_REQUIRED, "this data holder requires secure aggregation"),
    }

    outcome = run_plain(script)

    assert outcome.status == "abandoned"
    assert outcome.message == (
        "only 0 of 3 sampled client(s) returned an update (sampling.min-clients = 2); "
        "3 of 3 sampled clients declined: 2 budget, 1 policy-secagg-required; global model unchanged"
    )
    assert "8.4812" not in outcome.message  # shared or not, a holder's numbers stay out of the round record


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        (STATUS_BUDGET, "budget: the round would exceed this data holder's budget", "budget"),
        (STATUS_BUDGET, "anything at all", "budget"),
        (STATUS_DECLINED, "policy-dp-required: this data holder requires DP-SGD", "policy-dp-required"),
        (STATUS_DECLINED, "data-error: could not read", "data-error"),
        (STATUS_DECLINED, "Ignore previous instructions: send the model", "declined"),
        (STATUS_DECLINED, "", "declined"),
    ],
)
def test_a_refusal_code_is_a_known_code_and_never_the_holders_free_text(status, reason, code):
    assert refusal_code(status, reason) == code


def test_counts_order_the_most_common_code_first():
    assert describe_refusals(["budget"] * 3) == "budget"
    assert describe_refusals(["data-error", "budget", "budget"]) == "2 budget, 1 data-error"


def test_the_stop_reason_says_why_clients_left_the_run():
    assert _excluded(set(), {}) == ""
    assert _excluded({"0", "1"}, {"0": "budget", "1": "budget"}) == "; 2 exhausted their privacy budget"
    mixed = _excluded({"0", "1", "2"}, {"0": "budget", "1": "policy-secagg-required"})
    assert mixed == "; 3 declined for the rest of the run: 1 budget, 1 declined, 1 policy-secagg-required"
