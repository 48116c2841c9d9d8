"""The verification report at the SQLite boundary: the one place it becomes JSON text and back.

Above this module the report is a :class:`~buildrunnerd.protocol.VerificationReport`, from
the workspace that makes it through the store's API (``set_tasks_details``,
``finish_attempt``, :class:`AttemptEnd`) to the records it hands back (``TaskRecord``,
``AttemptRecord``) and the wire (``TaskInfo``). The text is what every version wrote:
msgspec's JSON of the report's fields, in order, with a check's unset fields left out.

Every form a version ever stored decodes: the verdict alone (``{"passed": ...}``), reports
without the fields added since (``exit_code``, ``test_counts``, ``passed_tests``, ``tree``),
``null`` for a check's unset ``file``/``line``, and unknown keys (a later version's), which
are ignored. A row that does not decode (not JSON, or not a report) is not an error of the
reader: it becomes :meth:`VerificationReport.unreadable`.
"""

from __future__ import annotations

import msgspec

from buildrunnerd.protocol import VerificationReport

__all__ = ["decode_report", "encode_report"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(VerificationReport)


class _Verdict(msgspec.Struct):
    """What an unreadable row may still say: its verdict, when it has one."""

    passed: bool | None = None


_verdict_decoder = msgspec.json.Decoder(_Verdict)


def encode_report(report: VerificationReport | None) -> str | None:
    """The column text of a report (None stays None, SQL NULL)."""
    return None if report is None else _encoder.encode(report).decode()


def decode_report(text: str | bytes | None) -> VerificationReport | None:
    """The report a ``verification`` column holds (NULL: None)."""
    if text is None:
        return None
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError as exc:  # ValidationError included: JSON, but not a report
        return VerificationReport.unreadable(str(exc), said_passed=_said_passed(text))


def _said_passed(text: str | bytes) -> bool | None:
    try:
        return _verdict_decoder.decode(text).passed
    except msgspec.DecodeError:
        return None
