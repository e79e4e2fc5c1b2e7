"""Operator tools beside the daemon: the admin client, ``tail`` and ``stats``, the demo and its embedded broker."""
