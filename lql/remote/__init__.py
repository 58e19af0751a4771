"""The ``USE REMOTE`` client: a session's link to a vindex served by ``lql serve``.

:mod:`lql.remote.client` (``RemoteVindex``, ``connect``, ``RemoteError``); the server
side is :mod:`lql.server`. See docs/SERVER.md.
"""
