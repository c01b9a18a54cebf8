"""Reports built from a run folder's saved predictions: scores, confusion matrices, plots, report.md."""

from reports.render import build_report, summary_table

__all__ = ["build_report", "summary_table"]
