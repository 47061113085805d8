"""Performance measurements run by hand (not part of the test suite); see each module's docstring."""
