"""`CommandQueue`: bounded whatever a control floods it with, and quit / pause / resume never wait behind a backlog."""
from __future__ import annotations

import threading

from vcam.commands import (
    MAX_PENDING_COMMANDS, MAX_PENDING_PROMPT_TEXTS, CommandQueue, Quit, SetPaused, SetPromptText, SwitchPrompt,
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


def test_get_waits_for_a_command_from_another_thread_and_times_out_empty() -> None:
    queue = CommandQueue()
    assert queue.get(timeout=0.05) is None
    sender = threading.Timer(0.05, lambda: queue.put(Quit(), "cli"))
    sender.start()
    item = queue.get(timeout=10)
    sender.join()
    assert item is not None and item.command == Quit() and item.origin == "cli"
