"""One module per real system, each a thin wrapper of that system's official client.

Read functions return plain data or None; nothing here decides what should exist (that is
steps/), and nothing here knows about notebooks, params files or the local cloud.
"""
