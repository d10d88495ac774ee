"""exptorch's built-in plugins, registered through the ``exptorch`` entry points like any other."""
