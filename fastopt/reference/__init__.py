"""Pure-numpy reference implementations (the tests' oracle; backend="numpy")."""
