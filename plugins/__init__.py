"""The plugins shipped with mailproxy, one module each.

They register through the `mailproxy` entry-point group, exactly like a third-party
plugin package, and use only the public API in `mailproxy`.
"""
