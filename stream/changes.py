"""Which state keys changed since the last look: what a changelog-backed table must rewrite.

Only a consumer that writes state somewhere (the Kafka processors) needs this, so tracking is
off unless asked for; otherwise the sets would grow forever in an in-process replay.

>>> changes = ChangeSet(enabled=True)
>>> changes.touch("a"); changes.touch("b"); changes.drop("b")
>>> changes.take()
({'a'}, {'b'})
>>> ChangeSet().touch("a") is None and ChangeSet().take()
(set(), set())
"""

from __future__ import annotations


class ChangeSet:
    __slots__ = ("enabled", "changed", "removed")

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self.changed: set[str] = set()
        self.removed: set[str] = set()

    def touch(self, key: str) -> None:
        """``key`` now has (new) state."""
        if self.enabled:
            self.changed.add(key)
            self.removed.discard(key)

    def drop(self, key: str) -> None:
        """``key``'s state is gone (expired or evicted)."""
        if self.enabled:
            self.removed.add(key)
            self.changed.discard(key)

    def take(self) -> tuple[set[str], set[str]]:
        """(changed keys, removed keys) since the last call; starts afresh."""
        changed, removed = self.changed, self.removed
        self.changed, self.removed = set(), set()
        return changed, removed
