"""Shared assertions for command-line tests."""


def assert_user_error(result, *fragments: str) -> None:
    """Exit code 2, one 'error:' message on stderr containing every fragment, no traceback."""
    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    assert result.error.count("error:") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.error, f"{fragment!r} not in {result.error!r}"
