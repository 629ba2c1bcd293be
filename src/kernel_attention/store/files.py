"""The names of the files a run folder holds (and the role keys of diagnostics.json), shared by the layers that
write them (training, evaluation, diagnostics, the throughput script) and the report that reads them. No imports:
the report loads it without torch."""

METRICS_FILE = "metrics.json"  # the run's record (docs/contracts.md §3)
DIAGNOSTICS_FILE = "diagnostics.json"  # scripts/diagnose.py (docs/contracts.md §6)
THROUGHPUT_FILE = "throughput.json"  # scripts/measure_throughput.py
# diagnostics.json's attention roles, in report order: encoder self, decoder self, decoder → encoder cross.
DIAGNOSTICS_ROLES = ("enc_self", "dec_self", "cross")
