"""Compiled programs: XLA's persistent compilation cache (``cache``) and whole compiled
programs kept on disk between processes (``programs``)."""
