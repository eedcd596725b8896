"""hepfm's built-in plugins, registered through the ``hepfm`` entry-point group like any other."""
