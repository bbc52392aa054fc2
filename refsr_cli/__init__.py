"""The ``refsr`` command line: thin click commands over the :mod:`refsr` library."""
