"""Low watermarks: the control record, its transport, and what a task may believe."""

MIN_WATERMARK = -(2**63)
MAX_WATERMARK = 2**63 - 1
