"""A data holder with a SecAgg+ identity and peers: a server cannot downgrade it to the semi-honest protocol.

The holder is configured as in deployment (node config with ``identity-key`` and ``peers``, the keys
``fedsys client start --key --peers`` writes); the handlers are the ClientApp's own, and the test plays
the server, writing every byte of the request.
"""

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord
from holder_builders import (
    ROUND,
    forbid_data_reads,
    node_context,
    server_request,
    setup_request,
    status_of,
    write_holder,
)

from fedsys.config import RunConfig
from fedsys.errors import ConfigError
from fedsys.node import secure
from fedsys.node.policy import Refusal
from fedsys.node.settings import holder_settings
from fedsys.privacy import PrivacyLedger
from fedsys.secagg import AdvertiseKeysReply
from fedsys.secagg.consistency import cohort_of
from fedsys.secagg.identity import keys_payload, load_identity, verify
from fedsys.wire import SECAGG


def _openssh_key(path):
    key = ec.generate_private_key(ec.SECP384R1())  # as `fedsys certs node` makes them
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _holder(tmp_path, *, peers=True, **policy):
    own = _openssh_key(tmp_path / "node.key")
    others = [_openssh_key(tmp_path / f"peer{i}.key") for i in (2, 3)]
    (tmp_path / "peers.txt").write_bytes(b"\n".join([own, *others]) + b"\n")
    node = write_holder(tmp_path, rows=60, **{"identity-key": str(tmp_path / "node.key")}, **policy)
    return node | ({"peers": str(tmp_path / "peers.txt")} if peers else {})


def _scenario(mode):
    base = {"model": "logreg", "num-rounds": 5, "train.local-steps": 1, "train.batch-size": 16}
    return RunConfig().replace({**base, "dp.noise-multiplier": 1.0, "secagg.mode": mode})


def _setup_message(config, threshold=3):
    setup = setup_request(threshold)
    extra = {SECAGG: ConfigRecord(setup.to_record())}
    return server_request(config, extra=extra, message_type="train.secagg_setup")[0], setup


def test_a_holder_with_peers_refuses_a_semi_honest_setup_before_reading_any_data(tmp_path, monkeypatch):
    context = node_context(_holder(tmp_path))
    message, _ = _setup_message(_scenario("semi-honest"))
    forbid_data_reads(monkeypatch)

    reply = secure.setup(message, context, {})

    assert status_of(reply)[1].startswith(Refusal.MALICIOUS_SECAGG_REQUIRED.value)
    assert SECAGG not in reply.content.config_records  # no keys advertised
    assert secure._STATE not in context.state.config_records
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.summary() == []


def test_a_holder_with_peers_signs_its_keys_for_a_malicious_round(tmp_path):
    node = _holder(tmp_path)
    context = node_context(node)
    message, setup = _setup_message(_scenario("malicious"))

    reply = secure.setup(message, context, {})

    keys = AdvertiseKeysReply.from_record(dict(reply.content.config_records[SECAGG])).keys
    identity = load_identity(tmp_path / "node.key")
    payload = keys_payload(
        ROUND, sender=1, cohort=cohort_of(setup), encryption=keys.encryption, masking=keys.masking
    )
    assert keys.identity == identity.public and verify(keys.identity, keys.signature, payload)


def test_a_holder_with_peers_refuses_a_threshold_a_malicious_server_could_split(tmp_path):
    context = node_context(_holder(tmp_path))
    message, _ = _setup_message(_scenario("malicious"), threshold=2)  # 3 holders need t = 3

    with pytest.raises(Exception, match="needs threshold >= 3"):
        secure.setup(message, context, {})


def test_a_server_cannot_pass_a_malicious_setup_and_then_ask_for_a_semi_honest_mask(tmp_path, monkeypatch):
    context = node_context(_holder(tmp_path))
    secure.setup(_setup_message(_scenario("malicious"))[0], context, {})
    mask_message, _ = _setup_message(_scenario("semi-honest"))
    forbid_data_reads(monkeypatch)

    with pytest.raises(Exception, match="policy"):
        secure.mask(mask_message, context, {})


def test_a_holder_without_peers_declines_a_malicious_round_it_cannot_sign_for(tmp_path, monkeypatch):
    context = node_context(_holder(tmp_path, peers=False))
    forbid_data_reads(monkeypatch)

    reply = secure.setup(_setup_message(_scenario("malicious"))[0], context, {})

    assert status_of(reply)[1].startswith(Refusal.NO_SECAGG_IDENTITY.value)


def test_malicious_secagg_is_required_exactly_when_the_holder_has_an_identity_and_peers(tmp_path):
    config = RunConfig()

    assert holder_settings(_holder(tmp_path), config).policy.require_malicious_secagg
    assert not holder_settings(_holder(tmp_path, peers=False), config).policy.require_malicious_secagg
    opted_out = _holder(tmp_path, **{"require-malicious-secagg": "false"})
    assert not holder_settings(opted_out, config).policy.require_malicious_secagg
    with pytest.raises(ConfigError, match="needs identity-key and peers"):
        holder_settings(_holder(tmp_path, peers=False, **{"require-malicious-secagg": "true"}), config)
    no_identity = {k: v for k, v in _holder(tmp_path).items() if k != "identity-key"}
    with pytest.raises(ConfigError, match="needs identity-key"):
        holder_settings(no_identity, config)
