"""What a user reads of a study: the status table (status.py), the Pareto page (pareto.py) and the report
(report.py), the pages built with pages.py's helpers."""
