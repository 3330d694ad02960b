"""What `fedsys client start` prints: start-up, one line per round, warnings; not every message."""

from fedsys.deploy.client import concise

INFO = "\x1b[92mINFO \x1b[0m:      "
RUN = "10655336991243890644"


def _exchange(kind: str, task: int) -> list[str]:
    """The lines one message exchange leaves, as the SuperNode and the app gate print them."""
    received = [
        f"[supernode] {INFO}",
        f"[supernode] {INFO}[RUN {RUN}]",
        f"[supernode] {INFO}Receiving: {kind} message (ID: 409ee2644cbfd0db79a3a406f3ab4557)",
        f"[gate] 2026-11-30 12:30:21,249 INFO fedsys.deploy: run {RUN} task {task}: app FAB 7f48 is approved",
        f"[supernode] {INFO}Received successfully",
        f"[gate] 2026-11-30 12:30:23,420 INFO fedsys.deploy: run {RUN}: {kind} task answered in 1.52 s",
    ]
    sent = [
        f"[supernode] {INFO}",
        f"[supernode] {INFO}[RUN {RUN}, ROUND 3]",
        f"[supernode] {INFO}Sending: {kind} message (ID: c568ecfd893a5e7024ab6ac6ab716dec)",
        f"[supernode] {INFO}Sent successfully",
    ]
    return received + sent


def _secagg_round(rnd: int) -> list[str]:
    lines = []
    for task, kind in enumerate(("train.secagg_setup", "train.secagg_share", "train.secagg_mask")):
        lines += _exchange(kind, task)
        if kind == "train.secagg_mask":
            lines.append(
                f"[gate] 2026-11-30 12:30:56,223 INFO fedsys: round {rnd}: trained; epsilon now 2.84"
            )
    return lines + _exchange("train.secagg_unmask", 9)


def test_three_secagg_rounds_print_one_line_each_not_one_per_message():
    shown: list[str] = []
    sink = concise(shown.append)
    everything = [line for rnd in (1, 2, 3) for line in _secagg_round(rnd)]

    for line in everything:
        sink(line)

    assert len(everything) == 123
    assert shown == [
        f"[gate] 2026-11-30 12:30:56,223 INFO fedsys: round {r}: trained; epsilon now 2.84" for r in (1, 2, 3)
    ]


def test_start_up_warnings_and_refusals_stay_on_the_console():
    shown: list[str] = []
    sink = concise(shown.append)
    lines = [
        f"[supernode] {INFO}Starting Flower SuperNode",
        f"[supernode] {INFO}SuperNode ID: 778607742816095910",
        "[supernode] \x1b[93mWARNING \x1b[0m:   Connection attempt failed, retrying in 0.22 seconds",
        f"[gate] 2026-11-30 08:10:07,911 INFO fedsys.deploy: run {RUN} task 37: app FAB 6e3e is NOT "
        "approved, refusing it",
        f"[gate] 2026-11-30 08:10:08,433 WARNING fedsys.deploy: run {RUN}: refused by the data holder",
        "[gate] 2026-11-30 08:10:30,408 WARNING fedsys: declining: this data holder requires DP-SGD",
        "[fedsys] received SIGTERM; shutting down",
    ]

    for line in lines:
        sink(line)

    assert shown == lines
