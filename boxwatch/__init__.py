"""What every boxwatch process shares: serving HTTP (``boxwatch.web``)."""

__version__ = "0.1.0"
