"""Data: the embedded demo, reading user files, the column mapping, validation and the summary table.

Keys follow scanpy/scvelo's AnnData contract; data/README.md lists them.
"""
