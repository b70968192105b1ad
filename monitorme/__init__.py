"""MonitorMe: open patient-vitals monitoring engine."""

__version__ = "0.1.0"
