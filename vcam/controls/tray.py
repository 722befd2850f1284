"""The tray icon: a menu of the preset's prompts plus pause, similarity filter, preview and quit.

Qt's QSystemTrayIcon is used because it is the one tray API with real menus on every desktop (Windows, macOS,
the freedesktop tray on X11, StatusNotifier on KDE/GNOME with the extension); the icon is drawn with QPainter so
nothing but the code has to ship. Like every control, the tray only puts commands on the queue; what it shows
(checked prompt, paused, filter) comes from polling the service's state, so the menu tells the truth even when
the change came from a hotkey or OBS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from PySide6.QtCore import QRectF, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from vcam.commands import Command, CommandQueue, Quit, SetPaused, SetSimilarityFilter, SwitchPrompt
from vcam.qt_host import QtHost

STATE_POLL_MS = 250
ICON_SIZE = 64


@dataclass(frozen=True)
class TrayState:
    """What the menu shows; `state()` must be cheap and safe to call from the GUI thread."""

    current_prompt: str | None
    paused: bool
    filter_enabled: bool


class TrayControl:
    """Build on the GUI thread (after the `QtHost`); `update_state` and `close` are safe from any thread."""

    def __init__(
        self,
        host: QtHost,
        prompt_names: Sequence[str],
        queue: CommandQueue,
        state: Callable[[], TrayState],
        on_open_preview: Callable[[], None] | None = None,
        on_status: Callable[[str], None] = print,
        title: str = "vcam",
    ) -> None:
        self._host = host
        self._queue = queue
        self._state = state
        self._title = title
        self.menu = QMenu(title)
        self._prompt_actions = self._add_prompt_actions(prompt_names)
        self.menu.addSeparator()
        self.pause_action = self._add_action("Pause (pass camera through)", lambda on: SetPaused(paused=on), True)
        self.filter_action = self._add_action("Similarity filter", lambda on: SetSimilarityFilter(enabled=on), True)
        self.preview_action: QAction | None = None
        if on_open_preview is not None:
            self.preview_action = self.menu.addAction("Open preview")
            self.preview_action.triggered.connect(lambda: on_open_preview())
        self.menu.addSeparator()
        self.quit_action = self._add_action("Quit", lambda _: Quit(), False)

        self.icon = QSystemTrayIcon()
        self.icon.setContextMenu(self.menu)
        self.available = QSystemTrayIcon.isSystemTrayAvailable()
        self._shown_state: TrayState | None = None
        self.update_state()
        # Shown even without a tray: Qt embeds the icon as soon as a tray host (panel) starts later.
        self.icon.show()
        if not self.available:
            on_status("tray unavailable: no system tray is running on this desktop (the icon appears if one "
                      "starts); meanwhile use the hotkeys, OBS WebSocket or OSC")
        self._timer = QTimer()
        self._timer.setInterval(STATE_POLL_MS)
        self._timer.timeout.connect(self.update_state)
        self._timer.start()

    def _add_prompt_actions(self, prompt_names: Sequence[str]) -> dict[str, QAction]:
        group = QActionGroup(self.menu)
        group.setExclusive(True)
        actions: dict[str, QAction] = {}
        for name in prompt_names:
            action = self.menu.addAction(name)
            action.setCheckable(True)
            group.addAction(action)
            action.triggered.connect(lambda _=False, name=name: self._send(SwitchPrompt(name=name)))
            actions[name] = action
        self._prompt_group = group
        return actions

    def _add_action(self, text: str, command_for: Callable[[bool], Command], checkable: bool) -> QAction:
        action = self.menu.addAction(text)
        action.setCheckable(checkable)
        # A checkable item sends the state it now shows (not a toggle), so a stale menu cannot invert intent.
        action.triggered.connect(lambda checked=False: self._send(command_for(bool(checked))))
        return action

    def _send(self, command: Command) -> None:
        self._queue.put(command, "tray")

    def prompt_action(self, name: str) -> QAction:
        return self._prompt_actions[name]

    @property
    def prompt_names(self) -> list[str]:
        return list(self._prompt_actions)

    def update_state(self, state: TrayState | None = None) -> None:
        """Show `state` (or the polled one): checked prompt, pause, filter, tooltip and icon colour."""
        if not self._host.is_gui_thread():
            self._host.call_soon(lambda: self.update_state(state))
            return
        state = state if state is not None else self._state()
        if state == self._shown_state:
            return
        self._shown_state = state
        for name, action in self._prompt_actions.items():
            action.setChecked(name == state.current_prompt)
        if state.current_prompt not in self._prompt_actions and self._prompt_group.checkedAction() is not None:
            self._prompt_group.setExclusionPolicy(QActionGroup.ExclusionPolicy.ExclusiveOptional)
            self._prompt_group.checkedAction().setChecked(False)
            self._prompt_group.setExclusionPolicy(QActionGroup.ExclusionPolicy.Exclusive)
        self.pause_action.setChecked(state.paused)
        self.filter_action.setChecked(state.filter_enabled)
        label = "paused" if state.paused else (state.current_prompt or "free text prompt")
        self.icon.setToolTip(f"{self._title}: {label}")
        self.icon.setIcon(draw_tray_icon(paused=state.paused))

    def close(self) -> None:
        """Stop polling and remove the icon."""
        if not self._host.is_gui_thread():
            self._host.call_soon(self.close)
            return
        self._timer.stop()
        self.icon.hide()


def draw_tray_icon(paused: bool, size: int = ICON_SIZE) -> QIcon:
    """A camera body with a lens: teal while restyling, grey while paused (drawn, so no image files ship)."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    body = QColor("#7a7a7a") if paused else QColor("#14a39a")
    unit = size / 16.0
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(body)
    painter.drawRoundedRect(QRectF(1 * unit, 4 * unit, 14 * unit, 10 * unit), 2 * unit, 2 * unit)
    painter.drawRoundedRect(QRectF(5 * unit, 2 * unit, 6 * unit, 3 * unit), unit, unit)
    painter.setBrush(QColor("white"))
    painter.drawEllipse(QRectF(4 * unit, 5.5 * unit, 8 * unit, 8 * unit))
    painter.setBrush(body.darker(170))
    painter.drawEllipse(QRectF(6 * unit, 7.5 * unit, 4 * unit, 4 * unit))
    painter.end()
    return QIcon(pixmap)
