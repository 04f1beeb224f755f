"""modelserve's tests (a package, so `from tests.fixtures.models import ...` works from any test folder)."""
