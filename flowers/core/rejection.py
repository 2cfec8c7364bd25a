"""The one type for an input that is reported, counted and skipped rather than failing a run.

`reason` is a short, stable code (it names Beam counters and the rows of PREFIX.rejected.csv):
malformed_row, unknown_label, duplicate (CSV rows); missing_file, not_a_file, empty_file,
not_an_image, unsupported_format, corrupt_image, too_large (images).
"""


class Rejection(ValueError):
    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason

    @property
    def message(self):
        return str(self)
