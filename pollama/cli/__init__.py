"""The ``pollama`` command line (``main.py``), its output formatting and its server bootstrap."""
