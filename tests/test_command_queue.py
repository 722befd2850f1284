"""`CommandQueue`: bounded whatever a control floods it with, and quit / pause / resume never wait behind a backlog."""
from __future__ import annotations

import threading

import pytest

from vcam.commands import (
    MAX_PENDING_COMMANDS, MAX_PENDING_PAUSES, MAX_PENDING_PROMPT_TEXTS, CommandQueue, Quit, SetPaused, SetPromptText,
    SwitchPrompt,
)


def test_a_flood_of_commands_is_bounded_keeps_the_newest_and_is_said_once(caplog) -> None:
    queue = CommandQueue()
    for i in range(5 * MAX_PENDING_COMMANDS):
        queue.put(SwitchPrompt(name=f"style{i}"), "osc")
    assert len(queue) == MAX_PENDING_COMMANDS
    assert queue.dropped == 4 * MAX_PENDING_COMMANDS
    kept = [item.command.name for item in queue.drain()]
    assert kept == [f"style{i}" for i in range(4 * MAX_PENDING_COMMANDS, 5 * MAX_PENDING_COMMANDS)]
    assert sum("dropped" in record.getMessage() for record in caplog.records) == 1


def test_quit_and_pause_are_never_dropped_and_overtake_in_their_own_order() -> None:
    queue = CommandQueue()
    queue.put(SetPromptText("first"), "osc")
    queue.put(SetPaused(True), "osc")
    for i in range(2 * MAX_PENDING_COMMANDS):
        queue.put(SetPromptText(f"text {i}"), "osc")
    queue.put(SetPaused(False), "hotkey")
    queue.put(Quit(), "tray")
    taken = [queue.get(timeout=0).command for _ in range(len(queue))]
    assert taken[:3] == [SetPaused(True), SetPaused(False), Quit()]
    assert taken[3:] == [SetPromptText(f"text {i}") for i in range(2 * MAX_PENDING_COMMANDS - MAX_PENDING_PROMPT_TEXTS,
                                                                   2 * MAX_PENDING_COMMANDS)]


def net_pause(commands: list[SetPaused], paused: bool = False) -> bool:
    """Whether the service ends paused after applying `commands` from `paused`."""
    for command in commands:
        paused = (not paused) if command.paused is None else command.paused
    return paused


@pytest.mark.parametrize("flood", [
    [SetPaused(True), SetPaused(False)] * (10 * MAX_PENDING_PAUSES),
    [SetPaused(None)] * (10 * MAX_PENDING_PAUSES + 1),
    [SetPaused(None)] * (10 * MAX_PENDING_PAUSES),
    [SetPaused(False), *[SetPaused(None)] * (3 * MAX_PENDING_PAUSES), SetPaused(True), SetPaused(None)],
])
def test_a_flood_of_pause_commands_is_bounded_and_ends_in_the_same_state(flood: list[SetPaused]) -> None:
    queue = CommandQueue()
    for command in flood:
        queue.put(command, "osc")
    assert len(queue) <= MAX_PENDING_PAUSES
    taken = [queue.get(timeout=0).command for _ in range(len(queue))]
    for start in (False, True):
        assert net_pause(taken, start) == net_pause(flood, start)


def test_repeated_quits_wait_as_one() -> None:
    queue = CommandQueue()
    for origin in ("tray", "hotkey", "osc", "cli") * 100:
        queue.put(Quit(), origin)
    assert [item.command for item in queue.drain()] == [Quit()]


def test_get_waits_for_a_command_from_another_thread_and_times_out_empty() -> None:
    queue = CommandQueue()
    assert queue.get(timeout=0.05) is None
    sender = threading.Timer(0.05, lambda: queue.put(Quit(), "cli"))
    sender.start()
    item = queue.get(timeout=10)
    sender.join()
    assert item is not None and item.command == Quit() and item.origin == "cli"
