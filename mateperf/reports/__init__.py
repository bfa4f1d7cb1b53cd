"""One module per phase, declaring its `REPORT` (mateperf.reports.declaration): formatting only.

Shared formatting lives in `format`, the summary table's pieces in `overview`, a sweep's
section in `sweep`; the final document is assembled by mateperf.report.
"""

import matplotlib

# Reports write PNG files: no window, and the same bytes on every host. Set here, before any
# report module imports pyplot.
matplotlib.use("Agg")
