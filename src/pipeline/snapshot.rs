//! Snapshot (in progress).
