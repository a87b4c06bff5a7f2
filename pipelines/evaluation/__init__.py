"""The evaluate stage's pieces: the benchmark suites, and the report and tables it writes."""
