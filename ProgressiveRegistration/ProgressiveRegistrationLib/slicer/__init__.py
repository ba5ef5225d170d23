"""Slicer's side, without Qt: volume, markups, transform, table and sequence nodes to and from
images and points (``mrml``, ``mrml4d``; they take the scene and run on slicer-core), the
module's background process and the helpers the panel needs before the library is
importable (``jobs``: phase names, kept result files) and its dependency check
(``requirements``); these two import nothing heavy: they run before torch may be installed.

Imports: every package but ``cli`` and ``training``.
"""
