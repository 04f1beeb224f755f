"""Common code for every modelserve process: settings, errors, auth, DB, Redis, metrics, logging."""
