//! End-to-end tests for Genesis Mesh live in `tests/`; this library holds their shared helpers.
