"""The launcher: the `streamrec` command, `up` (embedded broker + Redis, supervised services, demo).

It sits above the services and may import them; nothing in `streamrec/` or the services imports it.
"""
