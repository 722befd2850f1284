"""Where secrets come from: the environment, else the OS keyring; never a preset file.

Presets are shared and committed to dotfile repositories, so a password in one leaks; the environment (for
services and CI) and the OS keyring (for desktops) are the two places a user can keep it private.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Literal

KEYRING_SERVICE = "vcam"

SecretOrigin = Literal["environment", "keyring", "none"]


@dataclass(frozen=True)
class Secret:
    """A looked-up secret and where it came from (the origin goes in messages; the value never does)."""

    value: str = field(repr=False)  # a Secret that ends up in a log line must not carry the password there
    origin: SecretOrigin = "none"


def read_keyring(user: str) -> str | None:
    """`keyring.get_password("vcam", user)`, or None when no backend works (headless Linux has none).

    Any backend error means "not stored here": a missing keyring must never stop the program.
    """
    try:
        import keyring

        return keyring.get_password(KEYRING_SERVICE, user)
    except Exception as error:  # noqa: BLE001 - keyring's backends raise their own errors (DBus, locked, ...)
        logging.getLogger("vcam").debug("keyring lookup of %s failed: %s: %s", user, type(error).__name__, error)
        return None


def lookup_secret(env_var: str, keyring_user: str, use_keyring: bool = True) -> Secret:
    """The secret from `env_var` if set and non-empty, else from the keyring, else an empty secret."""
    from_env = os.environ.get(env_var, "")
    if from_env:
        return Secret(from_env, "environment")
    if use_keyring:
        stored = read_keyring(keyring_user)
        if stored:
            return Secret(stored, "keyring")
    return Secret("", "none")
