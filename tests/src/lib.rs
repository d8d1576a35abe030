//! Helpers for Slipway's integration tests.
