"""Reports: tables (pandas), Fig-2-style plots (matplotlib) and one self-contained HTML page.

    from lsbench.report import build_report, compare_runs
    result = build_report(["reports/latest"])          # -> reports/latest/report.html
"""

from lsbench.report.build import ReportResult, build_report
from lsbench.report.compare import Comparison, compare_runs

__all__ = ["Comparison", "ReportResult", "build_report", "compare_runs"]
