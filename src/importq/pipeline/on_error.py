"""What a batch does about failed rows (``?onError=``, ``importq import --on-error``).

- ``continue``: every valid row is written, whatever fails;
- ``abort-above=<n>%``: as soon as more than n % of the batch's rows failed, the batch
  stops and ends ``failed`` with nothing written;
- ``atomic``: nothing is written unless every row is valid.

A batch that is not ``continue`` is *checked*: its chunks run as a dry run does, writing
nothing, and only once every one passed are they written, all in one transaction (see
:mod:`importq.pipeline.aggregation`). This module is pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from importq.errors import Refusal

# The failure of a valid row of a batch that stopped for its failures.
ABORTED = "not imported: the import was aborted"
#: onError's forms, as the OpenAPI document spells them too (without class shorthands such
#: as \d, which Python and JSON Schema read differently); group 2 is abort-above's share.
ON_ERROR_PATTERN = (
    r"^(continue|atomic|abort-above=(100(?:[.]0{1,2})?|[0-9]{1,2}(?:[.][0-9]{1,2})?)%)$"
)
WHAT_IT_MAY_BE = "continue, atomic, or abort-above=<n>% with n from 0 to 100"


@dataclass(frozen=True)
class OnError:
    #: continue, abort or atomic.
    kind: str = "continue"
    #: The share of the batch's rows, in percent, that may fail (abort only).
    percent: Decimal | None = None

    @classmethod
    def parse(cls, text: str) -> OnError:
        """The policy ``text`` names; else a 400 ``bad_on_error``."""
        match = re.fullmatch(ON_ERROR_PATTERN, text)
        if match is None:
            raise Refusal(400, "bad_on_error", f"onError must be {WHAT_IT_MAY_BE}.")
        if match.group(2) is None:
            return cls(text)
        return cls("abort", Decimal(match.group(2)))

    @property
    def text(self) -> str:
        """As ``onError`` spells it."""
        if self.percent is not None:
            return f"abort-above={self.percent.normalize():f}%"
        return self.kind

    @property
    def checked(self) -> bool:
        """Whether the batch checks every row before it writes any."""
        return self.kind != "continue"

    def passes(self, failures: int, total_rows: int) -> bool:
        """Whether a batch with this many failed rows may be written."""
        if self.kind == "atomic":
            return failures == 0
        if self.percent is not None:
            return failures * 100 <= self.percent * total_rows
        return True
