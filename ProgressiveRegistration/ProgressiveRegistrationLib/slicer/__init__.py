"""Slicer's side, without Qt: volume, markups, transform, table and sequence nodes to and from
images and points (``mrml``, ``mrml4d``; they take the scene and run on slicer-core), the
module's background process (``jobs``) and its dependency check (``requirements``, which
imports nothing heavy: it runs before torch may be installed).

Imports: every package but ``cli`` and ``training``.
"""
