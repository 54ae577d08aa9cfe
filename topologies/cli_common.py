"""What every ``feedback-stream`` command shares: the exit-code convention, option types, and
the dead-letter verdict on a replayed input."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine pulls river and scipy: commands load it when they run
    from stream.engine import FeedbackEngine

EXIT_CODES = """exit codes (every command):
  0    success (lines of the input may have been dead-lettered: a warning says how many)
  1    runtime failure: Kafka unreachable, the worker died, outputs incomplete in time
  2    usage or input error: a bad option or FEEDBACK_STREAM_* value, an input file that is
       missing, unreadable or holds no valid event at all, an output directory that cannot be
       written
  130  interrupted (Ctrl-C)"""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a usage error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def dead_letter_report(engine: FeedbackEngine, source: str) -> tuple[int, str | None]:
    """(exit code, message for stderr) for the dead letters of a replayed input: a warning
    when some lines were dead-lettered, an input error (2) when no line was a valid event."""
    st = engine.stats
    dead = sum(st.dead_letters.values())
    if not dead:
        return 0, None
    ok = sum(v for (_, outcome), v in st.events.items() if outcome == "ok")
    reasons = ", ".join(f"{reason} {n}" for reason, n in st.dead_letters.most_common(3))
    if ok == 0:
        return 2, (f"error: no valid event in {source}: all {dead} lines dead-lettered "
                   f"({reasons}); is it a JSONL interaction log?")
    return 0, f"warning: {dead} lines of {source} dead-lettered ({reasons})"
